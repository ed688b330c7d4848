"""Errors raised by the downstream-format readers."""
from __future__ import annotations


class DataFormatError(ValueError):
    """A downstream data file does not hold what its format requires. The message names the
    file, the record (line number for JSON lines and TSV, index for JSON arrays, plus the
    ref_id / question_id / identifier when the record has one) and the field."""


class MissingImagesError(DataFormatError):
    """Records point at image files that do not exist. `missing` lists
    `(origin, field, relative path, resolved path)` for every absent file."""

    def __init__(self, message: str, missing: list[tuple[str, str, str, str]]):
        super().__init__(message)
        self.missing = missing
