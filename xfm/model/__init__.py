"""X-FM model: ``XFM`` (three encoders + heads), ``count_parameters``, and the answer/caption
``TextDecoder`` (generation in ``xfm.model.generation``)."""
from .xfm import XFM, count_parameters, PAPER_EXCLUDED
from .decoder import DecoderConfig, TextDecoder

__all__ = ["XFM", "count_parameters", "PAPER_EXCLUDED", "DecoderConfig", "TextDecoder"]
