"""NLVR2 statements in both public layouts (each a JSON-lines file, or a JSON array).

- X-VLM/ALBEF rows: `{images: [left, right], sentence, label}` with image paths relative to the
  image root (the synthetic world also writes `identifier`).
- The official rows of `nlvr2/data/{train,dev,test1}.json`: `{identifier, sentence, label,
  left_url, right_url, directory (train only), ...}`. Images are found by identifier:
  `<split>-<set>-<pair>-<sentence>` names the pair `<split>-<set>-<pair>`, whose pictures are
  `<pair>-img0.png` (left) and `<pair>-img1.png` (right). The released image folders put
  train images in numbered sub-folders (`train/<directory>/`) and dev/test1 images directly in
  their folder: pass `image_template` (`NLVR2_TRAIN_TEMPLATE` / `NLVR2_EVAL_TEMPLATE` or your
  own, with the fields {pair_id}, {k}, {directory}, {identifier}) and the split's folder as
  image root.

Labels: "True"/"False" (both layouts), JSON true/false, or 0/1. Anything else is an error.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .fields import Loc, get_list, get_str, type_name
from .files import as_paths, load_records
from .images import ImageRef, resolve

NLVR2_EVAL_TEMPLATE = "{pair_id}-img{k}.png"
NLVR2_TRAIN_TEMPLATE = "{directory}/{pair_id}-img{k}.png"


@dataclass(frozen=True)
class Nlvr2Example:
    left: ImageRef
    right: ImageRef
    sentence: str
    label: int                      # 1 = the statement is true of the image pair
    identifier: str | None
    origin: str = field(default="", compare=False, repr=False)

    def image_refs(self):
        yield self.origin, "left", self.left
        yield self.origin, "right", self.right


def parse_label(value, loc: Loc, name: str = "label") -> int:
    if value is True or value is False:
        return int(value)
    if isinstance(value, int) and value in (0, 1):
        return value
    if value in ("True", "False"):
        return int(value == "True")
    raise loc.error(name, f"unknown label {value!r} ({type_name(value)}); expected \"True\"/\"False\", true/false or 0/1")


def read_nlvr2(paths, image_root=None, *, image_template: str = NLVR2_EVAL_TEMPLATE) -> list[Nlvr2Example]:
    """Both layouts; each row is read by the layout it has (`images` -> X-VLM, otherwise the
    official identifier-based one, whose images follow `image_template`)."""
    out = []
    for path in as_paths(paths):
        for loc, row in load_records(path):
            identifier = get_str(row, loc, "identifier", optional=True)
            if identifier is not None:
                loc = loc.with_key("identifier", identifier)
            if "images" in row:
                left, right = _xvlm_images(row, loc, image_root)
            elif identifier is None:
                raise loc.error("images", "missing (and no 'identifier' to find the images by)")
            else:
                left, right = (_official_image(row, loc, identifier, k, image_template, image_root)
                               for k in (0, 1))
            sentence = get_str(row, loc, "sentence")
            if "label" not in row:
                raise loc.error("label", "missing")
            out.append(Nlvr2Example(left, right, sentence, parse_label(row["label"], loc),
                                    identifier, str(loc)))
    return out


def _xvlm_images(row, loc, image_root) -> tuple[ImageRef, ImageRef]:
    images = get_list(row, loc, "images")
    if len(images) != 2:
        raise loc.error("images", f"expected [left, right] (2 paths), got {len(images)}")
    for k, p in enumerate(images):
        if not isinstance(p, str) or not p:
            raise loc.error(f"images[{k}]", f"expected a non-empty string, got {type_name(p)}")
    return resolve(image_root, images[0]), resolve(image_root, images[1])


def _official_image(row, loc, identifier: str, k: int, template: str, image_root) -> ImageRef:
    parts = identifier.split("-")
    if len(parts) < 3:
        raise loc.error("identifier", f"{identifier!r} is not <split>-<set>-<pair>-<sentence>")
    values = {"pair_id": "-".join(parts[:-1]), "k": k, "identifier": identifier}
    if "{directory}" in template:
        if "directory" not in row:
            raise loc.error("directory", "missing (the image template places images by directory)")
        d = row["directory"]
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise loc.error("directory", f"expected an integer or string, got {type_name(d)}")
        values["directory"] = d
    return resolve(image_root, template.format(**values))
