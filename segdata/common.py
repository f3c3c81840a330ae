"""What every data source shares: the ignore index, a dataset's classes (DatasetInfo), the error a user can fix, and
the one shape of a lister: it takes (root, SplitRequest) and returns a Listing. dataset.py re-exports the public
names; nothing here imports dataset.py, so the sources sit below it."""
import os
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from PIL import Image

from utils import UserError

IGNORE_INDEX = 255
# What PIL raises for a file it cannot read: a missing or truncated file, or one that is not an image.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DatasetError(UserError):
    """Bad or missing data: the message names the file or flag and says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple  # tuple[str, ...]
    palette: tuple  # one (r, g, b) per class
    ignore_index: int = IGNORE_INDEX


def voc_colormap(n):
    """The official VOC colour map: bits of the class id spread over r, g, b. Entry 255 is
    (224, 224, 192), the cream border colour of the VOC masks."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def parse_size(img_size):
    """[256] -> (256, 256); [180, 240] -> (180, 240) as (H, W)."""
    sizes = [img_size] if isinstance(img_size, (int, np.integer)) else list(img_size)
    ok = len(sizes) in (1, 2) and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in sizes)
    if not ok:
        raise DatasetError(f"--img_size takes one (square) or two (H W) positive integers, got {img_size!r}")
    return (int(sizes[0]), int(sizes[-1]))


@dataclass(frozen=True)
class SplitRequest:
    """What build_dataset asks a source for: one split of the data under a root."""
    split: str  # "train" or "val"
    name: str  # the list asked for: --train_split's value for train ("auto": the source's default), --val_split's
    info: DatasetInfo  # the dataset's classes (a folder's come from its classes.txt)
    download: object = None  # --download's value: falsy, True, or the name of a set
    ignore_index: int = IGNORE_INDEX  # --dataset folder: the mask value of unlabelled pixels
    val_fraction: float = 0.1  # --dataset folder without lists: the share of images held out for val

    @property
    def flag(self):
        return f"--{self.split}_split"

    def list_name(self, auto="train"):
        """The list to read: --train_split auto is the source's default `auto`; any other name is itself."""
        return auto if self.split == "train" and self.name == "auto" else self.name


@dataclass(frozen=True)
class Listing:
    """What a lister returns: the pairs of one split, in the order the dataset serves them, and how to read them."""
    pairs: list  # [(image_path, mask_path), ...]
    used: str  # what was read, for messages: "train_aug", "val, labelIds", "train, --val_fraction 0.1 ..."
    remap: Optional[dict] = None  # mask value in the file -> class id or the ignore index; None refuses the value
    mask_ignore: Optional[int] = None  # the ignore value as the files write it (None: info.ignore_index)


@dataclass(frozen=True)
class Source:
    """One --dataset: its lister and its classes, fixed (info) or read from the data (read_info(root))."""
    name: str
    list_split: Callable  # (root, SplitRequest) -> Listing
    info: Optional[DatasetInfo] = None
    read_info: Optional[Callable] = None
    own_ignore_index: bool = False  # its masks may mark unlabelled pixels with another value than 255 (--ignore_index)

    def info_at(self, root):
        return self.info if self.info is not None else self.read_info(root)


def check_files(ids, pairs, source):
    """Refuse a listing that names missing files, or none."""
    missing = [(i, p) for i, pair in zip(ids, pairs) for p in pair if not os.path.exists(p)]
    if missing:
        raise DatasetError(f"{source} names {len(missing)} files that do not exist, first: id "
                           f"{missing[0][0]} -> {missing[0][1]}; restore them or remove their lines")
    if not pairs:
        raise DatasetError(f"{source} lists no images; check --root_dir and the split")
