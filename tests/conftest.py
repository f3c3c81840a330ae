"""Shared fixtures: a tiny synthetic VOC-layout dataset and torchvision-format teacher weights, both made here
(the tests never touch the network or ../shared)."""
import os
import runpy
import subprocess
import sys

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores (README: pytest -n 2): one compute thread each, in-process and in every script a test
    # starts, instead of two apiece fighting (OpenMP's spin-waiting made oversubscribed runs several times slower).
    os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = os.path.join(ROOT, "tests", "offline")  # its sitecustomize.py refuses downloads (read it)
sys.path.insert(0, ROOT)
runpy.run_path(os.path.join(OFFLINE, "sitecustomize.py"))  # this process offline too

from dataset import make_synthetic_voc  # noqa: E402
from teacher import VOC_WEIGHTS  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_voc(str(out), num_train=8, num_val=4, size=(40, 48), seed=0)


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A torch hub cache holding a random fcn_resnet50 state dict under torchvision's own file name and keys
    (aux head included, as in COCO_WITH_VOC_LABELS_V1), standing in for the real download."""
    from torchvision.models.segmentation import fcn_resnet50

    home = tmp_path_factory.mktemp("torch_home")
    path = hub_file(str(home))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(0)
    torch.save(fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).state_dict(), path)
    return str(home)


def cli_env(torch_home=None):
    """The environment of a script a test starts: offline (tests/offline on PYTHONPATH), unbuffered, no display."""
    path = os.pathsep.join(p for p in (OFFLINE, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    if torch_home:
        env["TORCH_HOME"] = torch_home
    return env


def run_cli(args, cwd, torch_home=None, check=True, timeout=300):
    """Run one of the repo's scripts as a user would, in its own process."""
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=cli_env(torch_home), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def hub_file(torch_home, arch="fcn_resnet50"):
    """Where torch_home's hub cache holds torchvision's VOC weights of `arch` (the file a user's download makes)."""
    return os.path.join(torch_home, "hub", "checkpoints", os.path.basename(VOC_WEIGHTS[arch].url))


def kill_after_first_epoch(args, cwd, save_dir, run):
    """Start a training command, SIGKILL it once RUN_log.jsonl holds an epoch; returns its RUN_last.pth as left."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, *args, "--save_dir", str(save_dir)], cwd=cwd, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = os.path.join(save_dir, f"{run}_log.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and not (os.path.exists(log) and open(log).read().count("\n") >= 1):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = torch.load(os.path.join(save_dir, f"{run}_last.pth"), weights_only=True)
    assert not last["finished"], "the run ended before it was killed: nothing was tested"
    return last


def spy_on_inputs(monkeypatch):
    """Record what the networks are given: every training forward of the light student and every teacher forward
    (teacher.FrozenTeacher). Returns {"student": [inputs], "teacher": [inputs]}, filled as the run goes."""
    import model
    from teacher import FrozenTeacher

    seen = {"student": [], "teacher": []}
    student_forward, teacher_forward = model.LightSegNet.forward, FrozenTeacher.forward

    def student(self, x, *a, **k):
        if self.training:
            seen["student"].append(x.detach().clone())
        return student_forward(self, x, *a, **k)

    def teacher(self, x, *a, **k):
        seen["teacher"].append(x.detach().clone())
        return teacher_forward(self, x, *a, **k)

    monkeypatch.setattr(model.LightSegNet, "forward", student)
    monkeypatch.setattr(FrozenTeacher, "forward", teacher)
    return seen
