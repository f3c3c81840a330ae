"""What semi-supervised segmentation adds to distillation: pseudo labels with a confidence mask, and the checks of
the flags (train_kd.py; docs/methods.md, docs/unlabeled.md).

    python train_kd.py --kd_method pseudo --unlabeled split:train --unlabeled_views weak_strong   # FixMatch's loss
    python train_kd.py --kd_method cwd,pseudo --unlabeled photos/ --pseudo_threshold 0.9

The weak and strong views themselves are data (unlabeled.py, dataset.strong_colour_ops); the loss takes the
teacher's view as its teacher_images (losses.py's contract). `pseudo` is a method of losses.py's registry, registered
here when this module is imported (train_kd.py imports it), so its flags, help and checks come from the registry
like every other method's.
"""
import torch
import torch.nn.functional as F

from losses import METHODS, Flag, Method, register
from segdata.common import IGNORE_INDEX
from utils import UserError


class FlagError(UserError):
    """Flags that do not go together (the command line prints the message as one line)."""


def check_flags(args):
    """The combinations train_kd.py refuses before any data is read, each named with its way out."""
    if args.unlabeled_views != "same" and not args.unlabeled:
        raise FlagError(f"--unlabeled_views {args.unlabeled_views} makes views of the unlabelled images: give "
                        "--unlabeled PATH too, or drop it")
    if args.strong_cutout and args.unlabeled_views != "weak_strong":
        raise FlagError(f"--strong_cutout {args.strong_cutout} masks the strong view: add --unlabeled_views "
                        "weak_strong (and --unlabeled PATH), or drop it")
    lonely = [n for n in args.kd_method.split(",") if METHODS[n].unlabeled_only]
    if lonely and not args.unlabeled:
        raise FlagError(f"--kd_method {','.join(lonely)} learns from unlabelled images only: give --unlabeled PATH "
                        "(a folder, or split:NAME)")
