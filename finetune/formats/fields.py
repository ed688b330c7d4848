"""Where a record lives and typed access to its fields, so every reader reports problems the
same way: `FILE: record N (key): field 'NAME': what is wrong`."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import DataFormatError


@dataclass(frozen=True)
class Loc:
    """A record's position: `unit` is "record" (0-based index into a JSON array) or "line"
    (1-based line of a JSON-lines or TSV file); `key` is the record's own id when it has one."""
    file: str
    unit: str
    index: int | None = None        # None: the file's top-level object
    key: str | None = None

    def with_key(self, name: str, value) -> "Loc":
        return Loc(self.file, self.unit, self.index, f"{name} {value}")

    def __str__(self) -> str:
        if self.index is None:
            return f"{self.file}: {self.unit}"
        key = f" ({self.key})" if self.key else ""
        return f"{self.file}: {self.unit} {self.index}{key}"

    def error(self, field: str, problem: str) -> DataFormatError:
        return DataFormatError(f"{self}: field '{field}': {problem}")


def type_name(value) -> str:
    """JSON-ish names, so messages read the same whatever produced the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {dict: "object", list: "list", str: "string", tuple: "list"}.get(type(value), type(value).__name__)


_MISSING = object()


def _get(row: dict, loc: Loc, field: str, optional: bool):
    value = row.get(field, _MISSING)
    if value is _MISSING or (value is None and optional):
        if optional:
            return _MISSING
        raise loc.error(field, "missing")
    return value


def get_str(row: dict, loc: Loc, field: str, *, optional: bool = False, allow_empty: bool = False):
    value = _get(row, loc, field, optional)
    if value is _MISSING:
        return None
    if not isinstance(value, str):
        raise loc.error(field, f"expected a string, got {type_name(value)}")
    if not allow_empty and not value.strip():
        raise loc.error(field, "expected a non-empty string, got an empty one")
    return value


def get_int(row: dict, loc: Loc, field: str, *, optional: bool = False):
    value = _get(row, loc, field, optional)
    if value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise loc.error(field, f"expected an integer, got {type_name(value)}")
    return value


def get_id(row: dict, loc: Loc, field: str, *, optional: bool = False):
    """An identifier that public files write either as an integer or as a string."""
    value = _get(row, loc, field, optional)
    if value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value == "":
        raise loc.error(field, f"expected an integer or a non-empty string, got {type_name(value)}")
    return value


def get_number(row: dict, loc: Loc, field: str, *, optional: bool = False):
    value = _get(row, loc, field, optional)
    if value is _MISSING:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise loc.error(field, f"expected a finite number, got {type_name(value)} {value!r}")
    return value


def get_list(row: dict, loc: Loc, field: str, *, optional: bool = False):
    value = _get(row, loc, field, optional)
    if value is _MISSING:
        return None
    if not isinstance(value, list):
        raise loc.error(field, f"expected a list, got {type_name(value)}")
    return value


def get_str_list(row: dict, loc: Loc, field: str, *, optional: bool = False,
                 min_len: int = 1) -> list[str] | None:
    value = _get(row, loc, field, optional)
    if value is _MISSING:
        return None
    if not isinstance(value, list):
        raise loc.error(field, f"expected a list of strings, got {type_name(value)}")
    for k, item in enumerate(value):
        if not isinstance(item, str):
            raise loc.error(f"{field}[{k}]", f"expected a string, got {type_name(item)}")
    if len(value) < min_len:
        raise loc.error(field, f"expected at least {min_len} string(s), got {len(value)}")
    return list(value)


def get_box(row: dict, loc: Loc, field: str, width=None, height=None) -> list[float]:
    """COCO box [x, y, w, h] in pixels: four finite numbers, positive size, and inside the
    image (1 px slack for rounding in the published annotations) when its size is known."""
    value = _get(row, loc, field, False)
    if (not isinstance(value, list) or len(value) != 4
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                   for v in value)):
        raise loc.error(field, f"expected [x, y, w, h] as 4 finite numbers, got {value!r}")
    x, y, w, h = (float(v) for v in value)
    if w <= 0 or h <= 0:
        raise loc.error(field, f"box {value!r} has no area (w and h must be > 0)")
    if x < -1 or y < -1:
        raise loc.error(field, f"box {value!r} starts outside the image")
    if (width is not None and x + w > width + 1) or (height is not None and y + h > height + 1):
        raise loc.error(field, f"box {value!r} extends past the {width}x{height} image")
    return [x, y, w, h]


def require_object(row, loc: Loc) -> dict:
    if not isinstance(row, dict):
        raise DataFormatError(f"{loc}: expected an object, got {type_name(row)}")
    return row
