"""Distillation on images nobody labelled (train_kd.py --unlabeled, issue 22): they never reach the cross-entropy,
the teacher sees the student's augmented view, odd and bad files, weights at 0, leakage, exact resume, the stream's
split across processes."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import model
import train_kd
import unlabeled
import utils
from conftest import ROOT, kill_after_first_epoch, run_cli, spy_on_inputs
from dataset import make_synthetic_voc

SMALL = ["--img_size", "32", "--batch_size", "2", "--num_workers", "0", "--no_progress", "--num_vis", "0",
         "--teacher_arch", "light"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Labelled data (4 train, 2 val at 32 px; train_large holds 4 more), a light teacher's weights, and a folder of
    unlabelled images: nested, a grayscale, an RGBA and a 16-bit PNG, and a file that is no image."""
    base = tmp_path_factory.mktemp("unl")
    root = make_synthetic_voc(str(base / "data"), num_train=4, num_val=2, size=(32, 32), seed=2, num_extra=4)
    torch.manual_seed(0)
    torch.save(model.build_model("light", 21).state_dict(), base / "teacher.pth")
    pool = base / "pool"
    (pool / "a" / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8), "L").save(pool / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA").save(pool / "a" / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (32, 32), dtype=np.uint16)).save(pool / "a" / "b" / "deep16.png")
    (pool / "a" / "notes.txt").write_text("not an image")
    return {"root": root, "teacher": str(base / "teacher.pth"), "pool": str(pool), "base": base}


def args_for(setup, save_dir, *extra):
    return train_kd.get_args_parser().parse_args(
        ["--root_dir", setup["root"], *SMALL, "--teacher_weights", setup["teacher"], "--save_dir", str(save_dir),
         *extra])


def test_odd_files_train_and_the_bad_one_is_named(setup, tmp_path):
    """In its own process, as a user runs it: three images of three kinds are used, the text file is named and
    counted before training, and the run ends normally."""
    proc = run_cli([os.path.join(ROOT, "train_kd.py"), "--kd_method", "response", "--root_dir", setup["root"], *SMALL,
                    "--teacher_weights", setup["teacher"], "--save_dir", str(tmp_path / "w"), "--epochs", "1",
                    "--unlabeled", setup["pool"]], tmp_path)
    notes = os.path.join(setup["pool"], "a", "notes.txt")
    assert f"skipped {notes}: cannot read it as an image" in proc.stdout
    assert f"unlabeled: 3 images from {setup['pool']}, 1 unreadable file(s) skipped" in proc.stdout
    assert proc.stdout.index("unlabeled: 3 images") < proc.stdout.index("response epoch 0")
    images = unlabeled.UnlabeledImages(model_info(), unlabeled.list_files(setup["pool"]), (32, 32))
    assert len(images) == 3 and all(img.shape == (3, 32, 32) and (m == 255).all() for img, m in images)


def model_info():
    from dataset import VOC
    return VOC


def test_missing_empty_and_leaking_folders_stop_before_training(setup, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    leak = tmp_path / "leak"
    leak.mkdir()
    val_image = os.path.join(setup["root"], "VOCdevkit", "VOC2012", "JPEGImages", "synth_00004.jpg")
    shutil.copy(val_image, leak / "copy.jpg")
    for path, expected in ((tmp_path / "none", "no such folder"), (empty, "holds no files"),
                           (leak, f"byte-identical to images of the split being scored, first {leak / 'copy.jpg'}")):
        with pytest.raises(utils.UserError, match=expected.replace("(", r"\(")):
            train_kd.main(args_for(setup, tmp_path / "w", "--epochs", "1", "--unlabeled", str(path)))
        assert not (tmp_path / "w" / "response_log.jsonl").exists()


def test_unlabelled_images_never_reach_the_cross_entropy_and_the_teacher_sees_the_students_view(
        setup, tmp_path, monkeypatch):
    """Every step of a run with --unlabeled: the teacher's input is the student's input, the batch holds the
    labelled images and the unlabelled ones, and the CE logged equals the CE of the labelled images alone
    (computed here from the student's logits of that step)."""
    import losses

    seen = {**spy_on_inputs(monkeypatch), "targets": [], "ce": [], "labelled_ce": []}
    ce_forward = losses.SegmentationLoss.forward

    def ce(self, images, outputs, targets):
        out = ce_forward(self, images, outputs, targets)
        logits = outputs["logits"]
        labelled = (targets != 255).flatten(1).any(1)
        seen["targets"].append(targets.clone())
        seen["ce"].append(out["loss"].item())
        seen["labelled_ce"].append(F.cross_entropy(logits[labelled].float(), targets[labelled],
                                                   ignore_index=255).item())
        return out

    monkeypatch.setattr(losses.SegmentationLoss, "forward", ce)
    train_kd.main(args_for(setup, tmp_path / "w", "--epochs", "1", "--kd_method", "response,feature",
                           "--unlabeled", "split:train_large", "--unlabeled_batch", "3", "--geometric"))
    steps = len(seen["ce"])
    assert steps == 2 and len(seen["teacher"]) == steps and len(seen["student"]) >= steps
    for x_teacher, x_student, targets in zip(seen["teacher"], seen["student"], seen["targets"]):
        assert x_teacher.shape[0] == 2 + 3 and torch.equal(x_teacher, x_student)
        assert (targets[2:] == 255).all() and (targets[:2] != 255).any()
    assert seen["ce"] == pytest.approx(seen["labelled_ce"], rel=1e-6)


def test_weights_at_zero_bring_no_gradient_from_unlabelled_images(setup, tmp_path):
    """--alpha 0 with --unlabeled ends on exactly the weights of the labelled-only run; in the loss itself, a
    response term at weight 0 gives the unlabelled rows of the logits no gradient."""
    for name, extra in (("plain", []), ("unl", ["--unlabeled", setup["pool"]])):
        train_kd.main(args_for(setup, tmp_path / name, "--epochs", "1", "--alpha", "0", "--kd_method",
                               "response,feature", *extra))
    a = torch.load(tmp_path / "plain" / "response_feature_last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "unl" / "response_feature_last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    import losses

    class Teacher(torch.nn.Module):
        def forward(self, x, needs=None):
            return {"logits": torch.randn(x.shape[0], 5, 4, 4)}

    loss = losses.DistillationLoss(Teacher(), {"response": losses.ResponseKD(0.0)}, w_ce=1.0)
    logits = torch.randn(4, 5, 4, 4, requires_grad=True)
    targets = torch.randint(0, 5, (4, 4, 4))
    targets[2:] = 255  # the two unlabelled images
    loss(None, {"logits": logits}, targets)["loss"].backward()
    assert (logits.grad[2:] == 0).all() and (logits.grad[:2] != 0).any()


def test_stream_depends_on_epoch_and_step_only_and_splits_across_processes():
    class Loader:
        sampler = None

        def __init__(self, steps):
            self.steps = steps

        def __len__(self):
            return self.steps

    pool = list(range(7))
    one = unlabeled.MixedLoader(Loader(3), pool, 2, seed=5)
    again = unlabeled.MixedLoader(Loader(3), pool, 2, seed=5)
    assert one.draws(4) == again.draws(4) and one.draws(4) != one.draws(3)
    stream = [i for e in range(3) for i, _ in one.draws(e)]
    assert sorted(stream[:7]) == pool and sorted(stream[7:14]) == pool  # shuffled passes over the pool
    ranks = [unlabeled.MixedLoader(Loader(3), pool, 2, seed=5, rank=r, world=2).draws(0) for r in (0, 1)]
    both = unlabeled.MixedLoader(Loader(6), pool, 2, seed=5).draws(0)  # the same stream, twice as long
    assert [d for pair in zip(*ranks) for d in pair] == both


def test_sigkill_then_resume_matches_uninterrupted_run(setup, tmp_path):
    args = [os.path.join(ROOT, "train_kd.py"), "--kd_method", "response,mgd", "--mgd_hidden", "8", "--root_dir",
            setup["root"], *SMALL, "--teacher_weights", setup["teacher"], "--epochs", "3", "--seed", "3",
            "--unlabeled", setup["pool"], "--unlabeled_batch", "2", "--geometric"]
    run_cli(args + ["--save_dir", str(tmp_path / "a")], tmp_path)
    b = tmp_path / "b"
    kill_after_first_epoch(args, tmp_path, b, "response_mgd")
    log = b / "response_mgd_log.jsonl"
    run_cli(args + ["--save_dir", str(b), "--resume", "auto"], tmp_path)
    for name in ("model", "criterion"):
        a_w = torch.load(tmp_path / "a" / "response_mgd_last.pth", weights_only=True)[name]
        b_w = torch.load(b / "response_mgd_last.pth", weights_only=True)[name]
        assert all(torch.equal(a_w[k], b_w[k]) for k in a_w), name
    read = lambda p: [json.loads(x) for x in p.read_text().splitlines()]  # noqa: E731
    strip = lambda h: {k: v for k, v in h.items() if k != "epoch_time_s"}  # noqa: E731
    assert [strip(h) for h in read(tmp_path / "a" / "response_mgd_log.jsonl")] == [strip(h) for h in read(log)]
