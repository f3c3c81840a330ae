"""Evaluate a trained network on the validation split and append a row to results.csv.

    python test.py --training_mode teacher      # also regular | response | feature
    python test.py --training_mode feature --weights weights/feature_best.pth
    python test.py --training_mode regular --root_dir data/synthetic --img_size 64 --device cpu
    python test.py --training_mode feature --weights checkpoints/feature_kd_best.pth   # the original project's file

Prints mIoU with the ignore label (255) excluded, pixel accuracy, a per-class IoU table and the mean inference
time per image (device synchronised around every forward pass; the first batch is warm-up). results.csv columns:
  mIoU_with_ignore     the standard mIoU: pixels labelled 255 are excluded (use this one)
  mIoU_without_ignore  the original project's computation, 255 clamped into the last class (to compare tables)
Pictures image | ground truth | prediction go to --vis_dir (default visualizations/), named RUN_N.png (RUN: --run_name,
else the mode).
"""
import argparse
import datetime
import os

import torch
from torch.utils.data import DataLoader

import utils
from dataset import add_data_args, build_dataset, dataset_info, parse_size
from engine import evaluate, make_autocast, run_cli, save_predictions
from fast import setup_backends
from model import load_trained
from teacher import load_teacher

MODES = ("teacher", "regular", "response", "feature")
CSV_COLUMNS = ("training_mode", "mIoU_with_ignore", "mIoU_without_ignore", "avg_inference_time_ms")


def get_args_parser():
    p = argparse.ArgumentParser(description="Evaluate a trained network on the validation split")
    p.add_argument("--training_mode", default="regular", choices=MODES)
    p.add_argument("--save_dir", default="weights", help="where training wrote MODE_best.pth")
    p.add_argument("--weights", default=None,
                   help="a checkpoint to evaluate instead of SAVE_DIR/MODE_best.pth: one of this repo's, or a state "
                        "dict saved by the original project (checkpoints/{light,response_kd,feature_kd}_best.pth)")
    p.add_argument("--run_name", default=None, help="file prefix under --save_dir, if training used --run_name")
    p.add_argument("--teacher_arch", default="fcn_resnet50", help="teacher mode: the teacher network (model.py)")
    p.add_argument("--teacher_weights", default=None, help="teacher mode: as train_kd.py's flag")
    add_data_args(p, augment_default="none")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--num_workers", type=int, default=-1, help=utils.NUM_WORKERS_HELP)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--results_csv", default="results.csv")
    p.add_argument("--vis_dir", default="visualizations")
    p.add_argument("--num_vis", type=int, default=8, help="pictures saved to --vis_dir")
    p.add_argument("--no_progress", action="store_true")
    return p


def load_network(args, info, device):
    """Returns (model, description). Teacher mode follows teacher/'s order of weight sources."""
    run = args.run_name or args.training_mode
    path = args.weights or os.path.join(args.save_dir, f"{run}_best.pth")
    if args.training_mode == "teacher" and not args.weights:
        teacher, source = load_teacher(args.teacher_arch, info.num_classes, args.teacher_weights, args.save_dir)
        return teacher.net, f"{args.teacher_arch} ({source})"
    if not os.path.isfile(path):
        how = {"regular": "python train.py", "response": "python train_kd.py --kd_method response",
               "feature": "python train_kd.py --kd_method feature", "teacher": "python train.py --model_name teacher"}
        raise utils.CheckpointError(
            f"--training_mode {args.training_mode}: no checkpoint at {path}. Train it first "
            f"(`{how[args.training_mode]} --save_dir {args.save_dir}`), or pass --weights PATH.")
    model, meta = load_trained(path)
    for note in meta["notes"]:
        print(f"note: {path}: {note}")
    if meta["num_classes"] != info.num_classes:
        raise utils.CheckpointError(
            f"{path} was trained for {meta['num_classes']} classes ({meta['dataset']}), but --dataset "
            f"{info.name} has {info.num_classes}; pass the matching --dataset")
    return model, meta["description"]


def main(args):
    device, _ = utils.init_distributed(args.device)
    info = dataset_info(args.dataset, args.root_dir)
    size = parse_size(args.img_size)
    val_set = build_dataset(args.dataset, args.root_dir, "val", size, train=False, train_split=args.train_split,
                            download=args.download, val_split=args.val_split, ignore_index=args.ignore_index,
                            val_fraction=args.val_fraction)
    model, description = load_network(args, info, device)
    model = model.eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    setup_backends(device)
    loader = DataLoader(val_set, batch_size=args.batch_size, shuffle=False,
                        num_workers=utils.resolve_num_workers(args.num_workers, device),
                        pin_memory=device.type == "cuda")
    autocast, _ = make_autocast(device, args.amp)
    cm, _, sec_per_image = evaluate(model, loader, device, info.num_classes, info.ignore_index, autocast=autocast,
                                 channels_last=args.channels_last, progress=not args.no_progress,
                                 time_inference=True)
    res = cm.compute()
    ms = sec_per_image * 1000 if sec_per_image is not None else float("nan")

    print(f"\n{args.training_mode}: {description}")
    print(f"{info.name} val, {len(val_set)} images at {size[0]}x{size[1]}, device {device}")
    print(f"{'class':<14} IoU")
    for name, iou in zip(info.class_names, res["iou"]):
        print(f"{name:<14} {iou:.4f}" if iou == iou else f"{name:<14} absent")
    print(f"mIoU (255 excluded):            {res['miou']:.4f}")
    print(f"mIoU (original, 255 clamped):   {res['miou_clamped']:.4f}")
    print(f"pixel accuracy (255 excluded):  {res['pixel_acc']:.4f}")
    print(f"inference time: {ms:.2f} ms/image (batch {args.batch_size})")

    run = args.run_name or args.training_mode
    row = {"training_mode": args.training_mode, "run": run,
           "mIoU_with_ignore": f"{res['miou']:.4f}",
           "mIoU_without_ignore": f"{res['miou_clamped']:.4f}", "avg_inference_time_ms": f"{ms:.3f}",
           "pixel_accuracy": f"{res['pixel_acc']:.4f}", "model": description, "dataset": info.name,
           "split": args.val_split, "img_size": f"{size[0]}x{size[1]}", "device": str(device),
           "date": datetime.datetime.now().isoformat(timespec="seconds")}
    utils.append_csv_row(args.results_csv, row, first_columns=CSV_COLUMNS)
    print(f"row appended to {args.results_csv}")

    if args.num_vis > 0:
        os.makedirs(args.vis_dir, exist_ok=True)
        for start in range(0, min(args.num_vis, len(val_set)), 4):
            save_predictions(model, val_set, device, info,
                             os.path.join(args.vis_dir, f"{run}_{start // 4}.png"),
                             range(start, min(start + 4, args.num_vis, len(val_set))), args.channels_last,
                             title=f"{run}: {description}")
        print(f"pictures in {args.vis_dir}/")
    return res | {"avg_inference_time_ms": ms}


if __name__ == "__main__":
    run_cli(main, get_args_parser())
