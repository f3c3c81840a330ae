"""Semi-supervised pieces (semi.py, issue 36): pseudo labels against a hand computation, masked pixels without
gradient, weak and strong views of one geometric draw (and the loop handing the weak one to the teacher), the
EMA teacher's update by hand, its resume, and the flag combinations refused by name."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import engine
import model
import semi
import train_kd
import unlabeled
import utils
from conftest import spy_on_inputs
from dataset import VOC
from test_unlabeled import args_for, setup  # noqa: F401 - its data (4 labelled, train_large), light teacher, flags


# --------------------------------------------------------------------------- pseudo labels
def tiny_batch():
    """Two images of 3 classes on 1x3 pixels: the first labelled, the second unlabelled (its mask all 255)."""
    student = torch.tensor([[[[1.0, 0.0, 2.0]], [[0.0, 1.0, 0.0]], [[0.5, 0.5, 0.5]]],
                            [[[2.0, 0.0, 0.0]], [[0.0, 3.0, 1.0]], [[1.0, 0.0, 1.0]]]], requires_grad=True)
    # the unlabelled image's teacher: sure of class 0 at pixel 0, unsure at pixel 1, sure of class 2 at pixel 2
    teacher = torch.tensor([[[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]],
                            [[[6.0, 0.3, 0.0]], [[0.0, 0.0, 0.0]], [[0.0, 0.2, 5.0]]]])
    targets = torch.tensor([[[0, 1, 255]], [[255, 255, 255]]])
    return student, teacher, targets


def test_pseudo_equals_a_hand_computation():
    student, teacher, targets = tiny_batch()
    got = semi.PseudoLabel(threshold=0.9).term(student, teacher, targets).item()
    s = student.detach().double().numpy()[1, :, 0]  # (classes, pixels) of the unlabelled image
    t = teacher.double().numpy()[1, :, 0]
    p_t = np.exp(t) / np.exp(t).sum(0)
    log_p_s = s - np.log(np.exp(s).sum(0))
    want = sum(-log_p_s[p_t[:, j].argmax(), j] for j in range(3) if p_t[:, j].max() >= 0.9) / 3
    assert [p_t[:, j].max() >= 0.9 for j in range(3)] == [True, False, True]  # the example tests the mask
    assert abs(got - want) < 1e-6


def test_pseudo_masked_and_labelled_pixels_get_no_gradient():
    student, teacher, targets = tiny_batch()
    semi.PseudoLabel(threshold=0.9).term(student, teacher, targets).backward()
    g = student.grad
    assert (g[0] == 0).all()  # the labelled image: the cross-entropy's, not this term's
    assert (g[1, :, 0, 1] == 0).all()  # the unsure pixel
    assert (g[1, :, 0, 0] != 0).all() and (g[1, :, 0, 2] != 0).all()


def test_pseudo_at_threshold_zero_is_hard_label_cross_entropy():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5, 3, 3), torch.randn(4, 5, 3, 3)
    targets = torch.randint(0, 5, (4, 3, 3))
    targets[1:3] = 255  # images 1 and 2 unlabelled
    got = semi.PseudoLabel(threshold=0.0).term(s, t, targets)
    want = F.cross_entropy(s[1:3], t[1:3].argmax(1))
    assert abs(got.item() - want.item()) < 1e-6
    assert semi.PseudoLabel().term(s, t, torch.zeros(4, 3, 3, dtype=torch.long)).item() == 0  # no unlabelled image


# --------------------------------------------------------------------------- weak and strong views
def marked_frame(tmp_path):
    """A 32x32 black frame with a white square off-centre: where it lands tells the geometry."""
    from PIL import Image

    a = np.zeros((32, 32, 3), dtype=np.uint8)
    a[4:16, 6:20] = 255
    Image.fromarray(a).save(tmp_path / "frame.png")
    return [str(tmp_path / "frame.png")]


def test_weak_view_is_the_geometry_alone_and_strong_view_the_same_geometry(tmp_path):
    files = marked_frame(tmp_path)
    views = unlabeled.UnlabeledImages(VOC, files, (32, 32), augment="kd", geometric=True, views="weak_strong",
                                      cutout=0.0)
    geometry = unlabeled.UnlabeledImages(VOC, files, (32, 32), augment="none", geometric=True)
    plain, checked = views._strong, 0
    for seed in range(8):
        strong, mask, weak = views[(0, seed)]
        assert (mask == 255).all()
        assert torch.equal(weak, geometry[(0, seed)][0])  # the weak view: the same draw with no colour at all
        views._strong = nn.Identity()  # undo the colour: what is left of the strong view is the weak view
        assert torch.equal(views[(0, seed)][0], weak)
        views._strong = plain
        b_s, b_w = bright(strong), bright(weak)  # where the square landed, whatever the colour did
        if b_w.any() and not b_w.all():
            checked += 1
            assert (b_s & b_w).sum() / (b_s | b_w).sum() > 0.6, seed
    assert checked >= 3
    draws = [views[(0, seed)] for seed in range(8)]
    assert any(not torch.equal(draws[0][2], d[2]) for d in draws[1:])  # a random geometry: the check means something
    assert any(not torch.equal(d[0], d[2]) for d in draws)  # and the colour too


def bright(x):
    """The pixels brighter than half-way between the darkest and the brightest of a normalised image."""
    g = x.mean(0)
    return g > (g.max() + g.min()) / 2


def test_the_teacher_answers_the_weak_view_and_the_student_learns_on_the_strong_one(setup, tmp_path, monkeypatch):
    """Every step of a weak_strong run: the labelled rows are one view for both networks; the unlabelled rows are the
    weak view for the teacher and the strong view for the student, of the same draws of the pool."""
    seen = {**spy_on_inputs(monkeypatch), "items": []}
    getitem = unlabeled.UnlabeledImages.__getitem__

    def item(self, index):
        out = getitem(self, index)
        seen["items"].append(out)
        return out

    monkeypatch.setattr(unlabeled.UnlabeledImages, "__getitem__", item)
    train_kd.main(args_for(setup, tmp_path / "w", "--epochs", "1", "--kd_method", "response,pseudo",
                           "--unlabeled", "split:train_large", "--unlabeled_batch", "3", "--geometric",
                           "--unlabeled_views", "weak_strong", "--strong_cutout", "0.5"))
    steps = len(seen["teacher"])
    assert steps == 2 and len(seen["items"]) == 2 * 3
    for step, (x_teacher, x_student) in enumerate(zip(seen["teacher"], seen["student"])):
        strong, _, weak = (torch.stack(v) for v in zip(*seen["items"][3 * step:3 * step + 3]))
        assert torch.equal(x_teacher[:2], x_student[:2])
        assert torch.equal(x_teacher[2:], weak) and torch.equal(x_student[2:], strong)
    log = json.loads((tmp_path / "w" / "response_pseudo_log.jsonl").read_text().splitlines()[0])
    assert log["train_pseudo"] >= 0 and log["train_kd"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--unlabeled_views", "weak_strong"], "--unlabeled_views weak_strong makes views of the unlabelled images"),
    (["--unlabeled", "x", "--strong_cutout", "0.5"], "--strong_cutout 0.5 masks the strong view"),
    (["--kd_method", "cwd,pseudo"], "--kd_method pseudo learns from unlabelled images only"),
    (["--ema_teacher", "0.99", "--model_name", "best"], "--model_name best but --teacher_arch light"),
    (["--ema_init", "student"], "--ema_init student says where an EMA teacher starts"),
], ids=["views", "cutout", "pseudo", "ema_arch", "ema_init"])
def test_bad_combinations_stop_before_any_data_naming_the_flags(setup, tmp_path, flags, message):
    with pytest.raises(utils.UserError, match=message):
        train_kd.main(args_for(setup, tmp_path / "w", *flags))
    assert not (tmp_path / "w").exists()


# --------------------------------------------------------------------------- the EMA teacher
def small_net():
    return nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))


def test_ema_update_equals_a_hand_computation_over_two_steps():
    torch.manual_seed(0)
    teacher, student = small_net().eval().requires_grad_(False), small_net()
    t0 = {k: v.double().clone() for k, v in teacher.state_dict().items()}
    ema, d, s = semi.MeanTeacherEMA(0.9), 0.9, []
    for _ in range(2):
        with torch.no_grad():  # a "step" of the student: new weights and BatchNorm statistics
            for v in student.state_dict().values():
                v.copy_(torch.randn_like(v.float()).abs().to(v.dtype) + (1 if v.dtype == torch.long else 0))
        s.append({k: v.double().clone() for k, v in student.state_dict().items()})
        ema.step(teacher, student)
    for k, v in teacher.state_dict().items():
        if k.endswith("num_batches_tracked"):
            assert v.item() == s[1][k].item()  # copied
        else:
            want = d * (d * t0[k] + (1 - d) * s[0][k]) + (1 - d) * s[1][k]
            torch.testing.assert_close(v.double(), want, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_ema_teacher_trains_outside_the_optimizer_and_starts_where_asked(setup, tmp_path):
    args = args_for(setup, tmp_path / "w", "--ema_teacher", "0.5", "--ema_init", "student", "--kd_method", "response")
    torch.manual_seed(0)
    student = model.build_model("light", 21)
    loss = train_kd.build_criterion(args, student, VOC, torch.device("cpu"))
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in loss.teacher.net.state_dict().items())
    assert loss.carried() is loss.teacher and loss.trainable() is None
    state, _ = engine.prepare(args, student, loss, 1, torch.device("cpu"))
    in_optimizer = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
    assert not in_optimizer & {id(p) for p in loss.teacher.parameters()}


def test_ema_teacher_resume_equals_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    flags = ["--epochs", "2", "--ema_teacher", "0.9", "--kd_method", "response,pseudo", "--unlabeled",
             "split:train_large", "--unlabeled_views", "weak_strong"]
    train_kd.main(args_for(setup, tmp_path / "a", *flags))
    write_epoch = engine.write_epoch

    def stop_after_first(state, *a, **k):
        write_epoch(state, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "write_epoch", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_kd.main(args_for(setup, tmp_path / "b", *flags))
    monkeypatch.setattr(engine, "write_epoch", write_epoch)
    train_kd.main(args_for(setup, tmp_path / "b", *flags, "--resume", "auto"))
    a, b = (torch.load(tmp_path / r / "response_pseudo_last.pth", weights_only=True) for r in "ab")
    assert set(a["carried"]) == {f"net.{k}" for k in model.build_model("light", 21).state_dict()}  # the teacher
    for part in ("model", "carried"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    teacher = torch.load(setup["teacher"], weights_only=True)
    assert not torch.equal(a["carried"]["net.classifier.weight"], teacher["classifier.weight"])  # it moved
    assert a["history"][-1]["val_miou"] == b["history"][-1]["val_miou"]


def test_every_method_at_once_with_both_views_and_an_ema_teacher(setup, tmp_path):
    """Every registered method in one run, with weak and strong views, cutout and an EMA teacher: one epoch, every
    part logged and finite (the methods meet the new pieces only through the loss's contract)."""
    from losses import METHODS

    result = train_kd.main(args_for(setup, tmp_path / "w", "--epochs", "1", "--kd_method", ",".join(METHODS),
                                    "--mgd_hidden", "8", "--unlabeled", "split:train_large", "--unlabeled_batch", "2",
                                    "--geometric", "--unlabeled_views", "weak_strong", "--strong_cutout", "1",
                                    "--ema_teacher", "0.9", "--run_name", "all"))
    log = json.loads((tmp_path / "w" / "all_log.jsonl").read_text().splitlines()[0])
    assert {f"train_{cls.part}" for cls in METHODS.values()} <= log.keys()
    assert all(np.isfinite(v) for v in log.values())
    assert result["criterion"].carried() is result["criterion"].teacher


# --------------------------------------------------------------------------- the student's start
def test_student_init_teacher_starts_the_student_from_the_teacher_file(setup, tmp_path, monkeypatch):
    """--student_init teacher: the weights that enter the training loop are the teacher file's, tensor for tensor
    (random: the architecture's init, which differs); a student of another architecture is refused by name."""
    started = {}

    def fit(args, mode, net, *a, **k):
        started[args.student_init] = {k: v.clone() for k, v in net.state_dict().items()}

    monkeypatch.setattr(engine, "fit", fit)
    # the fixture's teacher is the light init of seed 0, the student's own: a trained teacher differs from it
    teacher = {k: v + 1 if v.is_floating_point() else v
               for k, v in torch.load(setup["teacher"], weights_only=True).items()}
    torch.save(teacher, tmp_path / "trained.pth")
    for init in semi.STUDENT_INITS:
        train_kd.main(args_for(setup, tmp_path / init, "--student_init", init, "--teacher_weights",
                               str(tmp_path / "trained.pth")))
    assert set(started["teacher"]) == set(teacher)
    assert all(torch.equal(started["teacher"][k], teacher[k]) for k in teacher)
    assert not torch.equal(started["random"]["classifier.weight"], teacher["classifier.weight"])
    with pytest.raises(utils.UserError, match="--student_init teacher: the teacher weights .* do not fit the student"):
        train_kd.main(args_for(setup, tmp_path / "best", "--student_init", "teacher", "--model_name", "best"))
