"""Your own data (--dataset folder): ROOT/images/** (any format PIL reads), ROOT/masks/** (PNG of class ids, the same
paths), ROOT/classes.txt (NAME or NAME R G B a line, in id order), optional ROOT/{train,val}.txt; docs/data.md."""
import os

import numpy as np
from PIL import Image

from segdata.common import IGNORE_INDEX, DatasetError, DatasetInfo, Listing, Source, voc_colormap

FOLDER_SPLIT_SEED = 0  # the --val_fraction draw's own seed: every --seed of a student sees the same split


def folder_info(root):
    """The classes of a folder dataset, from ROOT/classes.txt. Its ignore_index is the value the loss and the metric
    skip, always 255: a folder's own --ignore_index is remapped to it when its masks are read."""
    names, palette = read_classes(os.path.join(os.path.abspath(root), "classes.txt"))
    return DatasetInfo("folder", len(names), names, palette)

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
    return tuple(names), tuple(colours) if all(given) else voc_colormap(len(names))



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


def list_split(root, request):
    """The split's pairs: from ROOT/NAME.txt where --train_split/--val_split names a list of its own or ROOT holds
    train.txt and val.txt, else --val_fraction of the images drawn for val (the same draw for every --seed)."""
    base = os.path.abspath(root)
    remap = _remap(request.info, request.ignore_index, root)
    for needed in ("images", "masks"):
        if not os.path.isdir(os.path.join(base, needed)):
            raise DatasetError(f"{os.path.join(base, needed)} is missing: --dataset folder needs ROOT/images/ "
                               "(any image format), ROOT/masks/ (PNG, same paths) and ROOT/classes.txt; see "
                               "docs/data.md")
    images = _folder_images(base)
    if not images:
        raise DatasetError(f"{os.path.join(base, 'images')} holds no image PIL can read")
    name = request.list_name()
    list_file = os.path.join(base, f"{name}.txt")
    defaults = {os.path.join(base, "train.txt"): os.path.isfile(os.path.join(base, "train.txt")),
                os.path.join(base, "val.txt"): os.path.isfile(os.path.join(base, "val.txt"))}
    if name not in ("train", "val") and not os.path.isfile(list_file):
        raise DatasetError(f"{request.flag} {name}: {list_file} is missing; write it (one image a line, its path under "
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
        if not 0 < request.val_fraction < 1:
            raise DatasetError(f"--val_fraction {request.val_fraction}: must be between 0 and 1 (exclusive)")
        train, val = _fraction_split(sorted(images), request.val_fraction)
        ids = train if request.split == "train" else val
        used = f"{request.split}, --val_fraction {request.val_fraction:g} drawn with seed {FOLDER_SPLIT_SEED}"
    pairs = [(images[k], os.path.join(base, "masks", *k.split("/")) + ".png") for k in ids]
    return Listing(pairs, used, remap=remap, mask_ignore=request.ignore_index)


def _remap(info, ignore_index, root):
    """The user's ignore value -> 255, and 255 refused when it is not theirs (it would be ignored silently)."""
    if not 0 <= ignore_index <= 255:
        raise DatasetError(f"--ignore_index {ignore_index}: masks are 8-bit, so it must be 0-255")
    if ignore_index < info.num_classes:
        raise DatasetError(f"--ignore_index {ignore_index} is class {ignore_index} ({info.class_names[ignore_index]!r}) "
                           f"of {os.path.join(os.path.abspath(root), 'classes.txt')}, which lists {info.num_classes} "
                           f"classes (ids 0-{info.num_classes - 1}); give the value of unlabelled pixels, "
                           f"{info.num_classes} or more")
    return {} if ignore_index == IGNORE_INDEX else {ignore_index: IGNORE_INDEX, IGNORE_INDEX: None}


SOURCE = Source("folder", list_split, read_info=folder_info, own_ignore_index=True)
