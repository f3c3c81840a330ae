"""Data generators only the tests use: a --dataset folder tree and a tiny Cityscapes tree, both drawn with
segdata.synthetic's sample, so their pictures look like the synthetic VOC set's."""
import os

import numpy as np
from PIL import Image

from segdata.cityscapes import CITYSCAPES, CITYSCAPES_TRAIN_IDS
from segdata.common import IGNORE_INDEX, parse_size, voc_colormap
from segdata.synthetic import class_name, synthetic_sample


def make_synthetic_folder(out_dir, num_images=12, size=(32, 32), seed=0, classes=(1, 6, 11), palette=True,
                          lists=False, num_val=3, mask_mode="P", ignore_index=IGNORE_INDEX):
    """Write a --dataset folder tree of textured shapes to out_dir; returns out_dir, the value for --root_dir.

    images/ holds nested JPEGs and PNGs (images/a/..., images/b/c/..., images/...), masks/ the same paths as
    PNGs of mode mask_mode ("P" or "L"); classes.txt names background and one class per synthetic class in
    `classes` (folder ids 1, 2, ...), with their colours when palette. Unlabelled pixels (the objects' border band)
    hold ignore_index. lists: also train.txt and val.txt (the last num_val images are val)."""
    h, w = parse_size(size)
    base = os.path.abspath(out_dir)
    names = ["background", *(class_name(c) for c in classes)]
    lut = np.full(256, 0, dtype=np.uint8)
    for i, c in enumerate(classes, 1):
        lut[c] = i
    lut[IGNORE_INDEX] = ignore_index
    colours = voc_colormap(len(names))
    with open(os.path.join(_mkdir(base), "classes.txt"), "w") as f:
        f.write("# one class a line, in id order: NAME R G B\n" if palette else "")
        f.write("".join(f"{n} {r} {g} {b}\n" if palette else f"{n}\n" for n, (r, g, b) in zip(names, colours)))
    rng = np.random.default_rng(seed)
    ids = [("a/", "b/c/", "")[i % 3] + f"img_{i:03d}" for i in range(num_images)]
    for i, key in enumerate(ids):
        image, label = synthetic_sample(h, w, rng, classes)
        ext = ".png" if i % 2 else ".jpg"
        path = os.path.join(_mkdir(os.path.join(base, "images", os.path.dirname(key))), os.path.basename(key) + ext)
        Image.fromarray(image).save(path, **({"quality": 90} if ext == ".jpg" else {}))
        mask = Image.fromarray(lut[label])
        if mask_mode == "P":
            mask.putpalette([v for rgb in voc_colormap(256) for v in rgb])
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
            image, label = synthetic_sample(h, w, rng)
            label_ids = to_label_id[label]
            Image.fromarray(image).save(
                os.path.join(_mkdir(os.path.join(base, "leftImg8bit", split, city)), f"{stem}_leftImg8bit.png"))
            gt = _mkdir(os.path.join(base, "gtFine", split, city))
            Image.fromarray(label_ids).save(os.path.join(gt, f"{stem}_gtFine_labelIds.png"))
            Image.fromarray(colours[label_ids]).save(os.path.join(gt, f"{stem}_gtFine_color.png"))
            if train_ids:
                Image.fromarray(to_train_id[label_ids]).save(os.path.join(gt, f"{stem}_gtFine_labelTrainIds.png"))
    return base

