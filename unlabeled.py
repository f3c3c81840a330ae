"""Images nobody labelled, for distillation: train_kd.py --unlabeled PATH.

PATH is a folder of images (searched recursively; any file PIL reads: grayscale, RGBA, 16-bit, EXIF-rotated), or
`split:NAME`, the images of a split of --dataset with their masks ignored (e.g. `split:train_large`, `split:train`).
Each is read once before training: an unreadable file is named, skipped and counted; a file byte-identical to an
image of the split being scored is refused (leakage). An unlabelled image's mask is all ignore (255), so the
cross-entropy never sees it; it reaches the loss only through the distillation terms.

How a step holds both kinds (MixedLoader): every step takes the labelled batch of the train loader, as a
labelled-only run does, and appends --unlabeled_batch unlabelled images (default: --batch_size). The number of
steps, "an epoch" (one pass over the labelled images) and "the last epoch" mean what they mean without
--unlabeled; a step sees batch_size + unlabeled_batch images. The unlabelled images are drawn as one endless
stream of shuffled passes whose position depends only on (seed, epoch, step), so a resumed run draws exactly what an
uninterrupted one would; under DDP each process takes every world-th draw.

Views (--unlabeled_views). `same` (the default): the student and the teacher see the same augmented view of every
image (one batch, one forward each). `weak_strong` (FixMatch, Sohn et al., NeurIPS 2020; UniMatch, Yang et al., CVPR
2023): an unlabelled image is drawn once through the geometric transform (--geometric; none without it), the weak
view, which the teacher answers; the student learns on the strong view, that same geometry followed by
dataset.strong_colour_ops (colour, and with --strong_cutout P a grey box): the two views' pixels align. MixedLoader
then yields (student images, targets, teacher images); a labelled image is the same in both batches.
"""
import hashlib
import os

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from dataset import DatasetError, SegmentationDataset, build_dataset, strong_colour_ops, to_input

VIEWS = ("same", "weak_strong")  # --unlabeled_views (the module docstring)


class UnreadableImage(Exception):
    pass


def read_image(path):
    """Any file PIL reads -> upright RGB uint8 array. Raises UnreadableImage with the reason."""
    try:
        with Image.open(path) as im:
            im.load()  # PIL decodes lazily: a truncated file fails here, inside the try
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "I":
                # 16-bit grayscale (PNG, TIFF): convert("RGB") would clip everything above 255 to white.
                a = (np.asarray(im, dtype=np.float64).clip(0, 65535) / 257).round().astype(np.uint8)
                return np.repeat(a[..., None], 3, axis=2)
            if im.mode == "F":
                raise UnreadableImage(f"{path}: floating-point pixels (mode F) have no standard range; save it "
                                      "as 8 or 16 bits")
            if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
                rgba = im.convert("RGBA")
                return np.array(Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB"))
            return np.array(im.convert("RGB"))
    except UnreadableImage:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the decoder (or its EXIF parser) trips on, the file is unusable
        raise UnreadableImage(f"{path}: cannot read it as an image ({type(e).__name__}: {e})") from None


def list_files(path):
    """Every file under a folder (recursively, hidden ones left out), sorted: the unlabelled pool's candidates."""
    if not os.path.exists(path):
        raise DatasetError(f"--unlabeled {path}: no such folder")
    if not os.path.isdir(path):
        raise DatasetError(f"--unlabeled {path}: not a folder (give a folder of images, or split:NAME)")
    found = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in sorted(files) if not f.startswith(".")]
    if not found:
        raise DatasetError(f"--unlabeled {path}: the folder holds no files")
    return found


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class UnlabeledImages(SegmentationDataset):
    """Images without masks, as (image, all-ignore mask) pairs with the labelled set's augmentation, or with
    views="weak_strong" as (strong view, all-ignore mask, weak view) of one geometric draw (the module docstring).
    Every file is decoded once at construction (into the cache): unreadable ones are named on stdout and left out
    (`skipped`)."""

    def __init__(self, info, files, img_size, augment="none", geometric=False, views="same", cutout=0.0):
        if views not in VIEWS:
            raise DatasetError(f"--unlabeled_views {views}: choose one of {', '.join(VIEWS)}")
        super().__init__(info, [(f, None) for f in files], img_size, train=True, augment=augment,
                         geometric=geometric, cache=True)
        self._strong = None
        if views == "weak_strong":  # the weak view is the geometry alone; the strong one adds its own colour
            self._colour, self._strong = None, strong_colour_ops(cutout)
        kept, self.skipped = [], []
        for path in files:
            try:
                image = self._read(path)
            except UnreadableImage as e:
                self.skipped.append(path)
                print(f"skipped {e}")
                continue
            self._cache[len(kept)] = image
            kept.append((path, None))
        self.files = kept

    def _read(self, path):
        h, w = self.size
        image = Image.fromarray(read_image(path))
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BILINEAR)
        image = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return image, torch.full((1, h, w), self.info.ignore_index, dtype=torch.uint8)

    def _decode(self, image_path, mask_path):  # noqa: ARG002 - every image was read (and cached) at construction
        return self._read(image_path)

    def _augment(self, image, mask):
        """weak_strong: the geometry once, then the strong colour on a copy, under the same seed (one draw)."""
        image, mask = super()._augment(image, mask)
        return image if self._strong is None else (image, self._strong(image.clone())), mask

    def __getitem__(self, index):
        if self._strong is None:
            return super().__getitem__(index)
        (weak, strong), mask = self._augmented(index)
        return to_input(strong), mask[0].long().as_subclass(torch.Tensor), to_input(weak)


def build_unlabeled(args, info, val_set):
    """The pool of --unlabeled, checked against the scored split for leakage; prints what it will use."""
    source = args.unlabeled
    if source.startswith("split:"):
        pool = build_dataset(args.dataset, args.root_dir, "train", args.img_size, train=False, cache=False,
                             train_split=source[len("split:"):], download=False)
        files = [image for image, _ in pool.files]
    else:
        files = list_files(source)
    scored = {_sha256(image): image for image, _ in val_set.files}
    leaks = [(f, scored[h]) for f in files if (h := _sha256(f)) in scored]
    if leaks:
        raise DatasetError(f"--unlabeled {source}: {len(leaks)} file(s) are byte-identical to images of the split "
                           f"being scored, first {leaks[0][0]} = {leaks[0][1]}; remove them (distilling on the "
                           "scored images would leak them into the result)")
    images = UnlabeledImages(info, files, args.img_size, augment=args.augment, geometric=args.geometric,
                             views=args.unlabeled_views, cutout=args.strong_cutout)
    if len(images) == 0:
        raise DatasetError(f"--unlabeled {source}: none of its {len(files)} files could be read as an image")
    print(f"unlabeled: {len(images)} images from {source}" + (f", {len(images.skipped)} unreadable file(s) "
                                                                 "skipped (named above)" if images.skipped else ""))
    return images


class MixedLoader:
    """The train loader with `per_step` unlabelled images appended to every batch (see the module docstring). It
    has the train loader's length and sampler (the engine sets the epoch on it). With two views, a batch is
    (student images, targets, teacher images): the labelled images in both, then the strong, resp. weak, views."""

    def __init__(self, loader, unlabeled, per_step, seed, rank=0, world=1):
        self.loader, self.unlabeled, self.per_step = loader, unlabeled, per_step
        self.seed, self.rank, self.world = seed, rank, world
        self.sampler = loader.sampler

    def __len__(self):
        return len(self.loader)

    def draws(self, epoch):
        """(index, augmentation seed) of every unlabelled image this process takes in `epoch`, in order."""
        n, per_epoch = len(self.unlabeled), len(self.loader) * self.per_step
        out, perms = [], {}
        for step_draw in range(epoch * per_epoch, (epoch + 1) * per_epoch):
            g = step_draw * self.world + self.rank  # every world-th draw of one stream shared by the processes
            k, pos = divmod(g, n)
            if k not in perms:
                perms[k] = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + k))
            out.append((int(perms[k][pos]), ((self.seed + 104_729) * 1_000_003 + g) * 1_000_003 + 1))
        return out

    def __iter__(self):
        loader = self.loader
        extra = DataLoader(self.unlabeled, batch_size=self.per_step, sampler=self.draws(self.sampler.epoch),
                           num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                           generator=torch.Generator().manual_seed(self.seed))  # the global RNG stays put
        for (images, targets), (more, none, *weak) in zip(loader, extra):
            batch = torch.cat([images, more]), torch.cat([targets, none])
            yield (*batch, torch.cat([images, weak[0]])) if weak else batch
