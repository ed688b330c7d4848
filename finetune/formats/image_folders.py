"""ImageNet-style class folders: `ROOT/<class>/**/<image>` -> (path, class index), with the
classes and the file order of torchvision's `ImageFolder` (classes = sorted sub-folder names,
files walked in sorted order, following links, kept by extension, case-insensitively)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import DataFormatError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class ImageFolderSet:
    root: str
    classes: list[str]                          # index -> class name
    samples: list[tuple[str, int]]              # (image path, class index)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}


def _class_dirs(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise DataFormatError(f"{root}: image folder not found (expected <class>/<image> sub-folders)")
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


def _images_under(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in sorted(os.walk(folder, followlinks=True)):
        for name in sorted(filenames):
            if name.lower().endswith(IMG_EXTENSIONS):
                out.append(os.path.join(dirpath, name))
    return out


def read_image_folder(root, classes: list[str] | None = None) -> ImageFolderSet:
    """One split. `classes` (the training split's) fixes the class indices of a validation
    split; its folders must then be a subset of them."""
    root = os.fspath(root)
    found = _class_dirs(root)
    if not found:
        raise DataFormatError(f"{root}: no class sub-folders (expected {root}/<class>/<image>)")
    if classes is None:
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise DataFormatError(
                f"{os.path.join(root, unknown[0])}: class folder '{unknown[0]}' is not a training class "
                f"({len(unknown)} unknown: {', '.join(unknown[:10])}; training classes: {', '.join(classes[:20])})")
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in found:
        files = _images_under(os.path.join(root, c))
        if not files:
            raise DataFormatError(f"{os.path.join(root, c)}: class folder holds no image file "
                                  f"(extensions: {', '.join(IMG_EXTENSIONS)})")
        samples.extend((p, index[c]) for p in files)
    return ImageFolderSet(root, list(classes), samples)


def read_image_folders(train_root, val_root) -> tuple[ImageFolderSet, ImageFolderSet]:
    """The training split and a validation split indexed by the training classes."""
    train = read_image_folder(train_root)
    return train, read_image_folder(val_root, train.classes)
