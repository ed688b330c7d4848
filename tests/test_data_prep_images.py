"""Image normalisation of the sharders: every input mode becomes RGB JPEG, EXIF orientation is
applied (pixels and boxes), resize keeps boxes on the object, valid JPEGs pass through untouched,
bad files raise the right reason."""
import io

import numpy as np
import pytest
from PIL import Image

from xfm.data_prep import fixtures as fx
from xfm.data_prep.images import ImageError, prepare_image, target_size


def _decode(data):
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _red_mask(img):
    a = np.asarray(img.convert("RGB")).astype(int)
    return (a[..., 0] > 170) & (a[..., 1] < 90) & (a[..., 2] < 90)


@pytest.mark.parametrize("kind", fx.GOOD_KINDS)
def test_every_mode_becomes_rgb_jpeg(kind):
    raw = fx.image_bytes(kind)
    src = Image.open(io.BytesIO(raw))
    out = prepare_image(raw)
    img = _decode(out.data)
    assert img.format == "JPEG" and img.mode == "RGB"
    assert (img.width, img.height) == (out.width, out.height)
    if kind == "exif_rotated_jpeg":
        assert (out.width, out.height) == (fx.DEFAULT_SIZE[1], fx.DEFAULT_SIZE[0])
    else:
        assert (out.width, out.height) == fx.DEFAULT_SIZE
    # pass-through exactly for plain RGB JPEG, re-encode for everything else
    assert out.passthrough == (kind == "jpeg")
    if kind == "jpeg":
        assert out.data == raw
    if src.mode in ("L", "LA", "I;16", "I"):
        return
    # colour content survives the conversion: the red box is red (not inverted CMYK, not white
    # 16-bit clipping, not black alpha)
    mask = _red_mask(img)
    assert mask.sum() > 0.6 * fx.DEFAULT_BOX[2] * fx.DEFAULT_BOX[3]


def test_16bit_grey_is_scaled_not_clipped():
    out = prepare_image(fx.image_bytes("png16"))
    ref = np.asarray(Image.fromarray(fx.pattern_array()).convert("L")).astype(int)
    got = np.asarray(_decode(out.data).convert("L")).astype(int)
    assert np.abs(got - ref).mean() < 4          # a plain convert would give 255 everywhere


def test_alpha_composited_on_white():
    out = prepare_image(fx.image_bytes("rgba_png"))
    arr = np.asarray(_decode(out.data)).astype(int)
    ref = fx.pattern_array().astype(int)
    strip = arr[:, :4]                            # 50% alpha over white: brighter than the source
    assert (strip.mean() - ref[:, :4].mean()) > 30


def test_exif_orientation_applied_to_pixels_and_boxes():
    raw = fx.image_bytes("exif_rotated_jpeg")
    out = prepare_image(raw)
    assert out.orientation == 6
    box = out.map_box(fx.DEFAULT_BOX, "stored")
    x, y, w, h = (int(round(v)) for v in box)
    mask = _red_mask(_decode(out.data))
    inside = mask[y:y + h, x:x + w].mean()
    assert inside > 0.9 and mask.sum() <= (w + 2) * (h + 2)
    # the stored image no longer carries an orientation tag that a reader would apply again
    assert _decode(out.data).getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize("kind,resample", [("jpeg", "area"), ("png", "bicubic"),
                                           ("exif_rotated_jpeg", "area"), ("cmyk_jpeg", "lanczos")])
def test_resize_shorter_side_and_boxes_follow(kind, resample):
    size, box = (300, 200), (60, 40, 90, 70)
    out = prepare_image(fx.image_bytes(kind, size=size, box=box), resize=50, quality=90,
                        resample=resample)
    assert min(out.width, out.height) == 50 and not out.passthrough
    img = _decode(out.data)
    assert img.size == (out.width, out.height)
    x, y, w, h = out.map_box(box, "stored")
    mask = _red_mask(img)
    ys, xs = np.nonzero(mask)
    # the red pixels' bounding box matches the mapped box within a pixel of resampling blur
    assert abs(xs.min() - x) <= 1.5 and abs(ys.min() - y) <= 1.5
    assert abs(xs.max() + 1 - (x + w)) <= 1.5 and abs(ys.max() + 1 - (y + h)) <= 1.5


def test_resize_never_enlarges_and_small_jpeg_passes_through():
    raw = fx.image_bytes("jpeg")
    out = prepare_image(raw, resize=500)
    assert out.passthrough and out.data == raw
    assert target_size(640, 480, 240) == (320, 240)
    assert target_size(480, 640, 240) == (240, 320)
    assert target_size(100, 80, 240) is None


@pytest.mark.parametrize("kind,reason", [("truncated_jpeg", "undecodable_image"),
                                         ("zero_bytes", "empty_file"),
                                         ("garbage", "undecodable_image")])
def test_bad_images_raise_reason(kind, reason):
    with pytest.raises(ImageError) as e:
        prepare_image(fx.image_bytes(kind))
    assert e.value.reason == reason


def test_truncated_png_rejected():
    raw = fx.image_bytes("png", size=(200, 150))
    with pytest.raises(ImageError) as e:
        prepare_image(raw[: len(raw) // 2])
    assert e.value.reason == "undecodable_image"


def test_reencode_is_deterministic():
    raw = fx.image_bytes("cmyk_jpeg", size=(120, 90))
    assert prepare_image(raw, resize=40).data == prepare_image(raw, resize=40).data


def test_quality_setting_is_used_for_reencoding():
    """--quality reaches the encoder: lower quality -> coarser quantisation tables, fewer bytes,
    and larger pixel error."""
    raw = fx.image_bytes("png", size=(300, 200))
    low, high = (prepare_image(raw, resize=100, quality=q) for q in (30, 95))
    q_low, q_high = (_decode(o.data).quantization[0] for o in (low, high))
    assert sum(q_low) > 3 * sum(q_high)
    assert len(low.data) < len(high.data)
    ref = np.asarray(_decode(prepare_image(raw, resize=100, quality=100).data)).astype(int)
    err = [np.abs(np.asarray(_decode(o.data)).astype(int) - ref).mean() for o in (low, high)]
    assert err[0] > err[1]
