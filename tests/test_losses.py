import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from losses import DistillationLoss, FeatureKD, ResponseKD, SegmentationLoss
from model import feature_channels
from model import TappedSegNet
from teacher import FrozenTeacher


class FixedTeacher(nn.Module):
    """Returns given logits / features; counts its calls."""

    feature_channels = (4, 6, 8, 10)

    def __init__(self, logits=None, feats=None):
        super().__init__()
        self.logits, self.feats, self.calls = logits, feats, 0

    def forward(self, x, needs=None):
        self.calls += 1
        got = {"features": self.feats, "logits": self.logits}
        return got["logits"] if needs is None else {n: got[n] for n in needs}


def whole(teacher, method):
    """One of the original's two as the whole loss train_kd.py builds: alpha * term + (1 - alpha) * CE."""
    return DistillationLoss(teacher, {method.name: method}, w_ce=1 - method.weight)


def hand_kd(s, t, T):
    """sum_c p_t (log p_t - log p_s) at temperature T, averaged over every pixel, times T^2 (NumPy, float64):
    the per-pixel formula of --kd_reduction pixel."""
    s, t = s.double().numpy() / T, t.double().numpy() / T
    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    ls, lt = log_softmax(s), log_softmax(t)
    return float((np.exp(lt) * (lt - ls)).sum(1).mean() * T * T)


def test_response_kd_matches_hand_computation():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 6, 7), torch.randn(2, 5, 6, 7) * 3
    for T in (1.0, 2.0, 4.0):
        loss = ResponseKD(1.0, T, "pixel").term(s, t)
        assert abs(loss.item() - hand_kd(s, t, T)) < 1e-5
        # the original's batchmean: the same sum, divided by the batch size instead of the pixel count
        orig = ResponseKD(1.0, T).term(s, t)
        assert abs(orig.item() - hand_kd(s, t, T) * 6 * 7) < 1e-5 * 6 * 7


def test_response_kd_zero_when_logits_match():
    t = torch.randn(2, 5, 8, 8)
    assert abs(ResponseKD(temperature=4).term(t.clone(), t).item()) < 1e-6


def test_response_kd_is_per_pixel_independent_of_image_size():
    torch.manual_seed(1)
    s, t = torch.randn(1, 5, 4, 4), torch.randn(1, 5, 4, 4)
    loss = ResponseKD(temperature=2, reduction="pixel").term
    small = loss(s, t)
    big = loss(s.repeat(1, 1, 8, 8), t.repeat(1, 1, 8, 8))  # the same pixels, 64 times as many
    assert abs(small.item() - big.item()) < 1e-6


def test_response_blend_and_ignore():
    torch.manual_seed(2)
    s, t = torch.randn(2, 5, 6, 6), torch.randn(2, 5, 6, 6)
    target = torch.randint(0, 5, (2, 6, 6))
    target[:, 0] = 255
    crit = whole(FixedTeacher(t), ResponseKD(0.3, 4, "pixel"))
    out = crit(None, {"logits": s}, target)
    ce = F.cross_entropy(s, target, ignore_index=255)
    assert abs(out["loss"].item() - (0.3 * hand_kd(s, t, 4) + 0.7 * ce.item())) < 1e-5
    assert abs(out["ce"].item() - ce.item()) < 1e-6


def test_alpha_zero_is_plain_cross_entropy_and_skips_the_teacher():
    s = torch.randn(2, 5, 6, 6)
    target = torch.randint(0, 5, (2, 6, 6))
    teacher = FixedTeacher(torch.randn(2, 5, 6, 6))
    out = whole(teacher, ResponseKD(0.0))(None, {"logits": s}, target)
    assert out["loss"].item() == SegmentationLoss()(None, {"logits": s}, target)["loss"].item()
    assert teacher.calls == 0


def hand_feature(student, teacher, align):
    """1 - cosine over channels per pixel, averaged over pixels, then over the pairs (NumPy, float64): the formula of
    --kd_reduction pixel (the original adds the pairs: 3 times this)."""
    terms = []
    for s, t, conv in zip(student, teacher, align.convs):
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False) if s.shape[-2:] != t.shape[-2:] else s
        a = conv(s).detach().double().numpy()
        t = t.double().numpy()
        cos = (a * t).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(t, axis=1), 1e-8)
        terms.append((1 - cos).mean())
    return float(np.mean(terms))


def test_feature_kd_matches_hand_computation():
    torch.manual_seed(3)
    t_feats = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4), torch.randn(2, 8, 4, 4)]
    s_feats = [torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4), torch.randn(2, 7, 2, 2)]  # last one resized
    crit = whole(FixedTeacher(feats=t_feats), FeatureKD((3, 5, 7), (4, 6, 8), 0.4, "pixel"))
    logits, target = torch.randn(2, 5, 16, 16), torch.randint(0, 5, (2, 16, 16))
    out = crit(None, {"logits": logits, "features": s_feats}, target)
    feat = hand_feature(s_feats, t_feats, crit.methods["feature"].align)
    assert abs(out["feat"].item() - feat) < 1e-5
    ce = F.cross_entropy(logits, target, ignore_index=255).item()
    assert abs(out["loss"].item() - (0.4 * feat + 0.6 * ce)) < 1e-5


def test_feature_kd_zero_when_aligned_features_match():
    t_feats = [torch.randn(2, c, 4, 4) for c in (4, 6, 8)]
    crit = whole(FixedTeacher(feats=t_feats), FeatureKD((4, 6, 8), (4, 6, 8), 1.0))
    with torch.no_grad():
        for conv in crit.methods["feature"].align.convs:  # identity projections
            conv.weight.copy_(torch.eye(conv.out_channels)[:, :, None, None])
            conv.bias.zero_()
    out = crit(None, {"logits": torch.randn(2, 5, 4, 4), "features": [f.clone() for f in t_feats]},
               torch.zeros(2, 4, 4, dtype=torch.long))
    assert abs(out["feat"].item()) < 1e-6


@pytest.mark.parametrize("method", ["response", "feature"])
def test_teacher_frozen_during_distillation(method):
    """No gradient reaches the teacher, its BatchNorm statistics do not move, and .train() cannot unfreeze it."""
    from model import build_model

    torch.manual_seed(0)
    teacher = FrozenTeacher(TappedSegNet("fcn_resnet50", 5))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_model("light", 5)
    crit = whole(teacher, ResponseKD(0.5, 4.0) if method == "response"
                 else FeatureKD(feature_channels(student), teacher.feature_channels(), 0.5))
    params = list(student.parameters()) + [p for p in crit.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    student.train(), crit.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    for _ in range(2):
        out = crit(x, student(x, needs=crit.needs), y)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running stats
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    if method == "feature":
        assert all(p.grad is not None for p in crit.trainable().parameters())
    assert math.isfinite(out["loss"].item())


def test_non_finite_loss_stops_training():
    from engine import NonFiniteLoss, train_one_epoch

    class NaNLoss(nn.Module):
        needs = frozenset({"logits"})

        def forward(self, images, outputs, targets):
            return {"loss": outputs["logits"].mean() * float("nan")}

    model = nn.Conv2d(3, 2, 1)
    model.forward_orig = model.forward
    model.forward = lambda x, needs=None: {"logits": model.forward_orig(x)}
    loader = [(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))] * 3
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLoss, match="nan"):
        train_one_epoch(model, NaNLoss(), opt, loader, torch.device("cpu"), 0, log_interval=2, progress=False,
                        channels_last=False)


