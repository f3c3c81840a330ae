"""The five commands of the README, as a user types them (only --root_dir and size flags added), each in its own
process, then the errors a user can meet."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT, cli_env, hub_file, kill_after_first_epoch, run_cli

SMALL = ["--img_size", "32", "--batch_size", "4", "--num_workers", "0", "--no_progress"]


def script(name):
    return os.path.join(ROOT, name)


@pytest.fixture(scope="module")
def pipeline(synthetic_root, torch_home, tmp_path_factory):
    """regular -> response -> feature -> the four test rows, in one working folder. The teacher is torchvision's
    fcn_resnet50 file in the hub cache (torch_home: random weights under the real name and keys), as for a user."""
    cwd = tmp_path_factory.mktemp("pipeline")
    data = ["--root_dir", synthetic_root]
    out = {"cwd": cwd}
    out["regular"] = run_cli([script("train.py"), "--model_name", "light", "--epochs", "2", *data,
                              "--img_size", "32", "--batch_size", "4", "--num_workers", "1", "--no_progress"],
                             cwd, torch_home)
    out["response"] = run_cli([script("train_kd.py"), "--kd_method", "response", "--temperature", "4", "--alpha",
                               "0.3", "--epochs", "1", *data, *SMALL], cwd, torch_home)
    out["feature"] = run_cli([script("train_kd.py"), "--kd_method", "feature", "--model_name", "light",
                              "--epochs", "1", *data, *SMALL], cwd, torch_home)
    for mode in ("teacher", "regular", "response", "feature"):
        out[f"test_{mode}"] = run_cli([script("test.py"), "--training_mode", mode, *data, "--img_size", "32",
                                       "--num_workers", "0", "--no_progress", "--num_vis", "2"], cwd, torch_home)
    return out


def test_model_summary():
    proc = run_cli([script("model.py"), "--m", "light", "--img_size", "64"], ROOT)
    assert "Total params: 13,317,141" in proc.stdout  # the torchsummary table
    assert "total parameters: 13,317,141" in proc.stdout and "GFLOP" in proc.stdout
    assert "14,652,181" in proc.stdout  # the original's count, its alignment convs included
    best = run_cli([script("model.py"), "-m", "best", "--img_size", "64", "--no_table"], ROOT)
    # the model named is the one summarised: torchvision's fcn_resnet50 for 21 classes, counted here independently
    from torchvision.models.segmentation import fcn_resnet50

    n = sum(p.numel() for p in fcn_resnet50(weights=None, weights_backbone=None, num_classes=21).parameters())
    assert f"total parameters: {n:,}" in best.stdout and "13,317,141" not in best.stdout


def test_training_writes_checkpoints_logs_and_pictures(pipeline):
    w = pipeline["cwd"] / "weights"
    missing = [f"{run}_{suffix}" for run in ("regular", "response", "feature")
               for suffix in ("best.pth", "last.pth", "log.jsonl", "curves.png", "predictions.png")
               if not (w / f"{run}_{suffix}").is_file()]
    assert missing == []


def test_logs_hold_one_line_per_epoch_and_the_loss_parts(pipeline):
    w = pipeline["cwd"] / "weights"
    assert [json.loads(x)["epoch"] for x in (w / "regular_log.jsonl").read_text().splitlines()] == [0, 1]
    kd = json.loads((w / "response_log.jsonl").read_text().splitlines()[0])
    assert {"train_loss", "train_ce", "train_kd", "val_miou"} <= kd.keys()


def test_kd_checkpoints_keep_the_loss_parts_out_of_the_network(pipeline):
    """RUN_best.pth holds the student alone; RUN_last.pth the resumable state, the loss's alignment convs included."""
    w = pipeline["cwd"] / "weights"
    ckpt = torch.load(w / "feature_best.pth", weights_only=True)
    assert ckpt["model_name"] == "light" and not any(k.startswith("align") for k in ckpt["model"])
    last = torch.load(w / "feature_last.pth", weights_only=True)  # resumable state, plain types only
    assert {"optimizer", "lr_scheduler", "early_stopping", "rng", "epoch", "args", "criterion"} <= last.keys()
    assert any(k.startswith("feature.convs.") for k in last["criterion"])  # the loss's alignment convs, not the teacher


def test_default_teacher_is_torchvisions_file_in_the_hub_cache(pipeline):
    assert os.path.basename(hub_file("")) in pipeline["response"].stdout.split("teacher: fcn_resnet50 from ")[1]


def results_rows(cwd):
    with open(cwd / "results.csv") as f:
        return {r["training_mode"]: r for r in csv.DictReader(f)}


def test_results_csv_has_four_rows_in_the_original_columns(pipeline):
    assert list(results_rows(pipeline["cwd"])) == ["teacher", "regular", "response", "feature"]
    header = open(pipeline["cwd"] / "results.csv").readline().strip().split(",")
    assert header[:4] == ["training_mode", "mIoU_with_ignore", "mIoU_without_ignore", "avg_inference_time_ms"]
    assert (pipeline["cwd"] / "visualizations" / "feature_0.png").is_file()


def numpy_miou(pred, target, num_classes, clamp):
    """IoU per class over every pixel of the split, then the mean over the classes present in prediction or target
    (NumPy). clamp=False: pixels labelled 255 left out; clamp=True: the original's, 255 counted as the last class."""
    pred, target = pred.ravel(), target.ravel()
    if clamp:
        target = np.where(target == 255, num_classes - 1, target)
    else:
        pred, target = pred[target != 255], target[target != 255]
    ious = []
    for c in range(num_classes):
        union = np.sum((pred == c) | (target == c))
        if union:
            ious.append(np.sum((pred == c) & (target == c)) / union)
    return float(np.mean(ious))


@pytest.mark.parametrize("mode", ["regular", "response", "feature"])
def test_reported_miou_is_the_checkpoints_miou_on_the_val_split(pipeline, synthetic_root, mode):
    """What test.py prints and writes is the mIoU of MODE_best.pth's predictions on the val images, counted here
    apart: the checkpoint's weights in a freshly built network, every val image in one batch, a NumPy count."""
    from dataset import build_dataset
    from model import build_model

    ckpt = torch.load(pipeline["cwd"] / "weights" / f"{mode}_best.pth", weights_only=True)
    net = build_model(ckpt["model_name"], ckpt["num_classes"])
    net.load_state_dict(ckpt["model"])
    net = net.eval().to(memory_format=torch.channels_last)  # as test.py runs it
    val = build_dataset("voc", synthetic_root, "val", (32, 32), train=False)
    images = torch.stack([val[i][0] for i in range(len(val))]).contiguous(memory_format=torch.channels_last)
    masks = np.stack([val[i][1].numpy() for i in range(len(val))])
    with torch.no_grad():
        pred = net(images).argmax(1).numpy()
    row = results_rows(pipeline["cwd"])[mode]
    want, want_clamped = numpy_miou(pred, masks, 21, clamp=False), numpy_miou(pred, masks, 21, clamp=True)
    assert abs(float(row["mIoU_with_ignore"]) - want) <= 5e-5 + 1e-9  # the csv keeps 4 decimals
    assert abs(float(row["mIoU_without_ignore"]) - want_clamped) <= 5e-5 + 1e-9
    assert f"mIoU (255 excluded):            {want:.4f}" in pipeline[f"test_{mode}"].stdout


def test_reported_miou_is_what_training_validated_for_the_same_weights(pipeline):
    """regular_best.pth was saved at one epoch; the training log's val_miou of that epoch is test.py's number
    (one metric implementation, the same val split and size)."""
    w = pipeline["cwd"] / "weights"
    epoch = torch.load(w / "regular_best.pth", weights_only=True)["epoch"]
    lines = [json.loads(x) for x in (w / "regular_log.jsonl").read_text().splitlines()]
    logged = {line["epoch"]: line["val_miou"] for line in lines}
    assert results_rows(pipeline["cwd"])["regular"]["mIoU_with_ignore"] == f"{logged[epoch]:.4f}"


def test_inference_time_is_per_image_in_ms_without_the_warm_up_batch(pipeline, synthetic_root, tmp_path, monkeypatch):
    """A clock that only the network moves: batch 0 (warm-up) takes 1 s, batch 1 (two images) 0.25 s, so 125 ms per
    image. Counting the warm-up would give 312.5, per batch 250, in seconds 0.125."""
    import engine
    import test as test_script

    now, costs = [0.0], iter([1.0, 0.25])
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    load_network = test_script.load_network

    class Clocked(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            now[0] += next(costs)
            return self.net(x)

    monkeypatch.setattr(test_script, "load_network", lambda *a: (Clocked(load_network(*a)[0]), "clocked"))
    args = test_script.get_args_parser().parse_args([
        "--training_mode", "regular", "--weights", str(pipeline["cwd"] / "weights" / "regular_best.pth"),
        "--root_dir", synthetic_root, "--img_size", "32", "--batch_size", "2", "--num_workers", "0", "--device",
        "cpu", "--no_progress", "--num_vis", "0", "--results_csv", str(tmp_path / "results.csv")])
    assert test_script.main(args)["avg_inference_time_ms"] == 125.0
    assert results_rows(tmp_path)["regular"]["avg_inference_time_ms"] == "125.000"


@pytest.mark.parametrize("module,argv,expected", [
    ("train_kd", ["--alpha", "1.5"], "--alpha 1.5"),
    ("train_kd", ["--temperature", "0"], "--temperature 0.0"),
    ("train", ["--batch_size", "0"], "--batch_size 0"),
    ("train", ["--num_workers", "-2"], "--num_workers -2"),
])
def test_bad_flags_are_one_clear_message(module, argv, expected, synthetic_root, monkeypatch, capsys):
    """The scripts' own entry point (engine.run_cli with each script's rules), in this process: exit 2 before any
    data or network is touched."""
    import importlib

    mod = importlib.import_module(module)
    monkeypatch.setattr(sys, "argv", [module + ".py", *argv, "--root_dir", synthetic_root])
    rules = mod.rules() if hasattr(mod, "rules") else ()
    with pytest.raises(SystemExit) as exit_:
        from engine import run_cli as engine_run_cli

        engine_run_cli(lambda args: pytest.fail("training started"), mod.get_args_parser(), rules=rules)
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err


def test_errors_are_one_clear_message(synthetic_root, tmp_path):
    data = ["--root_dir", synthetic_root]
    cases = [
        ([script("train.py"), "--root_dir", str(tmp_path / "none")], "VOCdevkit"),
        ([script("test.py"), "--training_mode", "response", *data, "--save_dir", str(tmp_path)],
         "python train_kd.py --kd_method response"),
        ([script("train_kd.py"), *data, *SMALL, "--save_dir", str(tmp_path / "w")], "Three ways out"),
    ]
    for args, expected in cases:
        proc = run_cli(args, tmp_path, torch_home=str(tmp_path / "empty_home"), check=False)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert expected in proc.stderr, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        assert " epoch 0:" not in proc.stdout  # it stopped before training, not after a run


def test_bad_checkpoints(pipeline, synthetic_root, tmp_path):
    data = ["--root_dir", synthetic_root, *SMALL, "--epochs", "1"]
    w = pipeline["cwd"] / "weights"
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes((w / "regular_best.pth").read_bytes()[:1000])
    proc = run_cli([script("test.py"), "--weights", str(corrupt), *data[:2], "--img_size", "32"], tmp_path,
                   check=False)
    assert proc.returncode == 2 and str(corrupt) in proc.stderr and "corrupt" in proc.stderr
    proc = run_cli([script("train.py"), "--model_name", "best", "--resume", str(w / "regular_last.pth"), *data,
                    "--save_dir", str(tmp_path)], tmp_path, check=False)
    assert proc.returncode == 2 and "holds a light with 21 classes" in proc.stderr


def last_weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_sigkill_then_resume_matches_uninterrupted_run(synthetic_root, tmp_path):
    args = [script("train.py"), "--root_dir", synthetic_root, "--epochs", "3", "--img_size", "32",
            "--batch_size", "2", "--num_workers", "0", "--no_progress", "--num_vis", "0", "--seed", "3"]
    run_cli(args + ["--save_dir", str(tmp_path / "a")], tmp_path)
    a_lines = (tmp_path / "a" / "regular_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in a_lines] == [0, 1, 2]
    b = tmp_path / "b"
    kill_after_first_epoch(args, tmp_path, b, "regular")
    log = b / "regular_log.jsonl"
    resumed = run_cli(args + ["--save_dir", str(b), "--resume", "auto"], tmp_path)
    assert f"resumed from {b / 'regular_last.pth'}" in resumed.stdout
    a_w, b_w = last_weights(tmp_path / "a" / "regular_last.pth"), last_weights(b / "regular_last.pth")
    for k in a_w:
        assert torch.equal(a_w[k], b_w[k]), k
    a_log = [json.loads(x)["val_miou"] for x in (tmp_path / "a" / "regular_log.jsonl").read_text().splitlines()]
    b_log = [json.loads(x)["val_miou"] for x in log.read_text().splitlines()]
    assert a_log == b_log
    again = run_cli(args + ["--save_dir", str(b), "--resume", "auto", "--log_interval", "7"], tmp_path)
    assert "already finished" in again.stdout  # a flag of how the run is carried out may change
    before = (b / "regular_last.pth").read_bytes()
    other = run_cli([*args[:-2], "--seed", "4", "--save_dir", str(b), "--resume", "auto", "--augment", "strong"],
                    tmp_path, check=False)  # another recipe: neither resumed nor skipped as finished
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
    assert "--augment 'train' there, 'strong' here" in other.stderr and "--seed 3 there, 4 here" in other.stderr
    assert (b / "regular_last.pth").read_bytes() == before
    # started afresh (no --resume) over a finished run: its log holds its own epoch only, not the earlier run's too
    run_cli([*args[:-2], "--seed", "4", "--epochs", "1", "--save_dir", str(b)], tmp_path)
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [0]


ALPHA0_COMMON = ["--epochs", "2", *SMALL, "--num_vis", "0", "--seed", "5", "--optimizer", "adamw", "--augment", "kd",
                 "--geometric"]


@pytest.fixture(scope="module")
def scratch_run(synthetic_root, torch_home, tmp_path_factory):
    out = tmp_path_factory.mktemp("scratch_run")
    run_cli([script("train.py"), "--root_dir", synthetic_root, *ALPHA0_COMMON, "--save_dir", str(out)], out,
            torch_home)
    return out / "regular_last.pth"


@pytest.mark.parametrize("method", ["response", "feature"])
def test_kd_with_alpha_zero_reproduces_scratch_run(scratch_run, synthetic_root, torch_home, tmp_path, method):
    """Same seed, optimizer, schedule and augmentation: the distillation term is the only difference."""
    run_cli([script("train_kd.py"), "--kd_method", method, "--alpha", "0", "--root_dir", synthetic_root,
             *ALPHA0_COMMON, "--save_dir", str(tmp_path / "b"), "--teacher_weights",
             hub_file(torch_home)], tmp_path, torch_home)
    a = last_weights(scratch_run)
    b = last_weights(tmp_path / "b" / f"{method}_last.pth")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ctrl_c_saves_weights_and_keeps_last_checkpoint(synthetic_root, tmp_path):
    args = [sys.executable, script("train.py"), "--root_dir", synthetic_root, "--epochs", "50", *SMALL,
            "--num_vis", "0", "--save_dir", str(tmp_path)]
    # A shell's background job (`pytest ... &`, nohup, some CI runners) starts with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: the child restores the default disposition, as a terminal's would be.
    proc = subprocess.Popen(args, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = tmp_path / "regular_log.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not log.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume auto" in err and "Traceback" not in err
    assert (tmp_path / "regular_interrupted.pth").is_file()
    last = torch.load(tmp_path / "regular_last.pth", weights_only=True)
    assert not last["finished"] and last["epoch"] >= 0


def test_experiments_recipe_runs_and_skips_finished_steps(torch_home, tmp_path):
    # a small set of the demo's kind: the students' train split, the teacher's larger train_large and the new
    # images of the @u rows
    from dataset import make_synthetic_voc

    root = make_synthetic_voc(str(tmp_path / "data"), num_train=8, num_val=4, size=(40, 48), num_extra=8,
                              num_unlabeled=8)
    args = [script("experiments.py"), "--preset", "demo", "--root_dir", root, "--out_dir",
            str(tmp_path / "out"), "--teacher_epochs", "1", "--student_epochs", "1", "--num_workers", "0",
            "--device", "cpu", "--img_size", "32", "--extra", "--batch_size 4"]
    first = run_cli(args, tmp_path, torch_home, timeout=600)
    teacher_log = (tmp_path / "out" / "teacher.out").read_text()
    assert "16 images from split 'train_large'" in teacher_log  # the teacher's set: the students' 8 + 8 more
    assert "8 images from split 'train'" in (tmp_path / "out" / "scratch_s0.out").read_text()
    table = (tmp_path / "out" / "results.md").read_text()
    for name in ("teacher", "student from scratch", "student, response KD", "student, feature KD",
                 "student, response KD + unlabelled images", "student, feature KD + unlabelled images"):
        assert f"| {name} |" in table
    assert "unlabeled: 8 images from split:unlabeled" in (tmp_path / "out" / "response@u_s0.out").read_text()
    assert (tmp_path / "out" / "curves.png").is_file()
    # every student at one thread count, the odd one out (five students, two at a time) included
    threads = {line.split(" (started, ")[0]: line.split(" (started, ")[1].split(" thread")[0]
               for line in first.stdout.splitlines() if line.startswith("=== ") and " (started, " in line}
    if threads:  # --jobs auto runs them in turn (no thread count set) on a single core
        assert len(threads) == 6 and len({t for run, t in threads.items() if run != "=== teacher"}) == 1
    assert first.stdout.count("already finished") == 0
    again = run_cli([*args, "--modes", "teacher,regular"], tmp_path, torch_home, timeout=600)
    assert again.stdout.count("already finished") == 2  # each asked-for step is skipped, not retrained


def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(synthetic_root, tmp_path, monkeypatch, capsys):
    """A write that fails with ENOSPC in epoch 1 (made to, not by filling a disk): one line naming the file and the
    space left, exit 2, and RUN_last.pth still the complete epoch 0."""
    import errno

    import train
    import utils

    real = utils._atomic_write

    def full_after_first_epoch(path, folder, data):
        if path.endswith("regular_last.pth") and os.path.exists(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path + ".tmp")
        return real(path, folder, data)

    monkeypatch.setattr(utils, "_atomic_write", full_after_first_epoch)
    args = train.get_args_parser().parse_args(["--root_dir", synthetic_root, "--epochs", "3", *SMALL, "--num_vis",
                                               "0", "--save_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        utils.run_cli(train.main, args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"error: could not write {tmp_path / 'regular_last.pth'}: No space left on device (")
    assert "free on that filesystem" in err
    last = torch.load(tmp_path / "regular_last.pth", weights_only=True)
    assert last["epoch"] == 0 and not last["finished"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.parametrize("link", ["cause", "context"])
def test_ctrl_c_inside_an_import_exits_130_and_other_errors_still_raise(link, monkeypatch):
    """Ctrl-C while a C extension initialises (matplotlib at the first epoch's curves) surfaces as an ImportError
    chained to the KeyboardInterrupt: the command still stops as Ctrl-C does (130); an error without one is raised.
    (_stop leaves a Ctrl-C by os._exit, which would end pytest: here it raises the SystemExit it was asked for.)"""
    import utils

    def stop(code):
        raise SystemExit(code)

    monkeypatch.setattr(utils, "_stop", stop)

    def interrupted_import(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as k:
            if link == "cause":
                raise ImportError("initialization failed") from k
            raise ImportError("initialization failed")

    with pytest.raises(SystemExit) as exit_:
        utils.run_cli(interrupted_import, None)
    assert exit_.value.code == 130

    def broken(args):
        raise ImportError("initialization failed")

    with pytest.raises(ImportError):
        utils.run_cli(broken, None)
