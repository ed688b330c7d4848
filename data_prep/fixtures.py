"""Small real image files in every mode the sharders must handle, and tiny corpora in the public
formats: used by the tests (tests/test_data_prep_*.py) and the benchmark (bench/data_prep.py).

Every image shows a grey/colour gradient background with a solid red rectangle at a known box, so
a test can check, after EXIF rotation and resize, that the stored box still covers the red
pixels."""
from __future__ import annotations

import io
import json
import os

import numpy as np
from PIL import Image

RED = (230, 20, 20)

# (width, height) of the raw pixel array and the red box [x, y, w, h] in it
DEFAULT_SIZE = (96, 64)
DEFAULT_BOX = (20, 10, 30, 24)

IMAGE_KINDS = ("jpeg", "png", "cmyk_jpeg", "gray_jpeg", "gray_png", "png16", "palette_png",
               "palette_alpha_png", "rgba_png", "la_png", "exif_rotated_jpeg", "truncated_jpeg",
               "zero_bytes", "garbage")
GOOD_KINDS = IMAGE_KINDS[:11]
BAD_KINDS = IMAGE_KINDS[11:]


def pattern_array(size=DEFAULT_SIZE, box=DEFAULT_BOX, seed: int = 0) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = (xx * 97 // max(1, w - 1) + seed * 13) % 100 + 40
    arr[..., 1] = (yy * 150 // max(1, h - 1) + seed * 7) % 160 + 60
    arr[..., 2] = ((xx + yy) * 90 // max(1, w + h) + seed * 29) % 100 + 100
    x, y, bw, bh = box
    arr[y:y + bh, x:x + bw] = RED
    return arr


def image_bytes(kind: str, size=DEFAULT_SIZE, box=DEFAULT_BOX, seed: int = 0) -> bytes:
    """Bytes of one image file of ``kind`` (see IMAGE_KINDS)."""
    arr = pattern_array(size, box, seed)
    rgb = Image.fromarray(arr, "RGB")
    buf = io.BytesIO()
    if kind == "jpeg":
        rgb.save(buf, "JPEG", quality=95)
    elif kind == "png":
        rgb.save(buf, "PNG")
    elif kind == "cmyk_jpeg":
        rgb.convert("CMYK").save(buf, "JPEG", quality=95)
    elif kind == "gray_jpeg":
        rgb.convert("L").save(buf, "JPEG", quality=95)
    elif kind == "gray_png":
        rgb.convert("L").save(buf, "PNG")
    elif kind == "png16":
        grey = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
        Image.fromarray(grey).save(buf, "PNG")        # opens as mode I;16
    elif kind == "palette_png":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "PNG")
    elif kind == "palette_alpha_png":
        pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        pal.info["transparency"] = 0
        pal.save(buf, "PNG", transparency=0)
    elif kind == "rgba_png":
        rgba = rgb.convert("RGBA")
        alpha = np.full(arr.shape[:2], 255, np.uint8)
        alpha[:, : size[0] // 8] = 128                  # half transparent strip on the left
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(buf, "PNG")
    elif kind == "la_png":
        rgb.convert("LA").save(buf, "PNG")
    elif kind == "exif_rotated_jpeg":
        # pixel array stored as-is, EXIF orientation 6 says "rotate 90 CW to display"
        exif = Image.Exif()
        exif[0x0112] = 6
        rgb.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    elif kind == "truncated_jpeg":
        rgb.save(buf, "JPEG", quality=95)
        return buf.getvalue()[: len(buf.getvalue()) // 2]
    elif kind == "zero_bytes":
        return b""
    elif kind == "garbage":
        return b"this is not an image\n" * 10
    else:
        raise ValueError(f"unknown image kind {kind!r}")
    return buf.getvalue()


def write_image(path: str, kind: str = "jpeg", size=DEFAULT_SIZE, box=DEFAULT_BOX, seed: int = 0):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(image_bytes(kind, size, box, seed))
    return path


def coco_captions(root: str, n_images: int, captions_per_image: int = 2, kinds=("jpeg",),
                  size=DEFAULT_SIZE, image_dir: str = "images") -> str:
    """A COCO captions JSON + images under ``root``; -> annotation path."""
    images, anns = [], []
    for i in range(n_images):
        kind = kinds[i % len(kinds)]
        ext = "png" if "png" in kind else "jpg"
        name = f"{i:06d}.{ext}"
        write_image(os.path.join(root, image_dir, name), kind, size, seed=i)
        images.append({"id": i + 1, "file_name": name, "width": size[0], "height": size[1]})
        for c in range(captions_per_image):
            anns.append({"id": len(anns) + 1, "image_id": i + 1,
                         "caption": f"a red box on picture {i}, caption {c}."})
    path = os.path.join(root, "captions.json")
    with open(path, "w") as f:
        json.dump({"info": {}, "licenses": [], "images": images, "annotations": anns}, f)
    return path
