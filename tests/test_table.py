"""The seeded table (experiments.py --seeds ... --split dev): every method over several seeds, each number a run's
last epoch, on CamVid's development split; checked against the runs' own logs, computed here independently."""
import csv
import json
import os

import numpy as np
from PIL import Image

from conftest import ROOT, run_cli


def write_camvid(root, rng):
    """A SegNet-layout CamVid folder: train holds the development sequence 0001TP and another one."""
    frames = {"train": [f"0001TP_{i:06d}.png" for i in range(4)] + [f"0006R0_f{i:05d}.png" for i in range(6)],
              "val": [f"0016E5_{i:05d}.png" for i in range(3)]}
    for split, names in frames.items():
        os.makedirs(root / split), os.makedirs(root / f"{split}annot")
        for name in names:
            mask = rng.integers(0, 12, (24, 32), dtype=np.uint8)
            image = mask[..., None] * 20 + rng.integers(0, 30, (24, 32, 3))
            Image.fromarray(mask).save(root / f"{split}annot" / name)
            Image.fromarray(image.astype(np.uint8)).save(root / split / name)


def last_miou(weights, run):
    with open(weights / f"{run}_log.jsonl") as f:
        return [json.loads(line) for line in f][-1]["val_miou"]


def test_seeded_table_on_the_development_split(tmp_path, torch_home):
    write_camvid(tmp_path / "camvid", np.random.default_rng(0))
    out = tmp_path / "out"
    proc = run_cli([os.path.join(ROOT, "experiments.py"), "--preset", "camvid", "--root_dir", str(tmp_path / "camvid"),
                    "--img_size", "24", "32", "--teacher_epochs", "1", "--student_epochs", "1", "--seeds", "0,1",
                    "--methods", "response+cwd", "--split", "dev", "--out_dir", str(out), "--num_workers", "0",
                    "--device", "cpu", "--extra", "--batch_size 4"], tmp_path, torch_home, timeout=600)
    # every training run trained on the 6 frames outside 0001TP and was scored on the 4 frames of 0001TP
    for run in ("teacher", "scratch_s0", "scratch_s1", "response+cwd_s0", "response+cwd_s1"):
        log = (out / f"{run}.out").read_text()
        assert "6 images from split 'train_no_dev'" in log and "4 images from split 'dev'" in log, run
    assert "--kd_method response,cwd" in proc.stdout
    assert "guard: teacher" in proc.stdout

    weights = out / "weights"
    teacher = last_miou(weights, "teacher")
    scratch = [last_miou(weights, f"scratch_s{s}") for s in (0, 1)]
    kd = [last_miou(weights, f"response+cwd_s{s}") for s in (0, 1)]
    with open(out / "results_seeds.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["teacher", "scratch", "response+cwd"]
    assert {"method", "seeds", "mean_miou", "min_miou", "max_miou", "gain", "gap_closed"} <= set(rows["scratch"])
    assert rows["teacher"]["seeds"] == "1" and rows["scratch"]["seeds"] == "2"
    assert abs(float(rows["teacher"]["mean_miou"]) - teacher) < 1e-4
    for name, values in (("scratch", scratch), ("response+cwd", kd)):
        r = rows[name]
        assert abs(float(r["mean_miou"]) - (values[0] + values[1]) / 2) < 1e-4
        assert abs(float(r["min_miou"]) - min(values)) < 1e-4 and abs(float(r["max_miou"]) - max(values)) < 1e-4
    gain = (kd[0] + kd[1]) / 2 - (scratch[0] + scratch[1]) / 2
    assert abs(float(rows["response+cwd"]["gain"]) - gain) < 1e-4
    # the bar for a margin: the gain less the KD runs' and the scratch runs' max-min ranges
    beyond = gain - (max(kd) - min(kd)) - (max(scratch) - min(scratch))
    assert abs(float(rows["response+cwd"]["gain_beyond_ranges"]) - beyond) < 1e-4
    assert rows["scratch"]["gain_beyond_ranges"] == "" and rows["teacher"]["gain_beyond_ranges"] == ""
    gap = teacher - (scratch[0] + scratch[1]) / 2
    if gap > 0:
        assert abs(float(rows["response+cwd"]["gap_closed"]) - gain / gap) < 1e-3
    else:  # no gap to close: the guard says so, and the column stays empty
        assert rows["response+cwd"]["gap_closed"] == "" and "NOT BETTER" in proc.stdout
    assert (out / "curves_seeds.png").stat().st_size > 0
    md = (out / "results_seeds.md").read_text()
    assert "Split `dev`" in md and "- student lr 5e-3: val" in md  # the preset's record of what chose each value
