import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, cli_env


@pytest.mark.parametrize("extra", [[], ["--kd_method", "feature"], ["--kd_method", "cwd,mgd", "--mgd_hidden", "16"]],
                         ids=["scratch", "feature_kd", "cwd_mgd"])
def test_two_processes_gloo_end_identical(synthetic_root, torch_home, tmp_path, extra):
    """torchrun with 2 CPU processes: DDP keeps the replicas (student, alignment layers, MGD's generator) identical
    and every rank sees the same loss and mIoU; only rank 0 writes files. cwd,mgd: a logit method and a feature
    method in one loss, the stride-8 logits through DDP, MGD's random masks drawn per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           os.path.join(ROOT, "tests", "ddp_worker.py"), "--root_dir", synthetic_root, "--epochs", "2",
           "--img_size", "32", "--batch_size", "2", "--num_workers", "0", "--device", "cpu", "--no_progress",
           "--save_dir", str(tmp_path / "w"), "--out", str(tmp_path), "--num_vis", "0", *extra]
    proc = subprocess.run(cmd, cwd=tmp_path, env=cli_env(torch_home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for part in ("model", "criterion"):
        assert r0[part].keys() == r1[part].keys()
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k}"
    run = extra[1].replace(",", "_") if extra else "regular"
    if run == "feature":
        assert any(k.startswith("align.") for k in r0["criterion"])
    if run == "cwd_mgd":
        assert any(k.startswith("methods.mgd.generator.") for k in r0["criterion"])
    assert [h["val_miou"] for h in r0["history"]] == [h["val_miou"] for h in r1["history"]]
    assert [h["train_loss"] for h in r0["history"]] == [h["train_loss"] for h in r1["history"]]
    assert sorted(os.listdir(tmp_path / "w")) == sorted(
        f"{run}_{s}" for s in ("best.pth", "curves.png", "last.pth", "log.jsonl"))
