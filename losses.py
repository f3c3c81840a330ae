"""Every loss of this repo: cross-entropy and the distillation methods, each owning its trainable parts.

The contract between a loss and engine.py (DeiT's DistillationLoss: distillation is a loss, not a loop):
  needs_features        True: the engine calls the student as student(x, return_features=True) -> (logits, feats);
                        False: student(x) -> logits; "logits8" (model.LOGITS8): student(x, return_features="logits8")
                        -> (logits, feats, stride-8 logits before upsampling), for CWD and DIST
  forward(images, outputs, targets) -> {"loss": total, <part>: detached value, ...}; the engine logs every part
  trainable()           an nn.Module of what the loss trains beside the student (alignment convs ...) or None: the
                        engine adds its parameters to the optimizer, saves and restores its state in RUN_last.pth
                        (never in RUN_best.pth, which holds the student alone), and hands it to wrap_trainable
  wrap_trainable(wrap)  called once under DDP with wrap(module) -> DDP(module): the loss calls what wrap returned,
                        so the gradients of its trainable parts are averaged across processes
The frozen teacher is an attribute of a distillation loss, outside all of that: not trainable, not saved, never
wrapped (teacher/ freezes it).

Methods combine (train_kd.py --kd_method response,cwd): each method is one class exposing the same small surface,
`part` (its log key), `needs` (what it compares: "logits" at input size, "logits8" at stride 8, or "features"),
`weight`, `term(student_side, teacher_side)` -> a float32 scalar, and trainable() / wrap_trainable() as above.
DistillationLoss asks the teacher once per step for what its methods need and returns
w_ce * CE + sum of weight * term, every term logged. ResponseKDLoss and FeatureKDLoss are also whole losses on their
own (the original's two, unchanged: train_kd.py uses them alone when either is the only method).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import LOGITS8

REDUCTIONS = ("original", "pixel")
LAST_PAIR = 2  # the feature methods' pair: feature KD's third, student stride-32 trunk vs teacher layer3 / light trunk


class Loss(nn.Module):
    needs_features = False

    def trainable(self):
        return None

    def wrap_trainable(self, wrap):  # noqa: ARG002 - nothing to wrap by default
        return None


class SegmentationLoss(Loss):
    """Cross-entropy with the ignore label."""

    def __init__(self, ignore_index=255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, images, outputs, targets):
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        return {"loss": F.cross_entropy(logits.float(), targets, ignore_index=self.ignore_index)}


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"--kd_reduction {reduction}: choose one of {', '.join(REDUCTIONS)}")


class ResponseKDLoss(Loss):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE  (Hinton et al., 2015).

    reduction "original" (the default, the original project's): nn.KLDivLoss(reduction="batchmean") on the
    (N, C, H, W) logits, i.e. the KL summed over classes and pixels and divided by N, so the term grows with the
    image size (H*W times the per-pixel mean). "pixel": summed over classes and averaged over all pixels (ignored
    ones too, as CIRKD and MMRazor do: the teacher has an opinion there), a scale independent of the image size.
    """

    part, needs = "kd", "logits"  # as a method of DistillationLoss: alpha * kd_term

    def __init__(self, teacher, alpha=0.5, temperature=2.0, ignore_index=255, reduction="original"):
        super().__init__()
        _check_reduction(reduction)
        self.teacher, self.alpha, self.T, self.reduction = teacher, alpha, temperature, reduction
        self.ce = SegmentationLoss(ignore_index)

    @property
    def weight(self):
        return self.alpha

    def term(self, student_logits, teacher_logits):
        return self.kd_term(student_logits, teacher_logits)

    def kd_term(self, student_logits, teacher_logits):
        s, t = student_logits.float(), teacher_logits.float()
        kl = F.kl_div(F.log_softmax(s / self.T, dim=1), F.log_softmax(t / self.T, dim=1), reduction="sum",
                      log_target=True)
        per = s.shape[0] if self.reduction == "original" else s.numel() // s.shape[1]
        return kl * (self.T * self.T / per)

    def forward(self, images, outputs, targets):
        ce = self.ce(images, outputs, targets)["loss"]
        if self.alpha == 0:  # the scratch recipe exactly: the teacher is not even run
            return {"loss": ce, "ce": ce.detach(), "kd": torch.zeros_like(ce)}
        kd = self.kd_term(outputs, self.teacher(images, need="logits"))
        return {"loss": self.alpha * kd + (1 - self.alpha) * ce, "ce": ce.detach(), "kd": kd.detach()}


def _to_grid(x, size):
    """Bilinear resize to `size` (H, W) when the grids differ (odd input sizes can round the two strides apart)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear",
                                                                        align_corners=False)


class Align(nn.Module):
    """1x1 convs that map each student feature map to the width of its teacher feature map."""

    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels))

    def forward(self, feats):
        return [conv(f) for conv, f in zip(self.convs, feats)]


class FeatureKDLoss(Loss):
    """alpha * sum_k (1 - cos(align_k(s_k), t_k)) + (1 - alpha) * CE, the original's feature distillation.

    Pairs: student stride-4, stride-8 and last-trunk features with teacher layer1, layer2, layer3. Student
    features are resized (bilinear) to the teacher's size, projected by a 1x1 conv to the teacher's width, and
    compared by cosine similarity over channels at every pixel, averaged over pixels. reduction "original" (the
    default) adds the three pair terms, as the original did; "pixel" averages them (CIRKD's and MMRazor's habit).
    The alignment convs are this loss's trainable part, not the student's.
    """

    needs_features = True
    part, needs = "feat", "features"  # as a method of DistillationLoss: alpha * feature_term

    def __init__(self, teacher, student_channels, alpha=0.5, ignore_index=255, reduction="original",
                 teacher_channels=None):
        super().__init__()
        _check_reduction(reduction)
        self.teacher, self.alpha, self.reduction = teacher, alpha, reduction
        self.ce = SegmentationLoss(ignore_index)
        t_channels = tuple(teacher_channels or teacher.feature_channels)[:3]
        if len(student_channels) != 3:
            raise ValueError(f"feature KD needs 3 student feature maps, the student gives {len(student_channels)}")
        self.align = Align(student_channels, t_channels)
        # What forward calls: the DDP wrapper once wrap_trainable has run. Set past nn.Module's registry so that
        # the wrapper adds no second copy of the weights to state_dict().
        object.__setattr__(self, "_align", self.align)

    @property
    def weight(self):
        return self.alpha

    def trainable(self):
        return self.align

    def wrap_trainable(self, wrap):
        object.__setattr__(self, "_align", wrap(self.align))

    def term(self, student_feats, teacher_feats):
        return self.feature_term(student_feats, teacher_feats)

    def feature_term(self, student_feats, teacher_feats):
        # Project, then resize: a 1x1 conv commutes with bilinear interpolation, and projecting the stride-32 map
        # before enlarging it to stride 8 costs 16x fewer multiply-adds for the same result.
        aligned = [_to_grid(a, t.shape[-2:]) for a, t in zip(self._align(student_feats), teacher_feats)]
        terms = torch.stack([(1 - F.cosine_similarity(a.float(), t.float(), dim=1)).mean()
                             for a, t in zip(aligned, teacher_feats)])
        return terms.sum() if self.reduction == "original" else terms.mean()

    def forward(self, images, outputs, targets):
        logits, feats = outputs
        ce = self.ce(images, logits, targets)["loss"]
        if self.alpha == 0:
            return {"loss": ce, "ce": ce.detach(), "feat": torch.zeros_like(ce)}
        feat = self.feature_term(feats, self.teacher(images, need="features"))
        return {"loss": self.alpha * feat + (1 - self.alpha) * ce, "ce": ce.detach(), "feat": feat.detach()}


# --------------------------------------------------------------------------- the methods the field uses
class Term(Loss):
    """One distillation method inside DistillationLoss (see the module docstring): part, needs, weight, term();
    trainable() and wrap_trainable() as for a whole loss."""

    part, needs = "", "logits8"

    def __init__(self, weight):
        super().__init__()
        self.weight = weight


class ChannelWiseKD(Term):
    """CWD (Shu et al., ICCV 2021; CIRKD losses/cwd.py CriterionCWD, MMRazor ChannelWiseDivergence).

    Stride-8 logits (B, K, h, w) as B*K rows of h*w positions; softmax over the positions of each channel at
    temperature tau; KL(teacher || student) summed over positions, divided by B*K, times tau^2."""

    part = "cwd"

    def __init__(self, weight=3.0, tau=4.0):
        super().__init__(weight)
        self.tau = tau

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


class DISTKD(Term):
    """DIST (Huang et al., NeurIPS 2022; DIST_KD segmentation/losses/dist_kd.py).

    p = softmax(z / tau) over classes as N = B*h*w rows of K columns, for student and teacher;
    inter = 1 - mean over rows of the Pearson correlation of the two rows (each pixel's class ranking),
    intra = 1 - mean over columns of the Pearson correlation of the two columns (each class across pixels);
    loss = tau^2 (beta inter + gamma intra). Under DDP the columns hold this process's pixels only (as in the
    reference): intra is computed per process, and the gradients are averaged."""

    part = "dist"

    def __init__(self, weight=1.0, tau=1.0, beta=1.0, gamma=1.0):
        super().__init__(weight)
        self.tau, self.beta, self.gamma = tau, beta, gamma

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


class AttentionTransfer(Term):
    """AT (Zagoruyko and Komodakis, ICLR 2017; CIRKD losses/at.py) on the last feature pair:
    mean over images and positions of (a(f_s) - a(f_t))^2, the student's map resized to the teacher's grid."""

    part, needs = "at", "features"

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


class PairwiseAffinityKD(Term):
    """Pixel-pair affinity across the images of the batch (CIRKD losses/cirkd_mini_batch.py, its mini-batch term).

    The last feature of each network, average-pooled to one grid of P <= max_positions positions, L2-normalised over
    channels; for every pair (i, j) of images, S = f_i^T f_j (P x P) for teacher and student; KL between the row
    softmaxes at temperature tau, averaged over the P rows (batchmean), summed over the B^2 pairs, divided by B^2.
    The widths may differ: each network's S is its own."""

    part, needs = "affinity", "features"

    def __init__(self, weight=1.0, tau=0.1, max_positions=1024):
        super().__init__(weight)
        self.tau, self.max_positions = tau, max_positions

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


class MaskedGenerativeKD(Term):
    """MGD (Yang et al., ECCV 2022; the feature-reconstruction part of Af-DCD) on the last feature pair.

    A random mask keeps `keep` of the teacher grid's positions (all channels of a kept position), zeroing the rest;
    the generator (MGDGenerator) maps the masked, projected student feature to the teacher's feature; loss = the
    squared error summed over all elements, divided by B. The mask is drawn from the global generator, whose state
    the checkpoints save, so a resumed run draws the same masks. hidden: the generator's middle width (0: the
    teacher's width, as the paper; 256 by default to keep two 3x3 convs at 1024 channels on a stride-8 grid cheap)."""

    part, needs = "mgd", "features"

    def __init__(self, student_channels, teacher_channels, weight=None, keep=0.25, hidden=256):
        super().__init__(mgd_default_weight(teacher_channels) if weight is None else weight)
        self.keep = keep
        self.generator = MGDGenerator(student_channels, teacher_channels, hidden)
        object.__setattr__(self, "_generator", self.generator)  # the DDP wrapper once wrapped (see FeatureKDLoss)

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


class DistillationLoss(Loss):
    """w_ce * CE + sum over methods of weight * term, the teacher asked once per step for what the methods need.

    methods: {name: method} (the classes above, ResponseKDLoss and FeatureKDLoss included, built without a teacher).
    Returns {"loss", "ce", <each method's part>}. trainable(): every method's trainable part, by method name."""

    def __init__(self, teacher, methods, w_ce=1.0, ignore_index=255):
        super().__init__()
        self.teacher, self.w_ce = teacher, w_ce
        self.ce = SegmentationLoss(ignore_index)
        self.methods = nn.ModuleDict(methods)
        needs = {m.needs for m in self.methods.values()}
        self.teacher_needs = tuple(n for n in ("logits", "logits8", "features") if n in needs)
        self.needs_features = LOGITS8 if "logits8" in needs else "features" in needs
        parts = {name: m.trainable() for name, m in self.methods.items() if m.trainable() is not None}
        # The same modules as under self.methods: kept off nn.Module's registry so state_dict() holds them once.
        object.__setattr__(self, "_trainable", nn.ModuleDict(parts) if parts else None)

    def trainable(self):
        return self._trainable

    def wrap_trainable(self, wrap):
        for m in self.methods.values():  # one DDP wrapper per part, each called once per step
            m.wrap_trainable(wrap)

    def forward(self, images, outputs, targets):
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        student = {"logits": logits}
        if isinstance(outputs, tuple):
            student["features"] = outputs[1]
            if len(outputs) > 2:
                student["logits8"] = outputs[2]
        teacher = dict(zip(self.teacher_needs, self.teacher(images, need=self.teacher_needs)))
        ce = self.ce(images, logits, targets)["loss"]
        total, parts = self.w_ce * ce, {"ce": ce.detach()}
        for m in self.methods.values():
            value = m.term(student[m.needs], teacher[m.needs])
            total = total + m.weight * value
            parts[m.part] = value.detach()
        return {"loss": total, **parts}
