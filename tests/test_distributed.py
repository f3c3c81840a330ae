import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import ROOT, cli_env
from dataset import DATASETS, build_dataset
from model import build_model
from utils import ConfusionMatrix

# Each rank runs tests/ddp_worker.py under this wrapper (`python -c`), which records every file the process opens for
# writing or renames into place (Python's audit events "open" and "os.rename", so every write of utils' atomic
# files is seen) and, at exit, lists them in $SEGKD_WRITES_DIR/writes_rank{RANK}.json: "only rank 0 writes" is then
# a fact about each process, not about a folder both share.
RECORD_WRITES = r"""
import atexit, json, os, runpy, sys
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
written = set()
def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
    elif event == "os.rename":  # os.replace too: the destination is written
        path, writing = args[1], True
    else:
        return
    if writing and isinstance(path, (str, bytes, os.PathLike)):
        written.add(os.path.abspath(os.fsdecode(path)))
def report():
    paths = sorted(written)
    with open(os.path.join(os.environ["SEGKD_WRITES_DIR"], f"writes_rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(paths, f)
sys.addaudithook(hook)
atexit.register(report)
sys.argv = sys.argv[1:]  # [worker, its flags...]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def whole_split_miou(state_dict, root, size, batch_size):
    """Val mIoU of the final weights over the whole val split, in this one process: each rank's batches in turn
    (rank r took images r, r + 2, ...; the same batches give the same logits), one thread as torchrun's workers."""
    info = DATASETS["voc"]
    model = build_model("light", info.num_classes)
    model.load_state_dict(state_dict)
    model = model.eval().to(memory_format=torch.channels_last)
    val_set = build_dataset("voc", root, "val", size, train=False)
    cm = ConfusionMatrix(info.num_classes, info.ignore_index)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rank in (0, 1):
            for images, targets in DataLoader(val_set, batch_size=batch_size, sampler=range(rank, len(val_set), 2)):
                with torch.no_grad():
                    cm.update(model(images.contiguous(memory_format=torch.channels_last)).argmax(1), targets)
    finally:
        torch.set_num_threads(threads)
    return cm.compute()["miou"]


@pytest.mark.parametrize("extra", [[], ["--kd_method", "feature"], ["--kd_method", "cwd,mgd", "--mgd_hidden", "16"],
                                   ["--kd_method", "response", "--unlabeled", "split:train", "--unlabeled_batch", "2"]],
                         ids=["scratch", "feature_kd", "cwd_mgd", "response_unlabeled"])
def test_two_processes_gloo_end_identical(synthetic_root, torch_home, tmp_path, extra):
    """torchrun with 2 CPU processes: DDP keeps the replicas (student, alignment layers, MGD's generator) identical;
    the val mIoU every rank logs is the whole split's (both ranks' halves reduced), not a rank's own half; only rank
    0 writes into --save_dir. cwd,mgd: a logit method and a feature method in one loss, the stride-8 logits through
    DDP, MGD's random masks drawn per process."""
    save_dir = tmp_path / "w"
    # --standalone: the rendezvous takes a free port, so two suites on one machine do not collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
           sys.executable, "-c", RECORD_WRITES, os.path.join(ROOT, "tests", "ddp_worker.py"),
           "--root_dir", synthetic_root, "--epochs", "2", "--img_size", "32", "--batch_size", "2", "--num_workers",
           "0", "--device", "cpu", "--no_progress", "--save_dir", str(save_dir), "--out", str(tmp_path),
           "--num_vis", "0", *extra]
    env = dict(cli_env(torch_home), SEGKD_WRITES_DIR=str(tmp_path))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for part in ("model", "criterion"):
        assert r0[part].keys() == r1[part].keys()
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k}"
    run = extra[1].replace(",", "_") if extra else "regular"
    if run == "feature":
        assert any(".align." in f".{k}" for k in r0["criterion"])  # the alignment convs, under whatever prefix
    if run == "cwd_mgd":
        assert any(k.startswith("methods.mgd.generator.") for k in r0["criterion"])

    # The last epoch's val mIoU (the final weights) is the whole split's, as one process computes it here.
    miou = whole_split_miou(r0["model"], synthetic_root, (32, 32), batch_size=2)
    assert abs(r0["history"][-1]["val_miou"] - miou) < 1e-6, (r0["history"][-1]["val_miou"], miou)

    # Who wrote what: rank 1 nothing under --save_dir (not even a temp file), rank 0 every file there.
    files = sorted(os.listdir(save_dir))
    assert files == sorted(f"{run}_{s}" for s in ("best.pth", "curves.png", "last.pth", "log.jsonl"))
    written = [[p for p in json.loads((tmp_path / f"writes_rank{r}.json").read_text())
                if os.path.dirname(p) == str(save_dir)] for r in (0, 1)]
    assert written[1] == [], written[1]
    assert set(files) <= {os.path.basename(p) for p in written[0]}, written[0]
