"""Every loss of this repo: cross-entropy and the distillation methods, each owning its trainable parts.

The contract between a loss and engine.py (DeiT's DistillationLoss: distillation is a loss, not a loop):
  needs_features        True: the engine calls the student as student(x, return_features=True) -> (logits, feats);
                        False: student(x) -> logits
  forward(images, outputs, targets) -> {"loss": total, <part>: detached value, ...}; the engine logs every part
  trainable()           an nn.Module of what the loss trains beside the student (alignment convs ...) or None: the
                        engine adds its parameters to the optimizer, saves and restores its state in RUN_last.pth
                        (never in RUN_best.pth, which holds the student alone), and hands it to wrap_trainable
  wrap_trainable(wrap)  called once under DDP with wrap(module) -> DDP(module): the loss calls what wrap returned,
                        so the gradients of its trainable parts are averaged across processes
The frozen teacher is an attribute of a distillation loss, outside all of that: not trainable, not saved, never
wrapped (teacher/ freezes it).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

REDUCTIONS = ("original", "pixel")


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

    def __init__(self, teacher, alpha=0.5, temperature=2.0, ignore_index=255, reduction="original"):
        super().__init__()
        _check_reduction(reduction)
        self.teacher, self.alpha, self.T, self.reduction = teacher, alpha, temperature, reduction
        self.ce = SegmentationLoss(ignore_index)

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

    def __init__(self, teacher, student_channels, alpha=0.5, ignore_index=255, reduction="original"):
        super().__init__()
        _check_reduction(reduction)
        self.teacher, self.alpha, self.reduction = teacher, alpha, reduction
        self.ce = SegmentationLoss(ignore_index)
        t_channels = teacher.feature_channels[:3]
        if len(student_channels) != 3:
            raise ValueError(f"feature KD needs 3 student feature maps, the student gives {len(student_channels)}")
        self.align = Align(student_channels, t_channels)
        # What forward calls: the DDP wrapper once wrap_trainable has run. Set past nn.Module's registry so that
        # the wrapper adds no second copy of the weights to state_dict().
        object.__setattr__(self, "_align", self.align)

    def trainable(self):
        return self.align

    def wrap_trainable(self, wrap):
        object.__setattr__(self, "_align", wrap(self.align))

    def feature_term(self, student_feats, teacher_feats):
        # Project, then resize: a 1x1 conv commutes with bilinear interpolation, and projecting the stride-32 map
        # before enlarging it to stride 8 costs 16x fewer multiply-adds for the same result.
        aligned = [F.interpolate(a, size=t.shape[-2:], mode="bilinear", align_corners=False)
                   if a.shape[-2:] != t.shape[-2:] else a for a, t in zip(self._align(student_feats), teacher_feats)]
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
