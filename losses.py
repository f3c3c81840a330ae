"""Every loss of this repo: cross-entropy, and the distillation methods in one registry.

The contract between a loss and engine.py (DeiT's DistillationLoss: distillation is a loss, not a loop):
  needs                 what the loss reads from the network, a frozenset of model.OUTPUTS names: "logits",
                        "features" (its feature maps), "logits8" (its stride-8 logits before upsampling); the engine
                        calls model(images, needs=loss.needs) and hands over the answer, {name: output} (model.py's
                        forward convention)
  forward(images, outputs, targets, teacher_images=None) -> {"loss": total, <part>: detached value, ...}; the engine
                        logs every part; teacher_images: the teacher's own view of the batch when the loader gives
                        one (unlabeled.py, --unlabeled_views weak_strong), else the teacher sees `images`
  trainable()           an nn.Module of what the loss trains beside the network (alignment convs ...) or None: the
                        engine adds its parameters to the optimizer and saves them in RUN_last.pth (never in
                        RUN_best.pth, which holds the network alone)
  wrap_trainable(wrap)  called once under DDP with wrap(module) -> DDP(module), so the gradients of those parts are
                        averaged across processes
  after_step(model)     called after every optimizer step (an EMA teacher follows the student there: semi.py)
  carried()             an nn.Module whose state moves outside the optimizer (an EMA teacher) or None: saved in
                        RUN_last.pth beside the trainable parts and restored by --resume

A distillation method is one class here, registered with @register. It declares
  name       its --kd_method name;                 part   its log key (train_<part> in RUN_log.jsonl)
  needs      the outputs it compares, a frozenset of OUTPUTS (its term gets that output of each network; a method
             that needs several gets dicts keyed by name)
  flags      its parameters, each declared once as a Flag(name, default, help, source of the default, param=...):
             --NAME on the command line, and the keyword `param` of its constructor, whose default is the Flag's
             (Method.__init__ sets self.<param> from the Flag list); two methods may share a Flag object (response
             and feature share --alpha and --kd_reduction)
  weighs_ce  True for the original's two: the method is weighted alpha and the cross-entropy 1 - alpha
  reads_targets  True: term also takes the batch's masks, term(student_side, teacher_side, targets) (semi.py's
             pseudo labels find the unlabelled images there: their masks are all ignore)
  unlabeled_only True: the method learns from --unlabeled images alone (train_kd.py refuses it without them)
and implements term(student_side, teacher_side) -> a float32 scalar and, when it reads the networks' widths or trains
something beside the student, an __init__ that takes them first, a from_args(args, student, teacher) that passes them,
and trainable() / wrap_trainable(). train_kd.py builds its flags, their checks, its help and its list of methods from
METHODS, so adding a method touches no other file.

DistillationLoss asks the frozen teacher once per step for what its methods need and returns
w_ce * CE + sum of weight * term, every term logged; w_ce = 1 - alpha when a method that weighs_ce is listed, else 1.
The teacher is an attribute of that loss, outside everything trainable: not trained, not saved, never wrapped.
"""
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import OUTPUTS, feature_channels, probe_cache
from utils import UserError

REDUCTIONS = ("original", "pixel")
LAST_PAIR = 2  # the feature methods' pair: feature KD's third, student stride-32 trunk vs teacher layer3 / light trunk


class LossError(UserError):
    """A method that cannot be built for these networks or flags (the command line prints it as one line)."""


# --------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Flag:
    """One parameter of a method, declared once: --NAME with this default and help, and the keyword `param` of the
    method's constructor (self.<param> once built); `source` says where the default comes from; check(value) -> bool
    with `why` the message when it is False; choices as argparse's."""
    name: str
    default: Any
    help: str
    source: str = ""
    type: Callable = float
    check: Optional[Callable[[Any], bool]] = None
    why: str = ""
    choices: Optional[tuple] = None
    param: str = "weight"


METHODS = {}  # --kd_method name -> Method subclass, in registration order


def register(cls):
    """Class decorator: add a Method subclass to METHODS under cls.name."""
    if not cls.name or cls.name in METHODS:
        raise ValueError(f"register: method name {cls.name!r} is empty or taken")
    if not cls.part or not cls.needs or not set(cls.needs) <= set(OUTPUTS):
        raise ValueError(f"register: {cls.__name__} needs a part (log key) and needs drawn from {OUTPUTS}")
    for f in cls.flags:
        other = all_flags().get(f.name)
        if other is not None and other is not f:
            raise ValueError(f"register: --{f.name} of {cls.name} is declared by another method with other settings")
    METHODS[cls.name] = cls
    return cls


def all_flags():
    """{flag name: Flag} over every registered method, each shared flag once."""
    return {f.name: f for cls in METHODS.values() for f in cls.flags}


class Loss(nn.Module):
    needs = frozenset()

    def trainable(self):
        return None

    def wrap_trainable(self, wrap):  # noqa: ARG002 - nothing to wrap by default
        return None

    def after_step(self, model):  # noqa: ARG002 - nothing follows the student by default
        return None

    def carried(self):
        return None


class Method(Loss):
    """One distillation method (see the module docstring): weight * term(student_side, teacher_side).

    Its parameters are its flags: Method(*values, **params) sets self.<param> of each Flag, from the values in the
    order of `flags`, or by param name, else the Flag's default."""

    name, part, summary = "", "", ""
    flags = ()
    weighs_ce = reads_targets = unlabeled_only = False

    def __init__(self, *values, **params):
        super().__init__()
        names = [f.param for f in self.flags]
        if len(values) > len(names) or set(params) - set(names) or set(params) & set(names[:len(values)]):
            raise TypeError(f"{type(self).__name__}: takes {', '.join(names)} (by position or name, each once); got "
                            f"{len(values)} value(s) and {', '.join(params) or 'no names'}")
        given = {**dict(zip(names, values)), **params}
        for f in self.flags:
            setattr(self, f.param, given.get(f.param, f.default))

    @classmethod
    def flag_values(cls, args):
        """{param: the value of its flag in args}: the constructor's keywords from the command line."""
        return {f.param: getattr(args, f.name) for f in cls.flags}

    @classmethod
    def from_args(cls, args, student, teacher):  # noqa: ARG003 - a method that reads the networks' widths overrides
        return cls(**cls.flag_values(args))

    def term(self, student_side, teacher_side):
        raise NotImplementedError


def nonneg(v):
    return v is None or v >= 0


def positive(v):
    return v > 0


ALPHA = Flag("alpha", 0.5, "response/feature: weight of their terms, in [0, 1]; CE is weighted 1 - alpha when either "
             "is listed (else 1)", "the original train_kd.py", check=lambda v: 0.0 <= v <= 1.0,
             why="must be in [0, 1] (the weight of the distillation term)", param="weight")
KD_REDUCTION = Flag("kd_reduction", "original",
                    "original: the original's scale (response: KL summed over classes and pixels, divided by the "
                    "batch size, times T^2; feature: the three pair terms added); pixel: response KL averaged over "
                    "pixels, feature pair terms averaged (CIRKD/MMRazor; no image-size dependence)",
                    "the original", type=str, choices=REDUCTIONS, param="reduction")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise LossError(f"--kd_reduction {reduction}: choose one of {', '.join(REDUCTIONS)}")


def _to_grid(x, size):
    """Bilinear resize to `size` (H, W) when the grids differ (odd input sizes can round the two strides apart)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear",
                                                                        align_corners=False)


def _trainable_attr(module, name):
    """The callable behind `name`: the DDP wrapper once wrap_trainable has run, else the module. Kept past
    nn.Module's registry so that the wrapper adds no second copy of the weights to state_dict()."""
    object.__setattr__(module, "_" + name, getattr(module, name))


# --------------------------------------------------------------------------- the original's two
class SegmentationLoss(Loss):
    """Cross-entropy with the ignore label."""

    def __init__(self, ignore_index=255):
        super().__init__()
        self.ignore_index = ignore_index

    needs = frozenset({"logits"})

    def forward(self, images, outputs, targets, teacher_images=None):  # noqa: ARG002 - the contract's arguments
        return {"loss": F.cross_entropy(outputs["logits"].float(), targets, ignore_index=self.ignore_index)}


@register
class ResponseKD(Method):
    """T^2 * KL(teacher_T || student_T) on the logits (Hinton et al., 2015), weighted alpha.

    reduction "original" (the default, the original project's): nn.KLDivLoss(reduction="batchmean") on the
    (N, C, H, W) logits, i.e. the KL summed over classes and pixels and divided by N, so the term grows with the
    image size (H*W times the per-pixel mean). "pixel": summed over classes and averaged over all pixels (ignored
    ones too, as CIRKD and MMRazor do: the teacher has an opinion there), a scale independent of the image size.
    """

    name, part, needs, weighs_ce = "response", "kd", frozenset({"logits"}), True
    summary = "KL on the logits (the original's)"
    flags = (ALPHA, Flag("temperature", 2.0, "softmax temperature of response KD", "the original",
                         check=positive, why="must be > 0", param="temperature"), KD_REDUCTION)

    def __init__(self, *values, **params):
        super().__init__(*values, **params)
        _check_reduction(self.reduction)

    def term(self, student_logits, teacher_logits):
        s, t, T = student_logits.float(), teacher_logits.float(), self.temperature
        kl = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1), reduction="sum", log_target=True)
        per = s.shape[0] if self.reduction == "original" else s.numel() // s.shape[1]
        return kl * (T * T / per)


class Align(nn.Module):
    """1x1 convs that map each student feature map to the width of its teacher feature map."""

    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels))

    def forward(self, feats):
        return [conv(f) for conv, f in zip(self.convs, feats)]


@register
class FeatureKD(Method):
    """sum_k (1 - cos(align_k(s_k), t_k)), the original's feature distillation, weighted alpha.

    Pairs: the first three feature maps of each network (the light student's stride-4, stride-8 and last-trunk
    features with a ResNet teacher's layer1, layer2, layer3; a network's feature_taps in their order). Student
    features are projected by a 1x1 conv to the teacher's width, resized (bilinear) to the teacher's size, and
    compared by cosine similarity over channels at every pixel, averaged over pixels. reduction "original" (the
    default) adds the three pair terms, as the original did; "pixel" averages them (CIRKD's and MMRazor's habit).
    The alignment convs are this method's trainable part, not the student's.
    """

    name, part, needs, weighs_ce = "feature", "feat", frozenset({"features"}), True
    summary = "cosine of aligned features (the original's)"
    flags = (ALPHA, KD_REDUCTION)

    def __init__(self, student_channels, teacher_channels, *values, **params):
        super().__init__(*values, **params)
        _check_reduction(self.reduction)
        if len(student_channels) < 3 or len(teacher_channels) < 3:
            raise LossError(f"feature KD needs 3 feature maps of each network, got {len(student_channels)} (student) "
                            f"and {len(teacher_channels)} (teacher)")
        self.align = Align(tuple(student_channels)[:3], tuple(teacher_channels)[:3])
        _trainable_attr(self, "align")

    @classmethod
    def from_args(cls, args, student, teacher):
        return cls(feature_channels(student), teacher.feature_channels(), **cls.flag_values(args))

    def trainable(self):
        return self.align

    def wrap_trainable(self, wrap):
        object.__setattr__(self, "_align", wrap(self.align))

    def term(self, student_feats, teacher_feats):
        # Project, then resize: a 1x1 conv commutes with bilinear interpolation, and projecting the stride-32 map
        # before enlarging it to stride 8 costs 16x fewer multiply-adds for the same result.
        aligned = [_to_grid(a, t.shape[-2:]) for a, t in zip(self._align(student_feats), teacher_feats)]
        terms = torch.stack([(1 - F.cosine_similarity(a.float(), t.float(), dim=1)).mean()
                             for a, t in zip(aligned, teacher_feats)])
        return terms.sum() if self.reduction == "original" else terms.mean()


# --------------------------------------------------------------------------- the methods the field uses
@register
class ChannelWiseKD(Method):
    """CWD (Shu et al., ICCV 2021; CIRKD losses/cwd.py CriterionCWD, MMRazor ChannelWiseDivergence).

    Stride-8 logits (B, K, h, w) as B*K rows of h*w positions; softmax over the positions of each channel at
    temperature tau; KL(teacher || student) summed over positions, divided by B*K, times tau^2."""

    name, part, needs = "cwd", "cwd", frozenset({"logits8"})
    summary = "channel-wise KL on the stride-8 logits"
    flags = (Flag("w_cwd", 3.0, "CWD weight", "the paper and CIRKD", check=nonneg, why="must be >= 0"),
             Flag("cwd_tau", 4.0, "CWD temperature", "the paper and CIRKD", check=positive, why="must be > 0",
                  param="tau"))

    def term(self, student_logits, teacher_logits):
        t = teacher_logits.float()
        s = _to_grid(student_logits.float(), t.shape[-2:])
        b, k = t.shape[:2]
        ls = F.log_softmax(s.reshape(b * k, -1) / self.tau, dim=1)
        lt = F.log_softmax(t.reshape(b * k, -1) / self.tau, dim=1)
        return F.kl_div(ls, lt, reduction="sum", log_target=True) * (self.tau ** 2 / (b * k))


def _pearson_rows(a, b, eps=1e-8):
    """Pearson correlation of each row of a with the same row of b (DIST_KD's pearson_correlation, its eps)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@register
class DISTKD(Method):
    """DIST (Huang et al., NeurIPS 2022; DIST_KD segmentation/losses/dist_kd.py).

    p = softmax(z / tau) over classes as N = B*h*w rows of K columns, for student and teacher;
    inter = 1 - mean over rows of the Pearson correlation of the two rows (each pixel's class ranking),
    intra = 1 - mean over columns of the Pearson correlation of the two columns (each class across pixels);
    loss = tau^2 (beta inter + gamma intra). Under DDP the columns hold this process's pixels only (as in the
    reference): intra is computed per process, and the gradients are averaged."""

    name, part, needs = "dist", "dist", frozenset({"logits8"})
    summary = "Pearson correlations on the stride-8 logits"
    flags = (Flag("w_dist", 1.0, "DIST weight", "the paper", check=nonneg, why="must be >= 0"),
             Flag("dist_tau", 1.0, "DIST temperature", "the paper", check=positive, why="must be > 0", param="tau"),
             Flag("dist_beta", 1.0, "DIST inter-class (per pixel) weight", "the paper", param="beta"),
             Flag("dist_gamma", 1.0, "DIST intra-class (per class) weight", "the paper", param="gamma"))

    def term(self, student_logits, teacher_logits):
        t = teacher_logits.float()
        s = _to_grid(student_logits.float(), t.shape[-2:])
        k = t.shape[1]
        ps = F.softmax(s / self.tau, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
        pt = F.softmax(t / self.tau, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
        inter = 1 - _pearson_rows(ps, pt).mean()
        intra = 1 - _pearson_rows(ps.t(), pt.t()).mean()
        return self.tau ** 2 * (self.beta * inter + self.gamma * intra)


def attention_map(f, size=None):
    """AT's a(f): the mean over channels of f^2, resized (bilinear) to `size` if given, flattened, L2-normalised
    per image -> (B, h*w)."""
    a = f.float().pow(2).mean(1, keepdim=True)
    if size is not None:
        a = _to_grid(a, size)
    return F.normalize(a.flatten(1), dim=1)


@register
class AttentionTransfer(Method):
    """AT (Zagoruyko and Komodakis, ICLR 2017; CIRKD losses/at.py) on the last feature pair:
    mean over images and positions of (a(f_s) - a(f_t))^2, the student's map resized to the teacher's grid."""

    name, part, needs = "at", "at", frozenset({"features"})
    summary = "attention maps of the last feature pair"
    flags = (Flag("w_at", 1000.0, "attention transfer weight (the AT paper's beta)", "the AT paper's beta",
                  check=nonneg, why="must be >= 0"),)

    def term(self, student_feats, teacher_feats):
        t = teacher_feats[LAST_PAIR]
        return (attention_map(student_feats[LAST_PAIR], t.shape[-2:]) - attention_map(t)).pow(2).mean()


def affinity_grid(student_hw, teacher_hw, max_positions):
    """The grid both maps are average-pooled to: the smaller of the two per side, halved (rounding up) until it
    holds at most max_positions positions (the pair matrices are positions^2)."""
    h, w = min(student_hw[0], teacher_hw[0]), min(student_hw[1], teacher_hw[1])
    while h * w > max_positions:
        h, w = -(-h // 2), -(-w // 2)
    return h, w


@register
class PairwiseAffinityKD(Method):
    """Pixel-pair affinity across the images of the batch (CIRKD losses/cirkd_mini_batch.py, its mini-batch term).

    The last feature of each network, average-pooled to one grid of P <= max_positions positions, L2-normalised over
    channels; for every pair (i, j) of images, S = f_i^T f_j (P x P) for teacher and student; KL between the row
    softmaxes at temperature tau, averaged over the P rows (batchmean), summed over the B^2 pairs, divided by B^2.
    The widths may differ: each network's S is its own."""

    name, part, needs = "affinity", "affinity", frozenset({"features"})
    summary = "pixel-pair similarities across the batch, last feature pair"
    flags = (Flag("w_affinity", 1.0, "pixel-pair affinity weight", "CIRKD", check=nonneg, why="must be >= 0"),
             Flag("affinity_tau", 0.1, "affinity softmax temperature", "CIRKD", check=positive, why="must be > 0",
                  param="tau"),
             Flag("affinity_positions", 1024, "affinity: at most this many pooled positions per image (its matrices "
                  "are positions^2)", "this repo (memory)", type=int, check=lambda v: v >= 1, why="must be >= 1",
                  param="max_positions"))

    def term(self, student_feats, teacher_feats):
        s, t = student_feats[LAST_PAIR].float(), teacher_feats[LAST_PAIR].float()
        grid = affinity_grid(s.shape[-2:], t.shape[-2:], self.max_positions)
        s = F.normalize(F.adaptive_avg_pool2d(s, grid).flatten(2), dim=1)  # (B, C_s, P)
        t = F.normalize(F.adaptive_avg_pool2d(t, grid).flatten(2), dim=1)  # (B, C_t, P)
        b, p = s.shape[0], s.shape[2]
        total = s.new_zeros(())
        # float32 similarities even under --amp (autocast would run the products in half precision); one image
        # against the batch at a time: B * P^2 values in memory, not B^2 * P^2.
        with torch.autocast(s.device.type, enabled=False):
            for i in range(b):
                ss = torch.einsum("cp,bcq->bpq", s[i], s) / self.tau
                tt = torch.einsum("cp,bcq->bpq", t[i], t) / self.tau
                total = total + F.kl_div(F.log_softmax(ss, dim=-1), F.log_softmax(tt, dim=-1), reduction="sum",
                                         log_target=True)
        return total / (p * b * b)


class MGDGenerator(nn.Module):
    """MGD's trainable part: a 1x1 projection of the student's feature to the teacher's width, resized to the
    teacher's grid (projected first: a 1x1 conv commutes with bilinear interpolation, and the stride-32 map is 16x
    smaller than a stride-8 one), masked, then conv3x3 - ReLU - conv3x3 back to the teacher's width."""

    def __init__(self, student_channels, teacher_channels, hidden=256):
        super().__init__()
        hidden = hidden or teacher_channels
        self.project = nn.Conv2d(student_channels, teacher_channels, 1)
        self.generate = nn.Sequential(nn.Conv2d(teacher_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(hidden, teacher_channels, 3, padding=1))

    def forward(self, f, size, mask):
        return self.generate(_to_grid(self.project(f), size) * mask)


def mgd_default_weight(teacher_channels):
    """MGD's segmentation weight, 2e-5 for a 512-channel feature, per channel of the teacher layer used: the summed
    error grows with the width, so 2e-5 * 512 / C (1e-5 for ResNet layer3, 8e-6 for the light teacher's trunk)."""
    return 2e-5 * 512 / teacher_channels


@register
class MaskedGenerativeKD(Method):
    """MGD (Yang et al., ECCV 2022; the feature-reconstruction part of Af-DCD) on the last feature pair.

    A random mask keeps `keep` of the teacher grid's positions (all channels of a kept position), zeroing the rest;
    the generator (MGDGenerator) maps the masked, projected student feature to the teacher's feature; loss = the
    squared error summed over all elements, divided by B. The mask is drawn from the global generator, whose state
    the checkpoints save, so a resumed run draws the same masks. hidden: the generator's middle width (0: the
    teacher's width, as the paper; 256 by default to keep two 3x3 convs at 1024 channels on a stride-8 grid cheap)."""

    name, part, needs = "mgd", "mgd", frozenset({"features"})
    summary = "masked generation of the last teacher feature"
    flags = (Flag("w_mgd", None, "MGD weight (default: MGD's 2e-5 at 512 channels, per teacher channel: "
                  "2e-5 * 512 / C, 1e-5 for ResNet layer3, 8e-6 for the light teacher)", "the paper, per channel",
                  check=nonneg, why="must be >= 0"),
             Flag("mgd_keep", 0.25, "MGD: share of the positions the mask keeps", "this repo",
                  check=lambda v: 0 < v <= 1, why="must be in (0, 1]", param="keep"),
             Flag("mgd_hidden", 256, "MGD generator's middle width (0: the teacher's width, as the paper)",
                  "this repo (speed)", type=int, check=lambda v: v >= 0, why="must be >= 0 (0: the teacher's width)",
                  param="hidden"))

    def __init__(self, student_channels, teacher_channels, *values, **params):
        super().__init__(*values, **params)
        if self.weight is None:
            self.weight = mgd_default_weight(teacher_channels)
        self.generator = MGDGenerator(student_channels, teacher_channels, self.hidden)
        _trainable_attr(self, "generator")

    @classmethod
    def from_args(cls, args, student, teacher):
        return cls(feature_channels(student)[LAST_PAIR], teacher.feature_channels()[LAST_PAIR],
                   **cls.flag_values(args))

    def trainable(self):
        return self.generator

    def wrap_trainable(self, wrap):
        object.__setattr__(self, "_generator", wrap(self.generator))

    def term(self, student_feats, teacher_feats):
        t = teacher_feats[LAST_PAIR]
        b, _, h, w = t.shape
        mask = (torch.rand(b, 1, h, w, device=t.device) < self.keep).float()
        generated = self._generator(student_feats[LAST_PAIR], (h, w), mask)
        return (generated.float() - t.float()).pow(2).sum() / b


# --------------------------------------------------------------------------- the loss the engine runs
class DistillationLoss(Loss):
    """w_ce * CE + sum over methods of weight * term, the teacher asked once per step for what the methods need.

    methods: {name: Method}. Returns {"loss", "ce", <each method's part>}. A method weighted 0 is not computed (its
    part is logged as 0), and when every method is, the teacher is not run: the cross-entropy run exactly.
    trainable(): every method's trainable part, by method name. ema: None, or what moves the teacher after every
    optimizer step, ema.step(teacher, student) (semi.MeanTeacherEMA); the teacher is then this loss's carried()."""

    ema = None

    def __init__(self, teacher, methods, w_ce=1.0, ignore_index=255):
        super().__init__()
        self.teacher, self.w_ce = teacher, w_ce
        self.ce = SegmentationLoss(ignore_index)
        self.methods = nn.ModuleDict(methods)
        self.needs = frozenset({"logits"}).union(*(m.needs for m in self.methods.values()))
        parts = {name: m.trainable() for name, m in self.methods.items() if m.trainable() is not None}
        # The same modules as under self.methods: kept off nn.Module's registry so state_dict() holds them once.
        object.__setattr__(self, "_trainable", nn.ModuleDict(parts) if parts else None)

    def trainable(self):
        return self._trainable

    def wrap_trainable(self, wrap):
        for m in self.methods.values():  # one DDP wrapper per part, each called once per step
            m.wrap_trainable(wrap)

    def after_step(self, model):
        if self.ema is not None:
            self.ema.step(self.teacher, model)

    def carried(self):
        return self.teacher if self.ema is not None else None

    @staticmethod
    def _side(outputs, needs):
        return outputs[next(iter(needs))] if len(needs) == 1 else {n: outputs[n] for n in needs}

    def forward(self, images, outputs, targets, teacher_images=None):
        active = [m for m in self.methods.values() if m.weight != 0]
        asked = tuple(n for n in OUTPUTS if any(n in m.needs for m in active))
        teacher = self.teacher(images if teacher_images is None else teacher_images, needs=asked) if asked else {}
        ce = self.ce(images, outputs, targets)["loss"]
        total, parts = self.w_ce * ce, {"ce": ce.detach()}
        for m in self.methods.values():
            if m.weight == 0:
                parts[m.part] = torch.zeros_like(ce)
                continue
            sides = self._side(outputs, m.needs), self._side(teacher, m.needs)
            value = m.term(*sides, targets) if m.reads_targets else m.term(*sides)
            total = total + m.weight * value
            parts[m.part] = value.detach()
        return {"loss": total, **parts}


def build_loss(names, teacher, student, args, ignore_index=255):
    """The DistillationLoss of the methods `names` (--kd_method), each built from its flags in args."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise LossError(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    methods = {}
    with probe_cache():  # each network probed once, however many methods ask its widths
        for name in names:
            cls = METHODS[name]
            if "features" in cls.needs and (maps := len(feature_channels(student))) < 3:
                raise LossError(f"--model_name {getattr(args, 'model_name', 'the student')}: --kd_method {name} "
                                f"needs three feature maps (shallow to deep), and the student exposes {maps}: give "
                                "its module a feature_taps attribute naming three submodules (model.py, HookedSegNet)")
            methods[name] = cls.from_args(args, student, teacher)
    w_ce = 1 - args.alpha if any(m.weighs_ce for m in methods.values()) else 1.0
    return DistillationLoss(teacher, methods, w_ce, ignore_index)


def distillation_loss(teacher, student, methods, ignore_index=255, **flags):
    """For a training loop of your own: the loss of `methods` ("response,cwd" or a list) from a frozen teacher
    (teacher.FrozenTeacher) to a student (a network of model.py's forward convention), every method flag at its
    default unless given by name (alpha=0.3, w_cwd=3.0 ...). Call it as
    loss(images, student(images, needs=loss.needs), masks) -> {"loss": total, <part>: value, ...}."""
    names = methods.split(",") if isinstance(methods, str) else list(methods)
    known = all_flags()
    unknown = sorted(set(flags) - set(known))
    if unknown:
        raise LossError(f"unknown flag(s) {', '.join(unknown)}; the methods take {', '.join(known)}")
    args = SimpleNamespace(**{**{name: f.default for name, f in known.items()}, **flags})
    return build_loss([n.strip() for n in names], teacher, student, args, ignore_index)
