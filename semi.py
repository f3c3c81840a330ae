"""What semi-supervised segmentation adds to distillation: pseudo labels with a confidence mask, a teacher that keeps
learning as an average of the student, and the checks of their flags (train_kd.py; docs/methods.md, docs/unlabeled.md).

    python train_kd.py --kd_method pseudo --unlabeled split:train --unlabeled_views weak_strong   # FixMatch's loss
    python train_kd.py --kd_method cwd,pseudo --unlabeled photos/ --pseudo_threshold 0.9
    python train_kd.py --kd_method pseudo --unlabeled photos/ --teacher_arch light --ema_teacher 0.99   # Mean Teacher
    python train_kd.py --kd_method pseudo --unlabeled photos/ --teacher_arch light --student_init teacher  # ST

The weak and strong views themselves are data (unlabeled.py, dataset.strong_colour_ops); the loss takes the
teacher's view as its teacher_images (losses.py's contract). `pseudo` is a method of losses.py's registry, registered
here when this module is imported (train_kd.py imports it), so its flags, help and checks come from the registry
like every other method's. The EMA teacher (MeanTeacherEMA) is attached to the DistillationLoss, which the engine
asks after every optimizer step (Loss.after_step) and whose teacher it then saves in RUN_last.pth (Loss.carried).
"""
import torch
import torch.nn.functional as F

from losses import METHODS, Flag, Method, register
from model import build_model
from segdata.common import IGNORE_INDEX
from teacher import FrozenTeacher, load_teacher, resolve_teacher_weights
from utils import UserError, is_main

EMA_INITS = ("weights", "student")  # --ema_init: where an EMA teacher starts
STUDENT_INITS = ("random", "teacher")  # --student_init: where the student starts


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
    if args.ema_init != "weights" and not args.ema_teacher:
        raise FlagError(f"--ema_init {args.ema_init} says where an EMA teacher starts: add --ema_teacher DECAY")
    if args.ema_teacher and args.model_name not in (args.teacher_arch, "teacher"):
        raise FlagError(f"--ema_teacher {args.ema_teacher} averages the student into the teacher, so both need one "
                        f"architecture: --model_name {args.model_name} but --teacher_arch {args.teacher_arch}; give "
                        f"--teacher_arch {args.model_name} (or drop --ema_teacher)")


def unlabeled_rows(targets, ignore_index=IGNORE_INDEX):
    """Which images of the batch are unlabelled: those whose mask is ignore everywhere (unlabeled.MixedLoader's; a
    labelled image with no labelled pixel brings the cross-entropy nothing either, and counts as one)."""
    return (targets == ignore_index).flatten(1).all(1)


@register
class PseudoLabel(Method):
    """FixMatch's unlabelled loss (Sohn et al., NeurIPS 2020; per pixel as UniMatch, Yang et al., CVPR 2023, its
    unimatch.py): on the unlabelled images of the batch only, the teacher's answer y = argmax_c p_t and its confidence
    q = max_c p_t (p_t = softmax of its logits); the term is sum over their pixels of [q >= threshold] * CE(student,
    y), divided by the number of their pixels (confident or not). A pixel below the threshold gives no gradient;
    threshold 0 is plain hard-label cross-entropy. Labelled images are left to the cross-entropy on their masks. A
    batch without unlabelled images gives 0. With --unlabeled_views weak_strong the teacher's answer comes from the
    weak view and the student's logits from the strong one."""

    name, part, needs = "pseudo", "pseudo", frozenset({"logits"})
    summary = "cross-entropy on the teacher's confident argmax, unlabelled pixels only (FixMatch)"
    reads_targets = unlabeled_only = True
    flags = (Flag("w_pseudo", 1.0, "pseudo-label weight (FixMatch's lambda_u)", "FixMatch, UniMatch",
                  check=lambda v: v >= 0, why="must be >= 0"),
             Flag("pseudo_threshold", 0.95, "pseudo: a pixel counts when the teacher's max softmax probability is "
                  "at least this (0: every unlabelled pixel)", "FixMatch, UniMatch (0.95)",
                  check=lambda v: 0 <= v <= 1, why="must be in [0, 1]", param="threshold"))

    def term(self, student_logits, teacher_logits, targets):
        rows = unlabeled_rows(targets)
        s, t = student_logits[rows].float(), teacher_logits[rows].float()
        if s.shape[0] == 0:
            return student_logits.float().sum() * 0  # connected to the graph, so DDP finds every gradient
        confidence, labels = F.softmax(t, dim=1).max(1)
        ce = F.cross_entropy(s, labels, reduction="none")
        return (ce * (confidence >= self.threshold)).sum() / ce.numel()


class MeanTeacherEMA:
    """Mean Teacher (Tarvainen and Valpola, NeurIPS 2017): after every optimizer step, each teacher parameter
    t <- decay * t + (1 - decay) * s, s the student's. BatchNorm's running statistics (the floating-point buffers) are
    averaged the same way and num_batches_tracked copied, as timm's ModelEmaV2 does: the teacher stays in eval mode
    (a frozen teacher's statistics never move by its own forward passes), whereas the Mean Teacher code
    (CuriousAI/mean-teacher, update_ema_variables) averages the parameters only and lets its EMA model, run in train
    mode, gather its statistics from its own batches. The teacher stays out of the optimizer and never has a
    gradient; its weights are updated in place under no_grad."""

    def __init__(self, decay):
        if not 0 <= decay < 1:
            raise FlagError(f"--ema_teacher {decay}: the decay must be in [0, 1) (0: off)")
        self.decay = decay

    @staticmethod
    def tensors(net):
        return [*net.parameters(), *net.buffers()]

    @torch.no_grad()
    def step(self, teacher, student):
        """One update of teacher from student (a network, or its DDP / torch.compile wrapper: the same tensors)."""
        ts, ss = self.tensors(teacher), self.tensors(student)
        if len(ts) != len(ss):
            raise FlagError(f"--ema_teacher: the teacher holds {len(ts)} tensors and the student {len(ss)}")
        for t, s in zip(ts, ss):
            if t.is_floating_point():
                t.mul_(self.decay).add_(s.detach().to(t.dtype), alpha=1 - self.decay)
            else:
                t.copy_(s)


def same_layout(a, b):
    """True when two networks hold the same named parameters and buffers, of the same shapes, in the same order."""
    layout = lambda net: [(n, tuple(t.shape)) for n, t in (*net.named_parameters(), *net.named_buffers())]  # noqa
    return layout(a) == layout(b)


def ema_teacher(args, student, num_classes, device):
    """The teacher of --ema_teacher: --teacher_arch from --teacher_weights (as load_teacher finds them) or, with
    --ema_init student, from the student's initial weights; frozen, without the Winograd swap (whose cached filter
    transforms would not follow the averaged weights). Returns (FrozenTeacher, where it started)."""
    if args.ema_init == "student":
        net = build_model("teacher", num_classes, teacher_arch=args.teacher_arch)
        teacher, source = FrozenTeacher(net, winograd=False).to(device), "the student's initial weights"
    else:
        teacher, source = load_teacher(args.teacher_arch, num_classes, args.teacher_weights, args.save_dir, device,
                                       winograd=False)
    if not same_layout(teacher.net, student):
        raise FlagError(f"--ema_teacher: the teacher (--teacher_arch {args.teacher_arch}) and the student "
                        f"(--model_name {args.model_name}) hold different parameters; give them one architecture")
    if args.ema_init == "student":
        teacher.net.load_state_dict(student.state_dict())
    return teacher, f"{source}, then an EMA of the student (decay {args.ema_teacher})"


def init_student(args, student, num_classes):
    """--student_init teacher: the student starts from the teacher's weights (found as load_teacher finds them), as
    self-training's next generation continues from the last (ST++, Yang et al., CVPR 2022, re-trains from scratch;
    Noisy Student, Xie et al., CVPR 2020, may start from the teacher). A resume loads the checkpoint's weights over
    these. The architectures must match parameter for parameter."""
    if args.student_init == "random":
        return
    sd, source = resolve_teacher_weights(args.teacher_arch, num_classes, args.teacher_weights, args.save_dir)
    try:  # strict: every name and shape, as load_teacher loads the teacher
        student.load_state_dict(sd)
    except RuntimeError:
        raise FlagError(f"--student_init teacher: the teacher weights {source} do not fit the student "
                        f"(--model_name {args.model_name}, {num_classes} classes); give weights of the student's "
                        f"architecture (--teacher_weights, --teacher_arch {args.model_name}) or drop --student_init"
                        ) from None
    if is_main():
        print(f"student: starts from the teacher's weights ({source})")
