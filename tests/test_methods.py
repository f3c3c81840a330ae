"""The distillation methods beside the original two (issue 11): each term against the formula written out here in
NumPy float64 (loops and einsum, not the repo's code), the properties that catch a wrong reduction, gradients,
the combined loss, and a resumed CLI run that restores MGD's generator."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, run_cli

import train_kd
import losses
from losses import (METHODS, AttentionTransfer, ChannelWiseKD, DistillationLoss, DISTKD, Flag, MaskedGenerativeKD,
                    Method, PairwiseAffinityKD, ResponseKD, build_loss, register)
from model import TappedSegNet, build_model
from teacher import FrozenTeacher


def np64(x):
    return x.detach().double().numpy()


def np_log_softmax(z, axis):
    z = z - z.max(axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis, keepdims=True))


def np_bilinear(x, size):
    """Bilinear resize of (..., H, W), align_corners=False (half-pixel centres, clamped at the border)."""
    def weights(n_in, n_out):
        m = np.zeros((n_out, n_in))
        for o in range(n_out):
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1, lam = min(i0 + 1, n_in - 1), src - i0
            m[o, i0] += 1 - lam
            m[o, i1] += lam
        return m
    return np.einsum("ph,...hw,qw->...pq", weights(x.shape[-2], size[0]), x, weights(x.shape[-1], size[1]))


def np_conv(x, w, b, pad):
    """Cross-correlation (N, C, H, W) * (O, C, k, k) with zero padding, stride 1."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h, wd = x.shape[2] + 2 * pad - k + 1, x.shape[3] + 2 * pad - k + 1
    out = np.zeros((x.shape[0], w.shape[0], h, wd))
    for di in range(k):
        for dj in range(k):
            out += np.einsum("oc,nchw->nohw", w[:, :, di, dj], xp[:, :, di:di + h, dj:dj + wd])
    return out + b[None, :, None, None]


def feats(last):
    """A feature list whose third entry (the last pair) is `last`: the methods read only that one."""
    return [None, None, last]


# --------------------------------------------------------------------------- each formula, independently
def test_cwd_matches_float64_loops():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 5) * 2, torch.randn(2, 3, 4, 5) * 3
    for tau in (1.0, 4.0):
        got = ChannelWiseKD(tau=tau).term(s, t).item()
        S, T = np64(s), np64(t)
        want = 0.0
        for b in range(2):
            for k in range(3):
                ls = np_log_softmax(S[b, k].ravel() / tau, 0)
                lt = np_log_softmax(T[b, k].ravel() / tau, 0)
                want += (np.exp(lt) * (lt - ls)).sum()
        want *= tau ** 2 / (2 * 3)
        assert abs(got - want) < 1e-5 * max(1.0, abs(want))


def test_dist_matches_float64():
    torch.manual_seed(1)
    s, t = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5) * 2
    for tau, beta, gamma in ((1.0, 1.0, 1.0), (2.0, 0.5, 2.0)):
        got = DISTKD(tau=tau, beta=beta, gamma=gamma).term(s, t).item()
        def probs(z):  # rows: every pixel of every image; columns: the classes
            z = np64(z).transpose(0, 2, 3, 1).reshape(-1, 4) / tau
            e = np.exp(z - z.max(1, keepdims=True))
            return e / e.sum(1, keepdims=True)
        ps, pt = probs(s), probs(t)
        pearson = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
        inter = 1 - np.mean([pearson(ps[i], pt[i]) for i in range(ps.shape[0])])
        intra = 1 - np.mean([pearson(ps[:, k], pt[:, k]) for k in range(4)])
        want = tau ** 2 * (beta * inter + gamma * intra)
        assert abs(got - want) < 1e-5


@pytest.mark.parametrize("student_hw", [(4, 6), (2, 3)], ids=["same_grid", "resized"])
def test_at_matches_float64(student_hw):
    torch.manual_seed(2)
    fs, ft = torch.randn(2, 5, *student_hw), torch.randn(2, 7, 4, 6)
    got = AttentionTransfer(1.0).term(feats(fs), feats(ft)).item()
    def at(f, size):
        a = (np64(f) ** 2).mean(1)  # (B, h, w)
        if a.shape[-2:] != size:
            a = np_bilinear(a, size)
        a = a.reshape(a.shape[0], -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)
    want = ((at(fs, (4, 6)) - at(ft, (4, 6))) ** 2).mean()
    assert abs(got - want) < 1e-7


def test_affinity_matches_float64_loops():
    torch.manual_seed(3)
    fs, ft = torch.randn(3, 4, 2, 3), torch.randn(3, 6, 4, 6)  # the teacher's grid pools 2x2 onto the student's
    tau = 0.1
    got = PairwiseAffinityKD(1.0, tau).term(feats(fs), feats(ft)).item()
    S = np64(fs).reshape(3, 4, 2 * 3)
    T = np64(ft).reshape(3, 6, 2, 2, 3, 2).mean((3, 5)).reshape(3, 6, 6)  # 2x2 average pooling
    S = S / np.linalg.norm(S, axis=1, keepdims=True)
    T = T / np.linalg.norm(T, axis=1, keepdims=True)
    want = 0.0
    for i in range(3):
        for j in range(3):
            ls = np_log_softmax(S[i].T @ S[j] / tau, 1)
            lt = np_log_softmax(T[i].T @ T[j] / tau, 1)
            want += (np.exp(lt) * (lt - ls)).sum() / 6  # batchmean: over the P rows
    want /= 3 * 3
    assert abs(got - want) < 1e-5 * max(1.0, want)


def test_affinity_grid_caps_positions():
    from losses import affinity_grid

    assert affinity_grid((12, 15), (45, 60), 1024) == (12, 15)
    assert affinity_grid((64, 128), (64, 128), 1024) == (16, 32)


def test_mgd_matches_float64():
    torch.manual_seed(4)
    fs, ft = torch.randn(2, 3, 2, 3), torch.randn(2, 5, 4, 6)
    mgd = MaskedGenerativeKD(3, 5, weight=1.0, keep=0.25, hidden=4)
    torch.manual_seed(10)
    got = mgd.term(feats(fs), feats(ft)).item()
    torch.manual_seed(10)  # the same draw: a position is kept when its uniform number is below keep
    mask = (torch.rand(2, 1, 4, 6) < 0.25).double().numpy()
    g = mgd.generator
    p = {k: np64(v) for k, v in g.state_dict().items()}
    resized = np_bilinear(np64(fs), (4, 6))  # resize, then project: the formula's order
    projected = (np.einsum("oc,nchw->nohw", p["project.weight"][:, :, 0, 0], resized)
                 + p["project.bias"][None, :, None, None])
    h = np.maximum(np_conv(projected * mask, p["generate.0.weight"], p["generate.0.bias"], 1), 0)
    generated = np_conv(h, p["generate.2.weight"], p["generate.2.bias"], 1)
    want = ((generated - np64(ft)) ** 2).sum() / 2
    assert abs(got - want) < 1e-5 * want


def test_a_method_parameter_is_declared_once_in_its_flag():
    """A Flag is a method's parameter: the constructor's default, its keyword (param) and from_args all come from it,
    so --w_cwd on the command line is ChannelWiseKD's weight without a third place that says so."""
    for cls in (ResponseKD, ChannelWiseKD, DISTKD, AttentionTransfer, PairwiseAffinityKD):
        built = cls()
        assert all(getattr(built, f.param) == f.default for f in cls.flags), cls.name
    args = train_kd.get_args_parser().parse_args(["--w_cwd", "2.5", "--dist_gamma", "0.25"])
    cwd, dist = ChannelWiseKD.from_args(args, None, None), DISTKD.from_args(args, None, None)
    assert (cwd.weight, cwd.tau) == (2.5, 4.0) and (dist.beta, dist.gamma) == (1.0, 0.25)
    assert (ResponseKD(0.3, 4.0).weight, ResponseKD(0.3, 4.0).temperature) == (0.3, 4.0)  # positions: flags' order
    with pytest.raises(TypeError, match="takes weight, tau"):
        ChannelWiseKD(tau=1.0, temperature=2.0)


def test_mgd_default_weight_per_teacher_channel():
    assert MaskedGenerativeKD(1280, 1024).weight == pytest.approx(1e-5)
    assert MaskedGenerativeKD(1280, 1280, hidden=8).weight == pytest.approx(8e-6)
    assert MaskedGenerativeKD(4, 512, weight=0.5, hidden=8).weight == 0.5


# --------------------------------------------------------------------------- properties of the reductions
@pytest.mark.parametrize("method", [ChannelWiseKD(), DISTKD(), PairwiseAffinityKD()], ids=["cwd", "dist", "affinity"])
def test_zero_when_outputs_match_positive_otherwise(method):
    torch.manual_seed(5)
    if "features" in method.needs:
        t, s = torch.randn(2, 6, 4, 4), torch.randn(2, 6, 4, 4)
        same, other = method.term(feats(t.clone()), feats(t)), method.term(feats(s), feats(t))
    else:
        t, s = torch.randn(2, 5, 4, 4) * 2, torch.randn(2, 5, 4, 4) * 2
        same, other = method.term(t.clone(), t), method.term(s, t)
    assert abs(same.item()) < 1e-5
    assert other.item() > 1e-3


def test_cwd_of_a_batch_is_the_mean_of_per_image_cwd():
    torch.manual_seed(6)
    s, t = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    cwd = ChannelWiseKD()
    per_image = [cwd.term(s[i:i + 1], t[i:i + 1]).item() for i in range(3)]
    assert abs(cwd.term(s, t).item() - np.mean(per_image)) < 1e-6


def test_attention_ignores_repeated_channels():
    torch.manual_seed(7)
    f, t = torch.randn(2, 5, 4, 4), torch.randn(2, 3, 4, 4)
    at = AttentionTransfer(1.0)
    a = at.term(feats(f), feats(t))
    b = at.term(feats(torch.cat([f, f], 1)), feats(t))
    assert abs(a.item() - b.item()) < 1e-7


# --------------------------------------------------------------------------- the networks and the combined loss
def test_stride8_logits_leave_existing_outputs_alone():
    torch.manual_seed(8)
    x = torch.randn(1, 3, 32, 32)
    for net in (build_model("light", 5).eval(), build_model("light", 5, fast=False).eval(),
                TappedSegNet("fcn_resnet50", 5).eval()):
        with torch.no_grad():
            plain, every = net(x), net(x, needs={"logits", "logits8", "features"})
            with_feats = net(x, needs={"logits", "features"})
        logits, feats_, logits8 = every["logits"], every["features"], every["logits8"]
        torch.testing.assert_close(logits, plain)
        torch.testing.assert_close(with_feats["logits"], plain)
        assert set(with_feats) == {"logits", "features"} and len(feats_) == len(with_feats["features"]) == 3
        assert logits8.shape[-2:] == (4, 4)
        torch.testing.assert_close(F.interpolate(logits8, size=(32, 32), mode="bilinear", align_corners=False),
                                   plain, rtol=1e-4, atol=1e-5)


def frozen(arch, num_classes=5):
    torch.manual_seed(9)
    return FrozenTeacher(build_model("teacher", num_classes, teacher_arch=arch))


def all_methods(teacher, student, *extra):
    args = train_kd.get_args_parser().parse_args(["--kd_method", ",".join(METHODS), "--mgd_hidden", "16",
                                                "--mgd_keep", "0.5", *extra])
    return build_loss(args.kd_method.split(","), teacher, student, args)


@pytest.mark.parametrize("arch", ["light", "fcn_resnet50"])
def test_every_method_together_one_teacher_call_gradients_to_student_and_parts_only(arch):
    """All registered methods in one loss: the teacher is asked once per step; gradients reach the student and every
    trainable part (feature KD's alignment convs, MGD's generator), never the teacher; the total is the formula."""
    teacher = frozen(arch)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    calls = []
    forward = teacher.forward
    teacher.forward = lambda *a, **k: (calls.append(k.get("needs")), forward(*a, **k))[1]
    torch.manual_seed(0)
    student = build_model("light", 5).train()
    loss = all_methods(teacher, student)
    assert isinstance(loss, DistillationLoss) and loss.needs == {"logits", "features", "logits8"}
    assert set(loss.trainable().keys()) == {n for n, cls in METHODS.items() if n in ("feature", "mgd")}
    x, y = torch.randn(2, 3, 48, 48), torch.randint(0, 5, (2, 48, 48))  # grids: student 2x2, teacher 6x6 or 2x2
    out = loss(x, student(x, needs=loss.needs), y)
    assert calls == [("logits", "logits8", "features")]
    assert set(out) == {"loss", "ce"} | {cls.part for cls in METHODS.values()}
    w = {m.part: m.weight for m in loss.methods.values()}
    want = 0.5 * out["ce"] + sum(w[k] * out[k] for k in w)
    assert abs(out["loss"].item() - want.item()) < 1e-5 * abs(want.item())
    out["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.trainable().parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_building_every_method_probes_each_network_once():
    """The loss's build asks the widths of the student's and the teacher's feature maps for several methods; each
    network runs one blank forward pass for all of them (model.probe_cache), and none after the build."""
    teacher, student = frozen("light"), build_model("light", 5)
    runs = {"student": 0, "teacher": 0}
    for name, net in (("student", student), ("teacher", teacher.net)):
        net.register_forward_hook(lambda *_, name=name: runs.__setitem__(name, runs[name] + 1))
    all_methods(teacher, student)
    assert runs == {"student": 1, "teacher": 1}
    assert len([n for n, cls in METHODS.items() if "features" in cls.needs]) >= 3  # several asked


def test_weights_zero_skip_the_teacher_and_replay_cross_entropy():
    """Every weight at 0: the teacher is never run and the loss is the cross-entropy exactly."""
    teacher, student = frozen("light"), build_model("light", 5)
    calls = []
    teacher.forward = lambda *a, **k: calls.append(k) or pytest.fail("teacher ran")
    zero = [f"--{f}" for f in ("alpha", "w_cwd", "w_dist", "w_at", "w_affinity", "w_mgd", "w_pseudo")]
    loss = all_methods(teacher, student, *[v for flag in zero for v in (flag, "0")])
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    outputs = student(x, needs=loss.needs)
    out = loss(x, outputs, y)
    assert out["loss"].item() == F.cross_entropy(outputs["logits"], y, ignore_index=255).item() and not calls


def test_methods_under_bf16_autocast_are_float32_and_finite():
    teacher, student = frozen("light"), build_model("light", 5).train()
    loss = all_methods(teacher, student)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(x, student(x, needs=loss.needs), y)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_ce_weight_rule():
    """CE is weighted 1 - alpha when a method of the original's two is listed, else 1; response alone is
    alpha * KD + (1 - alpha) * CE."""
    teacher, student = frozen("light"), build_model("light", 5)
    parser = train_kd.get_args_parser()
    build = lambda m, *extra: build_loss(m.split(","), teacher, student,  # noqa: E731
                                         parser.parse_args(["--kd_method", m, *extra]))
    alone = build("response", "--alpha", "0.3")
    assert alone.teacher is teacher and alone.w_ce == pytest.approx(0.7) and alone.methods["response"].weight == 0.3
    assert build("cwd").w_ce == 1.0
    assert build("response,cwd", "--alpha", "0.3").w_ce == pytest.approx(0.7)
    assert build("feature,mgd", "--alpha", "0.2").w_ce == pytest.approx(0.8)


def test_kd_method_flag(capsys):
    parser = train_kd.get_args_parser()
    help_text = parser.format_help()
    assert all(m in help_text for m in METHODS)
    assert all(f"--{f}" in help_text for f in losses.all_flags())
    assert parser.parse_args(["--kd_method", "response, cwd"]).kd_method == "response,cwd"
    for bad, message in (("cwd,nope", "unknown method nope; give a comma-separated list of response, feature, cwd"),
                         ("cwd,cwd", "'cwd,cwd' names a method twice"), (",", "unknown method (none given)")):
        with pytest.raises(SystemExit):
            parser.parse_args(["--kd_method", bad])
        assert message in capsys.readouterr().err


def test_register_refuses_a_taken_name_and_unknown_outputs():
    with pytest.raises(ValueError, match="taken"):
        register(type("Again", (Method,), {"name": "cwd", "part": "x", "needs": frozenset({"logits"})}))
    with pytest.raises(ValueError, match="needs"):
        register(type("Odd", (Method,), {"name": "odd", "part": "x", "needs": frozenset({"attention"})}))
    assert "odd" not in METHODS


class ToyKD(Method):
    """A method written as a user would: mean squared difference of the stride-8 logits and of the last features,
    one flag, one trainable scale. Registered only inside the test that trains it."""

    name, part, needs, summary = "toy", "toy", frozenset({"logits8", "features"}), "a test's own method"
    flags = (Flag("w_toy", 0.5, "toy weight", "this test", check=lambda v: v >= 0, why="must be >= 0"),)

    def __init__(self, *values, **params):  # its parameters come from its flags (self.weight); its own part here
        super().__init__(*values, **params)
        self.scale = torch.nn.Conv2d(1, 1, 1)

    def trainable(self):
        return self.scale

    def term(self, student_side, teacher_side):
        s8, t8 = student_side["logits8"], teacher_side["logits8"]
        s8 = F.interpolate(s8, size=t8.shape[-2:], mode="bilinear", align_corners=False)
        fs, ft = student_side["features"][-1], teacher_side["features"][-1]
        energy = self.scale(fs.float().pow(2).mean(1, keepdim=True)).mean() - ft.float().pow(2).mean()
        return (s8.float() - t8.float()).pow(2).mean() + energy.pow(2)


def test_a_registered_method_trains_through_train_kd_without_other_edits(synthetic_root, tmp_path):
    """Adding a method is one class: registered here, it gets its flag, its help, its check, its log key and its
    trainable part saved, through train_kd.py's own main(get_args_parser().parse_args([...])), one epoch on two
    images."""
    import dataset

    root = dataset.make_synthetic_voc(str(tmp_path / "data"), num_train=2, num_val=2, size=(32, 32), seed=1)
    weights = tmp_path / "light_teacher.pth"
    torch.manual_seed(0)
    torch.save(build_model("light", 21).state_dict(), weights)
    register(ToyKD)
    try:
        parser = train_kd.get_args_parser()
        help_text = " ".join(parser.format_help().split())
        assert "--w_toy W_TOY toy weight" in help_text and "toy: a test's own method" in help_text
        argv = ["--kd_method", "toy,response", "--w_toy", "2", "--teacher_arch", "light", "--teacher_weights",
                str(weights), "--root_dir", root, "--img_size", "32", "--batch_size", "2", "--epochs", "1",
                "--num_workers", "0", "--no_progress", "--num_vis", "0", "--save_dir", str(tmp_path / "w")]
        result = train_kd.main(parser.parse_args(argv))
        assert ("w_toy", ToyKD.flags[0].check, "must be >= 0") in train_kd.rules()
    finally:
        METHODS.pop("toy")
    log = [json.loads(line) for line in (tmp_path / "w" / "toy_response_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["train_toy"] > 0 and log[0]["train_kd"] > 0
    loss = result["criterion"]
    assert loss.methods["toy"].weight == 2.0 and loss.w_ce == 0.5
    last = torch.load(tmp_path / "w" / "toy_response_last.pth", weights_only=True)
    assert set(last["criterion"]) == {"toy.weight", "toy.bias"}
    assert not torch.equal(last["criterion"]["toy.weight"], ToyKD(1.0).scale.weight)  # it trained (almost surely)


def test_resume_restores_mgd_generator(synthetic_root, tmp_path):
    """One CLI epoch of dist,mgd: MGD's generator moved and is saved in RUN_last.pth (not in RUN_best.pth, which
    holds the student only); resuming that checkpoint puts the saved generator back into the loss (the finished
    run's resume stops right after loading, so the loss it returns holds exactly what was restored)."""
    weights = tmp_path / "light_teacher.pth"
    torch.manual_seed(0)
    torch.save(build_model("light", 21).state_dict(), weights)
    flags = ["--kd_method", "dist,mgd", "--teacher_arch", "light", "--teacher_weights", str(weights), "--root_dir",
             synthetic_root, "--img_size", "32", "--batch_size", "4", "--num_workers", "0", "--no_progress",
             "--num_vis", "0", "--mgd_hidden", "32", "--epochs", "1", "--save_dir", str(tmp_path / "w")]
    run_cli([os.path.join(ROOT, "train_kd.py"), *flags], tmp_path)
    last = torch.load(tmp_path / "w" / "dist_mgd_last.pth", weights_only=True)
    fresh = MaskedGenerativeKD(1280, 1280, hidden=32).generator.state_dict()
    assert set(last["criterion"]) == {f"mgd.{k}" for k in fresh}
    assert all(not torch.equal(last["criterion"][f"mgd.{k}"], v) for k, v in fresh.items() if "weight" in k)
    best = torch.load(tmp_path / "w" / "dist_mgd_best.pth", weights_only=True)["model"]
    assert best.keys() == build_model("light", 21).state_dict().keys()
    log = [json.loads(line) for line in (tmp_path / "w" / "dist_mgd_log.jsonl").read_text().splitlines()]
    assert {"train_loss", "train_ce", "train_dist", "train_mgd"} <= log[-1].keys()

    result = train_kd.main(train_kd.get_args_parser().parse_args([*flags, "--resume", "auto"]))
    assert result["skipped"]
    restored = result["criterion"].trainable().state_dict()
    assert restored.keys() == last["criterion"].keys()
    assert all(torch.equal(restored[k], last["criterion"][k]) for k in restored)
