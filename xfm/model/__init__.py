"""X-FM model: ``XFM`` (three encoders + heads) and ``count_parameters``."""
from .xfm import XFM, count_parameters, PAPER_EXCLUDED

__all__ = ["XFM", "count_parameters", "PAPER_EXCLUDED"]
