"""Distil the frozen teacher into a student with one distillation method or several, summed.

    python train_kd.py --kd_method response --temperature 4 --alpha 0.3
    python train_kd.py --kd_method feature --model_name light
    python train_kd.py --kd_method response,cwd                      # -> SAVE_DIR/response_cwd_*
    python train_kd.py --kd_method cwd,mgd --w_cwd 3 --cwd_tau 4     # each method: a weight flag and its parameters
    python train_kd.py --kd_method feature --root_dir data/synthetic --epochs 2 --img_size 64 --batch_size 8
    torchrun --nproc_per_node=4 train_kd.py --kd_method feature --amp        # 1 machine x 4 GPUs

Methods (--kd_method, a comma-separated list; README "Distillation methods" gives each formula and default):
response and feature, the original's two; cwd, dist (stride-8 logits); at, affinity, mgd (the last feature pair).
The total is w_ce * CE + the weighted terms, w_ce = 1 - alpha when response or feature is listed (each of them
weighted alpha, as in the original), else 1.

The teacher's weights come from --teacher_weights, else SAVE_DIR/teacher_best.pth (python train.py
--model_name teacher), else torchvision's COCO_WITH_VOC_LABELS_V1 file (see teacher/).
Distillation is a loss (DeiT): engine.py's loop runs unchanged; the losses (losses.py) hold the teacher and the
trainable parts of the methods (feature KD's 1x1 alignment convs, MGD's generator), which train with the student
but are not part of it. A method is one entry of METHODS below and one class in losses.py.
Writes SAVE_DIR/RUN_{best,last}.pth, RUN = the methods joined by "_" (response, feature, response_cwd ...) or
--run_name, and the same logs and pictures as train.py.
"""
import argparse

import torch

import engine
import utils
from losses import (REDUCTIONS, AttentionTransfer, ChannelWiseKD, DistillationLoss, DISTKD, FeatureKDLoss,
                    MaskedGenerativeKD, PairwiseAffinityKD, ResponseKDLoss)
from model import add_model_args, build_model
from teacher import TeacherError, load_teacher


# Each builder returns its method without the teacher: DistillationLoss holds it and asks it once per step.
def response(student, teacher, info, args):
    return ResponseKDLoss(None, args.alpha, args.temperature, info.ignore_index, args.kd_reduction)


def feature(student, teacher, info, args):
    return FeatureKDLoss(None, student_channels(student, args, "feature"), args.alpha, info.ignore_index,
                         args.kd_reduction, teacher_channels=teacher.feature_channels)


def cwd(student, teacher, info, args):
    return ChannelWiseKD(args.w_cwd, args.cwd_tau)


def dist(student, teacher, info, args):
    return DISTKD(args.w_dist, args.dist_tau, args.dist_beta, args.dist_gamma)


def at(student, teacher, info, args):
    student_channels(student, args, "at")
    return AttentionTransfer(args.w_at)


def affinity(student, teacher, info, args):
    student_channels(student, args, "affinity")
    return PairwiseAffinityKD(args.w_affinity, args.affinity_tau, args.affinity_positions)


def mgd(student, teacher, info, args):
    return MaskedGenerativeKD(student_channels(student, args, "mgd")[2], teacher.feature_channels[2], args.w_mgd,
                              args.mgd_keep, args.mgd_hidden)


def student_channels(student, args, method):
    channels = getattr(student, "feature_channels", None)
    if channels is None:
        raise SystemExit(f"--model_name {args.model_name} exposes no feature maps for --kd_method {method}")
    return channels


# --kd_method NAME -> the method it builds
METHODS = {"response": response, "feature": feature, "cwd": cwd, "dist": dist, "at": at, "affinity": affinity,
           "mgd": mgd}
ORIGINAL = ("response", "feature")  # weighted alpha, CE weighted 1 - alpha; alone, their own loss as before
RULES = [("alpha", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1] (the weight of the distillation term)"),
         ("temperature", lambda v: v > 0, "must be > 0"),
         *[(f"w_{m}", lambda v: v is None or v >= 0, "must be >= 0") for m in ("cwd", "dist", "at", "affinity", "mgd")],
         *[(f, lambda v: v > 0, "must be > 0") for f in ("cwd_tau", "dist_tau", "affinity_tau")],
         ("affinity_positions", lambda v: v >= 1, "must be >= 1"),
         ("mgd_keep", lambda v: 0 < v <= 1, "must be in (0, 1]"),
         ("mgd_hidden", lambda v: v >= 0, "must be >= 0 (0: the teacher's width)")]


def method_list(text):
    """'response, cwd' -> 'response,cwd'; unknown or repeated names fail with the list of methods."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown method {', '.join(unknown) or '(none given)'}; give a comma-separated list of "
            f"{', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a method twice")
    return ",".join(names)


def get_args_parser():
    p = engine.get_args_parser("Distil the teacher into a student")
    add_model_args(p)
    p.add_argument("--kd_method", default="response", type=method_list,
                   help=f"comma-separated list of methods, summed: {', '.join(METHODS)} (response: KL on the "
                        "logits; feature: cosine of aligned features, the original's two; cwd: channel-wise KL and "
                        "dist: Pearson correlations, both on the stride-8 logits; at: attention maps, affinity: "
                        "pixel-pair similarities across the batch, mgd: masked feature generation, all three on the "
                        "last feature pair). Default run name: the methods joined by _")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="response/feature: weight of their terms, in [0, 1]; CE is weighted 1 - alpha when either "
                        "is listed (else 1)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of response KD")
    p.add_argument("--kd_reduction", default="original", choices=REDUCTIONS,
                   help="original: the original's scale (response: KL summed over classes and pixels, divided by "
                        "the batch size, times T^2; feature: the three pair terms added); pixel: response KL "
                        "averaged over pixels, feature pair terms averaged (CIRKD/MMRazor; no image-size dependence)")
    g = p.add_argument_group("methods beside the original two (their weights: the papers' anchor values)")
    g.add_argument("--w_cwd", type=float, default=3.0, help="CWD weight (the paper and CIRKD)")
    g.add_argument("--cwd_tau", type=float, default=4.0, help="CWD temperature (the paper and CIRKD)")
    g.add_argument("--w_dist", type=float, default=1.0, help="DIST weight")
    g.add_argument("--dist_tau", type=float, default=1.0, help="DIST temperature")
    g.add_argument("--dist_beta", type=float, default=1.0, help="DIST inter-class (per pixel) weight")
    g.add_argument("--dist_gamma", type=float, default=1.0, help="DIST intra-class (per class) weight")
    g.add_argument("--w_at", type=float, default=1000.0, help="attention transfer weight (the AT paper's beta)")
    g.add_argument("--w_affinity", type=float, default=1.0, help="pixel-pair affinity weight")
    g.add_argument("--affinity_tau", type=float, default=0.1, help="affinity softmax temperature")
    g.add_argument("--affinity_positions", type=int, default=1024,
                   help="affinity: at most this many pooled positions per image (its matrices are positions^2)")
    g.add_argument("--w_mgd", type=float, default=None,
                   help="MGD weight (default: MGD's 2e-5 at 512 channels, per teacher channel: 2e-5 * 512 / C, "
                        "1e-5 for ResNet layer3, 8e-6 for the light teacher)")
    g.add_argument("--mgd_keep", type=float, default=0.25, help="MGD: share of the positions the mask keeps")
    g.add_argument("--mgd_hidden", type=int, default=256,
                   help="MGD generator's middle width (0: the teacher's width, as the paper)")
    p.add_argument("--teacher_weights", default=None, help="teacher weights file (see teacher/)")
    # The original train_kd.py: AdamW, a stronger photometric augmentation, and schedule/early stopping/best
    # checkpoint on val mIoU (its train.py watched val loss).
    p.set_defaults(optimizer="adamw", augment="kd", monitor="miou")
    return p


def build_loss(names, teacher, student, info, args):
    """The original two alone: their own loss, exactly as before; otherwise DistillationLoss over the list."""
    methods = {name: METHODS[name](student, teacher, info, args) for name in names}
    if len(names) == 1 and names[0] in ORIGINAL:
        loss = methods[names[0]]
        loss.teacher = teacher  # a whole loss on its own: it asks the teacher itself
        return loss
    w_ce = 1 - args.alpha if any(n in ORIGINAL for n in names) else 1.0
    return DistillationLoss(teacher, methods, w_ce, info.ignore_index)


def main(args):
    names = args.kd_method.split(",")

    def build_criterion(student, info, device):
        teacher, source = load_teacher(args.teacher_arch, info.num_classes, args.teacher_weights, args.save_dir,
                                       device)
        if args.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        loss = build_loss(names, teacher, student, info, args)
        if utils.is_main():
            print(f"teacher: {args.teacher_arch} from {source}")
            if isinstance(loss, DistillationLoss):
                print("loss: " + " + ".join([f"{loss.w_ce:g} ce"] + [f"{m.weight:g} {m.part}"
                                                                     for m in loss.methods.values()]))
        return loss

    return engine.fit(args, "_".join(names),
                      lambda num_classes: build_model(args.model_name, num_classes,
                                                      pretrained_backbone=args.pretrained_backbone,
                                                      teacher_arch=args.teacher_arch),
                      build_criterion, extra_meta={"teacher_arch": args.teacher_arch})


if __name__ == "__main__":
    engine.run_cli(main, get_args_parser(), rules=RULES, errors=(TeacherError,))
