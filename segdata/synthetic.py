"""Synthetic VOC-shaped data, for machines without the real set: make_synthetic_voc writes textured shapes in VOC's
layout (read by segdata.voc), and records what made them in ROOT/synthetic.json. The same arguments give the same
files, byte for byte. tests/synthetic_sources.py draws folder and Cityscapes trees from the same sample."""
import json
import os

import numpy as np
from PIL import Image, ImageDraw

from segdata.common import IGNORE_INDEX, parse_size, voc_colormap

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


def synthetic_sample(h, w, rng, classes=None, radius=(0.15, 0.3), max_objects=3):
    """One (HxWx3 uint8 image, HxW uint8 label) of textured shapes drawn from rng; 255 on the objects' borders."""
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
                       radius=(0.15, 0.3), max_objects=3, num_extra=0, num_unlabeled=0):
    """Write a VOC-layout set of textured shapes to out_dir/VOCdevkit/VOC2012; returns out_dir,
    the value to pass as --root_dir. The same seed gives the same files.

    classes: the class ids (1..20) that appear, default all 20 (the others stay in the 21-class
    label space, just never drawn); radius: an object's size as a fraction of the shorter side, drawn
    uniformly from this range; max_objects: 1 to this many objects per image. num_extra > 0: that many more
    training images, listed with train's in ImageSets/Segmentation/train_large.txt (--train_split train_large),
    a larger set for a teacher, as torchvision's VOC teacher was trained on COCO, far more than VOC's train.
    num_unlabeled > 0: that many more images, drawn after all the others and listed in unlabeled.txt only, for
    --unlabeled split:unlabeled: images no teacher trained on train_large has seen (their masks are written, as the
    VOC layout wants a mask per listed image, and read by nothing that trains: the pool ignores them)."""
    h, w = parse_size(size)
    if classes is not None and not (len(classes) and all(1 <= int(c) <= 20 for c in classes)):
        raise ValueError(f"classes must be ids in 1..20, got {classes}")
    base = os.path.join(os.path.abspath(out_dir), "VOCdevkit", "VOC2012")
    lists = os.path.join(base, "ImageSets", "Segmentation")
    for d in ("JPEGImages", "SegmentationClass", lists):
        os.makedirs(os.path.join(base, d), exist_ok=True)
    palette = [v for rgb in voc_colormap(256) for v in rgb]
    rng = np.random.default_rng(seed)
    splits = {"train": [f"synth_{i:05d}" for i in range(num_train)],
              "val": [f"synth_{i:05d}" for i in range(num_train, num_train + num_val)]}
    first = num_train + num_val
    extra = [f"synth_{i:05d}" for i in range(first, first + num_extra)]
    unlabeled = [f"synth_{i:05d}" for i in range(first + num_extra, first + num_extra + num_unlabeled)]
    for ids in (*splits.values(), extra, unlabeled):  # drawn in this order: each split is as without the later ones
        for i in ids:
            image, label = synthetic_sample(h, w, rng, classes, radius, max_objects)
            Image.fromarray(image).save(os.path.join(base, "JPEGImages", f"{i}.jpg"), quality=90)
            mask = Image.fromarray(label)
            mask.putpalette(palette)  # "L" becomes "P": a palette PNG like VOC's
            mask.save(os.path.join(base, "SegmentationClass", f"{i}.png"))
    splits["trainval"] = splits["train"] + splits["val"]
    if num_extra:
        splits["train_large"] = splits["train"] + extra
    if num_unlabeled:
        splits["unlabeled"] = unlabeled
    for name, ids in splits.items():
        with open(os.path.join(lists, f"{name}.txt"), "w") as f:
            f.write("".join(f"{i}\n" for i in ids))
    # What made these files, so that a caller can tell a set made with other settings from its own.
    with open(os.path.join(os.path.abspath(out_dir), SYNTHETIC_RECIPE), "w") as f:
        json.dump(synthetic_recipe(num_train, num_val, size, seed, classes, radius, max_objects, num_extra,
                                   num_unlabeled), f)
    return os.path.abspath(out_dir)


SYNTHETIC_RECIPE = "synthetic.json"


def synthetic_recipe(num_train=64, num_val=16, size=(96, 128), seed=0, classes=None, radius=(0.15, 0.3),
                     max_objects=3, num_extra=0, num_unlabeled=0):
    """make_synthetic_voc's arguments as plain JSON types (what it writes to ROOT/synthetic.json); num_unlabeled
    only when given, so a set written before it existed keeps its recipe."""
    return {"num_train": int(num_train), "num_val": int(num_val), "size": list(parse_size(size)),
            "seed": int(seed), "classes": None if classes is None else [int(c) for c in classes],
            "radius": [float(r) for r in radius], "max_objects": int(max_objects), "num_extra": int(num_extra),
            **({"num_unlabeled": int(num_unlabeled)} if num_unlabeled else {})}


def class_name(c):
    """A synthetic VOC-layout class id (1..20) -> its look, e.g. 'disk hstripes'."""
    return f"{_SHAPES[(c - 1) // 4]} {_TEXTURES[(c - 1) % 4]}"

