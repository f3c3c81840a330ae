"""Segment your own images with a trained network: a mask and an overlay per image, per-class pixel shares.

    python predict.py --weights weights/feature_best.pth photos/ --out predictions/
    python predict.py --weights weights/feature_best.pth a.jpg b.png --out predictions/ --device cuda --amp
    python predict.py --weights weights/regular_best.pth photos/ --out preds/ --img_size 64 --device cpu # CPU smoke run

PATH is an image or a folder (its files, not its subfolders). The architecture, the dataset (class names,
palette) and the default --img_size come from the checkpoint. Writes under --out:
  masks/NAME.png       class ids at the image's own size, a palette PNG as VOC stores its masks
  overlays/NAME.png    the image blended with the coloured mask
  class_shares.csv     one row per image: its size and the share of its pixels in each class
The network sees each image resized to --img_size; its logits are resized back to the image's size before the
argmax. Images are turned upright by their EXIF orientation; grayscale, palette and 16-bit images become RGB;
transparent pixels are composited over white. A file that cannot be read is named on stderr and skipped; the
exit code is then 1 (2 for a bad flag or checkpoint).
"""
import argparse
import csv
import io
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import utils
from dataset import MEAN, STD, DatasetError, colorize, parse_size, recorded_info
from engine import make_autocast
from fast import setup_backends
from model import load_trained
from unlabeled import UnreadableImage, read_image

OVERLAY_ALPHA = 0.5  # weight of the coloured mask in the overlay
BAND_BYTES = 64 * 2**20  # resized logits held at once: a 12-megapixel photo's 21 maps would take 1 GB


def resolve_device(name):
    """utils.init_distributed's resolution, with exit code 2 like every other bad flag (1 means files skipped)."""
    try:
        return utils.init_distributed(name)[0]
    except SystemExit as e:  # CUDA asked for but absent: its message names the flag
        raise DatasetError(str(e.code)) from None
    except RuntimeError as e:  # torch.device("gpu"), say
        raise DatasetError(f"--device {name}: {str(e).splitlines()[0]}") from None


def get_args_parser():
    p = argparse.ArgumentParser(description="Segment your own images with a trained network")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders whose files are images")
    p.add_argument("--weights", required=True, help="a checkpoint (RUN_best.pth) or the original project's state dict")
    p.add_argument("--out", required=True, help="output folder: masks/, overlays/, class_shares.csv")
    p.add_argument("--img_size", nargs="+", type=int, default=None,
                   help="H [W] the network sees; default: the checkpoint's training size, else 256")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true", help="bfloat16/float16 autocast (logits resized in float32)")
    p.add_argument("--no_progress", action="store_true")
    return p


def list_inputs(paths, out_dir):
    """PATH arguments -> image files in order (a folder: its files sorted by name, hidden files and --out left out).
    Two inputs that would write the same NAME.png are an error: one would overwrite the other."""
    out_dir = os.path.realpath(out_dir)
    files, seen = [], set()
    for path in paths:
        if os.path.isdir(path):
            found = [os.path.join(path, f) for f in sorted(os.listdir(path)) if not f.startswith(".")]
            found = [f for f in found if os.path.isfile(f)]
            if not found:
                raise DatasetError(f"{path}: the folder holds no files (subfolders are not searched)")
        elif os.path.isfile(path):
            found = [path]
        else:
            raise DatasetError(f"{path}: no such file or folder")
        for f in found:
            real = os.path.realpath(f)
            if real not in seen and os.path.dirname(real) != out_dir:
                seen.add(real)
                files.append(f)
    names = {}
    for f in files:
        name = os.path.splitext(os.path.basename(f))[0]
        if name in names:
            raise DatasetError(f"{names[name]} and {f} would both write {name}.png under --out; rename one or "
                               "predict them in separate runs")
        names[name] = f
    return files


def to_input(image, size):
    """HxWx3 uint8 -> 3xHxW normalised float at the network's size."""
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float().div_(255)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return ((x[0] - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)).contiguous()


@torch.no_grad()
def upsample_argmax(logits, size, band_bytes=BAND_BYTES):
    """CxH'xW' logits -> HxW class ids: bilinear resize of the logits to size, then argmax, a band of rows at a time.

    grid_sample at the output pixels' centres (align_corners=False, border padding) samples exactly where
    F.interpolate(..., mode="bilinear", align_corners=False) does, so this is the same mask without the whole
    CxHxW float map in memory at once."""
    c = logits.shape[0]
    h, w = size
    logits = logits.float().unsqueeze(0)
    xs = (torch.arange(w, device=logits.device, dtype=torch.float32) + 0.5) * (2 / w) - 1
    ys = (torch.arange(h, device=logits.device, dtype=torch.float32) + 0.5) * (2 / h) - 1
    rows = max(1, band_bytes // (4 * c * w))
    out = torch.empty(h, w, dtype=torch.uint8, device=logits.device)
    for top in range(0, h, rows):
        band_y = ys[top:top + rows]
        grid = torch.stack(torch.meshgrid(band_y, xs, indexing="ij")[::-1], dim=-1).unsqueeze(0)
        out[top:top + rows] = F.grid_sample(logits, grid, mode="bilinear", padding_mode="border",
                                            align_corners=False)[0].argmax(0).to(torch.uint8)
    return out.cpu().numpy()


def save_outputs(name, image, mask, info, out_dir):
    """masks/NAME.png (palette PNG of class ids) and overlays/NAME.png; written atomically."""
    pal = Image.fromarray(mask)  # uint8 -> mode "L"
    pal.putpalette([v for rgb in info.palette for v in rgb])  # "L" becomes "P", as VOC's SegmentationClass PNGs
    colours = colorize(mask, info.palette).astype(np.float32)
    overlay = (image.astype(np.float32) * (1 - OVERLAY_ALPHA) + colours * OVERLAY_ALPHA).round().astype(np.uint8)
    for folder, picture in (("masks", pal), ("overlays", Image.fromarray(overlay))):
        buf = io.BytesIO()
        picture.save(buf, format="PNG")
        utils.atomic_write_bytes(os.path.join(out_dir, folder, f"{name}.png"), buf.getvalue())


def checkpoint_record(path, dataset):
    """What the checkpoint says besides the network: the H, W it was trained at (its recorded args, else 256x256,
    the original's size) and its dataset's classes and palette (its dataset_info, else those of `dataset`)."""
    ckpt = utils.load_checkpoint(path)
    args = ckpt.get("args") if isinstance(ckpt, dict) else None  # the original's state dicts record none
    saved = args.get("img_size") if isinstance(args, dict) else None
    return (parse_size(saved) if saved else (256, 256)), recorded_info(ckpt, dataset)


def main(args):
    """Returns {"written": [paths], "failed": [paths]}."""
    if args.batch_size < 1:
        raise DatasetError(f"--batch_size {args.batch_size}: must be at least 1")
    files = list_inputs(args.paths, args.out)
    device = resolve_device(args.device)
    setup_backends(device)
    model, meta = load_trained(args.weights)
    trained_size, info = checkpoint_record(args.weights, meta["dataset"])
    size = parse_size(args.img_size) if args.img_size else trained_size
    for note in meta["notes"]:
        print(f"note: {note}")
    if meta["num_classes"] != info.num_classes:
        raise utils.CheckpointError(f"{args.weights}: {meta['num_classes']} classes, but its dataset "
                                    f"{info.name} has {info.num_classes}: the class names would not match")
    model = model.to(device).to(memory_format=torch.channels_last)
    autocast, _ = make_autocast(device, args.amp)
    print(f"{meta['description']}: {info.name} classes, {len(files)} files, network at {size[0]}x{size[1]}, "
          f"device {device}")

    written, failed, rows = [], [], []
    bar = tqdm(total=len(files), desc="predict", disable=args.no_progress, dynamic_ncols=True)
    for start in range(0, len(files), args.batch_size):
        batch = []
        for path in files[start:start + args.batch_size]:
            try:
                batch.append((path, read_image(path)))
            except UnreadableImage as e:
                failed.append(path)
                tqdm.write(f"skipped {e}", file=sys.stderr)
                bar.update(1)
        if not batch:
            continue
        x = torch.stack([to_input(image, size) for _, image in batch]).to(device)
        with torch.inference_mode(), autocast:
            logits = model(x.contiguous(memory_format=torch.channels_last))
        for (path, image), lg in zip(batch, logits):
            mask = upsample_argmax(lg, image.shape[:2])
            name = os.path.splitext(os.path.basename(path))[0]
            save_outputs(name, image, mask, info, args.out)
            counts = np.bincount(mask.ravel(), minlength=info.num_classes)
            rows.append({"image": path, "height": mask.shape[0], "width": mask.shape[1],
                         **{c: f"{n / mask.size:.6f}" for c, n in zip(info.class_names, counts)}})
            written.append(path)
            bar.update(1)
    bar.close()

    if rows:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        utils.atomic_write_text(os.path.join(args.out, "class_shares.csv"), buf.getvalue())
    print(f"{len(written)} images segmented: {os.path.join(args.out, 'masks')}/, "
          f"{os.path.join(args.out, 'overlays')}/, {os.path.join(args.out, 'class_shares.csv')}")
    if failed:
        print(f"{len(failed)} of {len(files)} files skipped (unreadable): {', '.join(failed)}", file=sys.stderr)
    return {"written": written, "failed": failed}


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser().parse_args(), exit_code=lambda result: 1 if result["failed"] else 0)
