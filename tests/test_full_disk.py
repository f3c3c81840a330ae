"""A full disk (a write made to fail with ENOSPC, no disk filled): one line naming the file and the space left, exit 2,
the last good checkpoint intact; under DDP every process stops instead of waiting in the next collective."""
import os
import subprocess
import sys

import torch

from conftest import ROOT, cli_env


def test_full_disk_on_rank_0_stops_both_processes(synthetic_root, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "tests", "ddp_worker.py"), "--root_dir", synthetic_root, "--epochs", "3",
           "--img_size", "32", "--batch_size", "2", "--num_workers", "0", "--device", "cpu", "--no_progress",
           "--save_dir", str(tmp_path / "w"), "--out", str(tmp_path), "--num_vis", "0"]
    env = dict(cli_env(), SEGKD_TEST_FULL_DISK="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"error: could not write {tmp_path / 'w' / 'regular_last.pth'}: No space left on device" in out, out[-3000:]
    assert "error: another process failed" in out, out[-3000:]  # rank 1 stopped too, with exit 2, not a hang
    # torchrun prints its own launcher trace when a process exits non-zero (and may stop the other one with SIGTERM
    # once the first has exited 2); the processes themselves print no trace
    assert "engine.py" not in out and "exitcode: 2" in out, out[-3000:]
    last = torch.load(tmp_path / "w" / "regular_last.pth", weights_only=True)
    assert last["epoch"] == 0 and not last["finished"]
