"""Image references kept as the file wrote them and as resolved against an image root, and the
one check for missing image files that a task runs before it starts."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import MissingImagesError


@dataclass(frozen=True)
class ImageRef:
    """`path`: where the file is (image root joined with the relative path, normalised);
    `rel`: the path as the annotation file wrote it. Two references are equal when they point
    at the same path, whatever layout named it. Usable wherever a path is (`os.fspath`, PIL)."""
    path: str
    rel: str = field(compare=False)

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path


def resolve(image_root, rel: str) -> ImageRef:
    root = os.fspath(image_root) if image_root is not None else ""
    return ImageRef(os.path.normpath(os.path.join(root, rel)), rel)


def _refs_of(record):
    refs = getattr(record, "image_refs", None)
    if refs is None:
        raise TypeError(f"{type(record).__name__} records hold no image references")
    return refs()


def check_images(records, image_root=None, *, show: int = 20) -> int:
    """Raise `MissingImagesError` listing every record whose image file does not exist (the
    first `show` in the message, all in `.missing`); return the number of distinct images
    checked. `records`: a list of records of any reader here, or one record/set that has
    `image_refs()`. With `image_root`, the relative paths are resolved against it instead of
    the root the reader was given."""
    items = [records] if hasattr(records, "image_refs") else records
    seen: dict[str, bool] = {}
    missing = []
    for record in items:
        for origin, field_name, ref in _refs_of(record):
            path = ref.path if image_root is None else os.path.normpath(
                os.path.join(os.fspath(image_root), ref.rel))
            if path not in seen:
                seen[path] = os.path.isfile(path)
            if not seen[path]:
                missing.append((origin, field_name, ref.rel, path))
    if missing:
        lines = [f"{origin}: field '{f}': image file not found: {rel} (looked at {path})"
                 for origin, f, rel, path in missing[:show]]
        more = f"\n  ... and {len(missing) - show} more" if len(missing) > show else ""
        n_files = len({m[3] for m in missing})
        raise MissingImagesError(
            f"{n_files} image file(s) missing, referenced by {len(missing)} record(s):\n  "
            + "\n  ".join(lines) + more, missing)
    return len(seen)
