"""Image bytes in, shard-ready JPEG bytes out.

Every image is decoded fully (a truncated file fails here, not in training). EXIF orientation is
applied; CMYK, palette, grayscale, 16-bit and alpha images become RGB (alpha composited on white);
``resize`` shrinks the shorter side to N (never enlarges) and re-encodes with ``quality``.
A valid baseline/progressive RGB JPEG with normal orientation that needs no resize keeps its
original bytes (pass-through): no generation loss and no encode cost.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ORIENTATION_TAG = 0x0112


class ImageError(Exception):
    """Bad image; ``reason`` is the token counted in stats.json."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass
class PreparedImage:
    data: bytes              # JPEG bytes to store (always the displayed, upright picture)
    width: int               # size of the stored image
    height: int
    stored_width: int        # size of the pixel array in the input file (before EXIF orientation)
    stored_height: int
    orientation: int         # EXIF orientation that was applied (1 = none)
    passthrough: bool

    @property
    def displayed_size(self) -> tuple[int, int]:
        """Full-resolution size of the picture as a viewer shows it (EXIF orientation applied)."""
        if self.orientation in (5, 6, 7, 8):
            return self.stored_height, self.stored_width
        return self.stored_width, self.stored_height

    @property
    def stored_size(self) -> tuple[int, int]:
        return self.stored_width, self.stored_height

    def displayed_box(self, box, frame: str = "stored") -> list[float]:
        """[x, y, w, h] in the input file's ``frame`` -> the full-resolution displayed picture.

        ``frame="stored"``: the box refers to the pixel array as stored in the file (what a tool
        that ignores EXIF shows); it is rotated/flipped with the EXIF orientation.
        ``frame="displayed"``: the box already refers to the upright picture."""
        if frame not in ("stored", "displayed"):
            raise ValueError(f"frame must be 'stored' or 'displayed', got {frame!r}")
        x, y, w, h = (float(v) for v in box)
        if frame == "stored" and self.orientation != 1:
            x, y, w, h = _orient_box(x, y, w, h, self.stored_width, self.stored_height,
                                     self.orientation)
        return [x, y, w, h]

    def scale_box(self, box) -> list[float]:
        """[x, y, w, h] in the full-resolution displayed picture -> the stored image's pixels."""
        dw, dh = self.displayed_size
        sx, sy = self.width / dw, self.height / dh
        x, y, w, h = box
        return [x * sx, y * sy, w * sx, h * sy]

    def map_box(self, box, frame: str = "stored") -> list[float]:
        """[x, y, w, h] in the input file's ``frame`` -> the stored image's pixels (float)."""
        return self.scale_box(self.displayed_box(box, frame))


def _orient_box(x, y, w, h, W, H, orientation):
    """Apply the EXIF orientation transform (as ImageOps.exif_transpose does to pixels) to a box.
    Works on the box corners: x0,x1 in [0,W], y0,y1 in [0,H]."""
    x0, x1, y0, y1 = x, x + w, y, y + h
    if orientation == 2:      # mirror horizontal
        x0, x1 = W - x1, W - x0
    elif orientation == 3:    # rotate 180
        x0, x1, y0, y1 = W - x1, W - x0, H - y1, H - y0
    elif orientation == 4:    # mirror vertical
        y0, y1 = H - y1, H - y0
    elif orientation == 5:    # transpose (x,y) -> (y,x)
        x0, x1, y0, y1 = y0, y1, x0, x1
    elif orientation == 6:    # rotate 90 CW: (x,y) -> (H-y, x)
        x0, x1, y0, y1 = H - y1, H - y0, x0, x1
    elif orientation == 7:    # transverse: (x,y) -> (H-y, W-x)
        x0, x1, y0, y1 = H - y1, H - y0, W - x1, W - x0
    elif orientation == 8:    # rotate 90 CCW: (x,y) -> (y, W-x)
        x0, x1, y0, y1 = y0, y1, W - x1, W - x0
    return x0, y0, x1 - x0, y1 - y0


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
        value = int(value)
    except Exception:     # corrupt EXIF block: treat as no orientation, the pixels still decode
        return 1
    return value if 1 <= value <= 8 else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. 16-bit/32-bit integer data is scaled, not clipped (a plain
    convert would turn every value above 255 white); alpha is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if mode == "F":
            arr = np.clip(arr, 0, 255)
        elif arr.max(initial=0) > 255:      # 16-bit range (PNG 16-bit grey opens as I;16 or I)
            arr = np.clip(arr.astype(np.float64) / 257.0, 0, 255)
        return Image.fromarray(np.rint(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _open(data: bytes) -> Image.Image:
    if not data:
        raise ImageError("empty_file", "image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # big but legitimate pictures (PIL warns above 89 Mpx) are kept; PIL's hard limit
            # (2x that) is a decompression bomb and is rejected
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        return img
    except Image.DecompressionBombError as e:
        raise ImageError("image_too_large", str(e)) from None
    except UnidentifiedImageError:
        # PIL's own message names the BytesIO object by memory address: it would make
        # rejected.jsonl differ between runs (and between --workers 1 and N)
        raise ImageError("undecodable_image",
                         f"not an image file PIL can read (starts with {data[:8]!r})") from None
    except Exception as e:
        raise ImageError("undecodable_image", f"{type(e).__name__}: {e}") from None


def _load(img: Image.Image):
    try:
        img.load()
    except Exception as e:   # truncated data, corrupt entropy-coded segment, bad PNG CRC...
        raise ImageError("undecodable_image", f"{type(e).__name__}: {e}") from None


def target_size(width: int, height: int, shorter: int | None):
    """Shorter side -> ``shorter`` keeping the aspect ratio; None when no shrink is needed."""
    if not shorter or min(width, height) <= shorter:
        return None
    if width <= height:
        return shorter, max(1, round(height * shorter / width))
    return max(1, round(width * shorter / height)), shorter


# Downscale filters. "area" (PIL BOX: each output pixel averages the input pixels it covers, what
# OpenCV calls INTER_AREA and img2dataset uses for shrinking) is alias-free and ~3x cheaper than
# bicubic here; bicubic/lanczos are there for those who want them.
RESAMPLE = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def prepare_image(data: bytes, resize: int | None = None, quality: int = 90,
                  resample: str = "area") -> PreparedImage:
    img = _open(data)
    raw_w, raw_h = img.size
    orientation = _orientation(img)
    upright = (raw_h, raw_w) if orientation in (5, 6, 7, 8) else (raw_w, raw_h)
    new_size = target_size(*upright, resize)
    is_plain_jpeg = img.format == "JPEG" and img.mode == "RGB" and orientation == 1
    if is_plain_jpeg and new_size is None:
        # Validate by decoding at 1/8 scale: libjpeg still reads every entropy-coded byte, so
        # truncation is caught, at a fraction of the cost of a full decode.
        img.draft("RGB", (max(1, raw_w // 8), max(1, raw_h // 8)))
        _load(img)
        return PreparedImage(data, raw_w, raw_h, raw_w, raw_h, 1, True)
    if new_size is not None and img.format == "JPEG":
        # DCT-domain downscale while decoding (never below the target size): much faster.
        want = new_size if orientation not in (5, 6, 7, 8) else new_size[::-1]
        img.draft(img.mode if img.mode in ("RGB", "L") else None, want)
    _load(img)
    try:
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        if new_size is not None and img.size != new_size:
            img = img.resize(new_size, RESAMPLE[resample])
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError("undecodable_image", f"{type(e).__name__}: {e}") from None
    return PreparedImage(out.getvalue(), img.width, img.height, raw_w, raw_h, orientation, False)
