"""Distil the frozen teacher into a student with one distillation method or several, summed.

    python train_kd.py --kd_method response --temperature 4 --alpha 0.3
    python train_kd.py --kd_method feature --model_name light
    python train_kd.py --kd_method response,cwd                      # -> SAVE_DIR/response_cwd_*
    python train_kd.py --kd_method cwd,mgd --w_cwd 3 --cwd_tau 4     # each method: a weight flag and its parameters
    python train_kd.py --kd_method feature --root_dir data/synthetic --epochs 2 --img_size 64 --batch_size 8
    python train_kd.py --kd_method cwd,pseudo --unlabeled split:train --unlabeled_views weak_strong   # semi.py
    torchrun --nproc_per_node=4 train_kd.py --kd_method feature --amp        # 1 machine x 4 GPUs

The methods, their flags and their help come from losses.py's registry (METHODS): `python train_kd.py -h` lists
them, docs/methods.md gives each formula and default. The total is w_ce * CE + the weighted terms, w_ce = 1 - alpha
when response or feature is listed (each of them weighted alpha, as in the original), else 1.

The teacher's weights come from --teacher_weights, else SAVE_DIR/teacher_best.pth (python train.py
--model_name teacher), else torchvision's COCO_WITH_VOC_LABELS_V1 file (see teacher/).
Distillation is a loss (DeiT): engine.py's loop runs unchanged; the loss (losses.py) holds the teacher and the
trainable parts of the methods (feature KD's 1x1 alignment convs, ...), which train with the student
but are not part of it. Writes SAVE_DIR/RUN_{best,last}.pth, RUN = the methods joined by "_" (response, feature,
response_cwd ...) or --run_name, and the same logs and pictures as train.py.
"""
import argparse

import torch

import engine
import losses
import semi  # registers the pseudo-label method into losses.METHODS; the EMA teacher, the flags' checks
import train
import unlabeled
import utils
from teacher import load_teacher


def method_list(text):
    """'response, feature' -> 'response,feature'; unknown or repeated names fail with the list of methods."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in losses.METHODS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"{text!r}: unknown method {', '.join(unknown) or '(none given)'}; give a comma-separated list of "
            f"{', '.join(losses.METHODS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a method twice")
    return ",".join(names)


def get_args_parser():
    """The training flags, then --kd_method and every registered method's flags (read from losses.METHODS when
    called, so a method registered after import has its flags too)."""
    p = train.get_args_parser()
    p.description = "Distil the teacher into a student"
    summaries = "; ".join(f"{name}: {cls.summary}" for name, cls in losses.METHODS.items())
    p.add_argument("--kd_method", default="response", type=method_list,
                   help=f"comma-separated list of methods, summed ({summaries}). Default run name: the methods "
                        "joined by _")
    g = p.add_argument_group("the methods' flags (losses.py; the source of each default in brackets)")
    for f in losses.all_flags().values():
        source = f" [default {f.default}, from {f.source}]" if f.source else ""
        g.add_argument(f"--{f.name}", type=f.type, default=f.default, choices=f.choices, help=f.help + source)
    p.add_argument("--teacher_weights", default=None, help="teacher weights file (see teacher/)")
    u = p.add_argument_group("images without masks (unlabeled.py)")
    u.add_argument("--unlabeled", default=None, metavar="PATH",
                   help="a folder of images without masks (searched recursively), or split:NAME (a split of "
                        "--dataset, its masks ignored): they bring the distillation terms only")
    u.add_argument("--unlabeled_batch", type=int, default=None,
                   help="unlabelled images appended to every step's labelled batch (default: --batch_size)")
    u.add_argument("--unlabeled_views", default="same", choices=unlabeled.VIEWS,
                   help="same: teacher and student see one augmented view of an unlabelled image; weak_strong: the "
                        "teacher its geometric transform alone, the student that geometry plus strong colour "
                        "(FixMatch, UniMatch; docs/unlabeled.md)")
    u.add_argument("--strong_cutout", type=float, default=0.0, metavar="P",
                   help="weak_strong: with probability P a grey box (2-40%% of the image) in the strong view "
                        "(FixMatch's Cutout); 0: none")
    e = p.add_argument_group("a teacher that keeps learning (semi.py)")
    e.add_argument("--ema_teacher", type=float, default=0.0, metavar="DECAY",
                   help="after every step, teacher = DECAY * teacher + (1 - DECAY) * student (Mean Teacher; "
                        "--teacher_arch must be the student's architecture); 0: a frozen teacher")
    e.add_argument("--ema_init", default="weights", choices=semi.EMA_INITS,
                   help="where an EMA teacher starts: the teacher's weights (--teacher_weights ...) or the "
                        "student's initial weights")
    e.add_argument("--student_init", default="random", choices=semi.STUDENT_INITS,
                   help="random: the student starts from its architecture's init (the original); teacher: from the "
                        "teacher's weights (--teacher_weights ...; one architecture): self-training continues the "
                        "teacher on the unlabelled images")
    # The original train_kd.py: AdamW, a stronger photometric augmentation, and schedule/early stopping/best
    # checkpoint on val mIoU (its train.py watched val loss).
    p.set_defaults(optimizer="adamw", augment="kd", monitor="miou")
    return p


def rules():
    """The checks of the methods' flags, as engine.check_args takes them."""
    return [(f.name, f.check, f.why) for f in losses.all_flags().values() if f.check is not None] + [
        ("unlabeled_batch", lambda v: v is None or v >= 1, "must be at least 1"),
        ("strong_cutout", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        ("ema_teacher", lambda v: 0 <= v < 1, "must be in [0, 1) (0: off)")]


def add_unlabeled(args, data, criterion):
    """--unlabeled: every step's batch gains --unlabeled_batch images without masks (unlabeled.MixedLoader). With
    every distillation weight at 0 they could bring nothing, and are not loaded: the labelled-only run exactly."""
    if not args.unlabeled:
        return
    if all(m.weight == 0 for m in criterion.methods.values()):
        if utils.is_main():
            print(f"note: --unlabeled {args.unlabeled} not loaded: every distillation weight is 0")
        return
    images = unlabeled.build_unlabeled(args, data.info, data.val_set)
    data.train_loader = unlabeled.MixedLoader(data.train_loader, images, args.unlabeled_batch or args.batch_size,
                                              args.seed, utils.get_rank(), utils.get_world_size())


def build_criterion(args, student, info, device):
    """The frozen teacher and the loss of --kd_method. Built on a forked RNG: the loss's own randomness (the
    teacher network, the init of its trainable parts) stays off the global stream, so a loss whose terms are
    weighted 0 replays the cross-entropy run exactly."""
    with torch.random.fork_rng(devices=[]):
        if args.ema_teacher:
            teacher, source = semi.ema_teacher(args, student, info.num_classes, device)
        else:
            teacher, source = load_teacher(args.teacher_arch, info.num_classes, args.teacher_weights, args.save_dir,
                                           device)
        if args.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        loss = losses.build_loss(args.kd_method.split(","), teacher, student, args, info.ignore_index)
        loss.ema = semi.MeanTeacherEMA(args.ema_teacher) if args.ema_teacher else None
    if utils.is_main():
        print(f"teacher: {args.teacher_arch} from {source}")
        print("loss: " + " + ".join([f"{loss.w_ce:g} ce"] + [f"{m.weight:g} {m.part}" for m in loss.methods.values()]))
    return loss


def main(args):
    train.check_names(args)
    semi.check_flags(args)
    with engine.session(args) as device:
        data = engine.build_data(args, device)
        model, meta = train.build_network(args, data.info.num_classes)
        semi.init_student(args, model, data.info.num_classes)
        criterion = build_criterion(args, model, data.info, device)
        add_unlabeled(args, data, criterion)
        return engine.fit(args, args.kd_method.replace(",", "_"), model, criterion, data, device, meta,
                          may_change={"teacher_weights"})


if __name__ == "__main__":
    engine.run_cli(main, get_args_parser(), rules=rules())
