"""CSV / TSV with an image column and a caption column (CC3M/CC12M/LAION style).

Column names are chosen with ``--image-column`` / ``--caption-column``; when omitted, common
names are looked up in the header (``image``, ``filepath``, ``url`` ... / ``caption``, ``text``,
``desc`` ...). ``--no-header`` takes columns by 0-based index (CC3M's TSV: caption 0, url 1).
A missing column or a short row is a malformed file (stops at once, naming line and column); a row
that does not decode in ``--encoding`` (default UTF-8) is rejected as ``bad_encoding``."""
from __future__ import annotations

import csv
import sys

from ..records import MalformedInputError, Record, Rejection
from .common import resolve_image

IMAGE_COLUMNS = ("image", "image_path", "filepath", "file_path", "file_name", "filename", "file",
                 "path", "img", "url", "image_url")
CAPTION_COLUMNS = ("caption", "text", "desc", "description", "title", "alt", "sentence")

csv.field_size_limit(min(sys.maxsize, 1 << 31 - 1))


def _has_surrogates(s: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in s)


def _pick(header: list[str], wanted: str | None, candidates, path: str, role: str) -> int:
    lowered = [h.strip().lower() for h in header]
    if wanted is not None:
        if wanted in header:
            return header.index(wanted)
        if wanted.lower() in lowered:
            return lowered.index(wanted.lower())
        raise MalformedInputError(f"{path}: line 1 (header): no {role} column '{wanted}'; "
                                  f"columns are {header}")
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    raise MalformedInputError(f"{path}: line 1 (header): no {role} column found among {header}; "
                              f"choose one with --{role}-column")


# a caption with more line breaks than this is a quote that opened and never closed
MAX_LINES_PER_ROW = 50


class _RecordingLines:
    """The file's lines as csv.reader consumes them, remembering those of the current row (the
    reader takes exactly the lines one row needs, no read-ahead)."""

    def __init__(self, f):
        self.f = f
        self.row_lines: list[str] = []

    def __iter__(self):
        return self

    def __next__(self):
        line = next(self.f)
        self.row_lines.append(line)
        return line


def _check_quotes(path: str, where: str, lines: list[str], row: list[str]):
    """csv.reader (non-strict, so a stray quote inside a caption, common in CC12M, is kept) reads
    an unclosed quote as one field running to the end of the file: every following row would
    vanish into one caption. A row that ran past its own line break (over several lines, or a
    field that swallowed the final newline) must therefore have balanced quotes."""
    crossed = len(lines) > 1 or any(v.endswith(("\n", "\r")) for v in row)
    if len(lines) > MAX_LINES_PER_ROW or (crossed and "".join(lines).count('"') % 2):
        raise MalformedInputError(
            f"{path}: {where}: a quoted field in this row is never closed (unbalanced '\"', the "
            f"row runs over {len(lines)} line(s)); fix the quoting")


def read_table(path: str, opts, delimiter: str):
    with open(path, encoding=opts.encoding, errors="surrogateescape", newline="") as f:
        lines = _RecordingLines(f)
        reader = csv.reader(lines, delimiter=delimiter)
        if opts.no_header:
            try:
                img_col = int(opts.image_column if opts.image_column is not None else 1)
                cap_col = int(opts.caption_column if opts.caption_column is not None else 0)
            except ValueError:
                raise MalformedInputError(f"{path}: with --no-header the columns are 0-based "
                                          f"indices, got {opts.image_column!r}/"
                                          f"{opts.caption_column!r}") from None
            header = None
        else:
            try:
                header = next(reader)
            except StopIteration:
                raise MalformedInputError(f"{path}: line 1: empty file, no header row") from None
            img_col = _pick(header, opts.image_column, IMAGE_COLUMNS, path, "image")
            cap_col = _pick(header, opts.caption_column, CAPTION_COLUMNS, path, "caption")
        need = max(img_col, cap_col)
        line_start = reader.line_num + 1
        lines.row_lines = []
        for row in reader:
            where = f"line {line_start}"
            line_start = reader.line_num + 1
            _check_quotes(path, where, lines.row_lines, row)
            lines.row_lines = []
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) <= need:
                missing = img_col if len(row) <= img_col else cap_col
                name = header[missing] if header else f"column {missing}"
                raise MalformedInputError(f"{path}: {where}: row has {len(row)} fields, missing "
                                          f"'{name}'")
            image, caption = row[img_col].strip(), row[cap_col]
            if _has_surrogates(image) or _has_surrogates(caption):
                yield Record(path, where, rejection=Rejection(
                    "bad_encoding", path, where, f"row is not valid {opts.encoding} (pass "
                    f"--encoding if the file uses another, e.g. --encoding latin-1)"))
                continue
            if not image:
                yield Record(path, where, rejection=Rejection(
                    "missing_image_field", path, where, "image column is empty"))
                continue
            yield Record(path, where, image_id=image, image_path=resolve_image(image, opts.images, path),
                         captions=[caption])
