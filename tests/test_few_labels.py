"""The honest few-label preset (experiments.py --preset camvid_few, issue 36): no network of the table, the teacher
included, learns from a mask outside the labelled quarter; every student row but scratch_all_b8 takes the same steps
and images a step; the table counts each row's masks and its share of the label gap."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

import experiments
import reports
from conftest import ROOT, cli_env

SPY = os.path.join(ROOT, "tests", "mask_spy")  # its sitecustomize.py records every mask a script decodes


def write_frames(root, sequences, size=(32, 32), seed=0):
    """A SegNet-layout CamVid folder, split -> {sequence: frames}: masks of classes 0-10 and 11 (ignored)."""
    rng = np.random.default_rng(seed)
    for split, runs in sequences.items():
        os.makedirs(root / split), os.makedirs(root / f"{split}annot")
        for seq, count in runs.items():
            for i in range(count):
                mask = rng.integers(0, 12, size, dtype=np.uint8)
                Image.fromarray(mask).save(root / f"{split}annot" / f"{seq}_{i:05d}.png")
                image = (mask[..., None] * 20 + rng.integers(0, 30, (*size, 3))).astype(np.uint8)
                Image.fromarray(image).save(root / split / f"{seq}_{i:05d}.png")
    return root


# ---- the plan: 136 train frames (8 of 0001TP, 128 of 0006R0), a labelled quarter of 2 + 32 ------------------------
@pytest.fixture(scope="module")
def camvid136(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("camvid136") / "camvid",
                        {"train": {"0001TP": 8, "0006R0": 128}, "val": {"0016E5": 2}}, size=(8, 8))


def plan_of(root, preset="camvid_few", *flags):
    args = experiments.get_args_parser().parse_args(["--preset", preset, "--root_dir", str(root), "--seeds", "0",
                                                     *flags])
    data = {"dataset": "camvid", "root_dir": str(root), "img_size": ["8"]}
    return experiments.make_plan(args, experiments.PRESETS[preset], data, "/w")


def test_the_teacher_learns_the_labelled_quarter_for_the_camvid_teachers_steps(camvid136):
    """camvid's teacher: 120 epochs of 136 // 8 = 17 steps (2040); the quarter's 34 frames give 4: 510 epochs."""
    flags = plan_of(camvid136).teacher.flags
    assert (flags["train_split"], flags["epochs"]) == ("train_quarter", 510)


def test_every_student_row_but_b8_takes_the_same_steps_and_images_a_step(camvid136):
    """The camvid table's scratch student: 30 x 17 = 510 steps; a batch of 16 on 34 frames: 2 steps an epoch."""
    plan = plan_of(camvid136)
    budgets = {r.method: (int(r.flags["epochs"]) * plan.few["rows"][r.method]["steps_per_epoch"],
                          plan.few["rows"][r.method]["batch"] + plan.few["rows"][r.method]["unlabeled_batch"])
               for r in plan.students if r.method != "scratch_all_b8"}
    assert set(budgets.values()) == {(510, 16)} and len(budgets) == 6
    assert {r.flags["steps_per_epoch"] for r in plan.students if r.method != "scratch_all_b8"} == {2}


def test_scratch_all_b8_is_the_full_teacher_tables_scratch_all(camvid136):
    (b8,) = [r for r in plan_of(camvid136).students if r.method == "scratch_all_b8"]
    (old,) = [r for r in plan_of(camvid136, "camvid_few_full_teacher").students if r.method == "scratch_all"]
    # flag for flag but the val split's scoring cadence, which leaves the weights as they are (test_eval_every.py)
    assert b8.flags.pop("eval_every") == 5 and "eval_every" not in old.flags
    assert {**b8.flags, "run_name": ""} == {**old.flags, "run_name": ""}


def test_each_rows_masks_are_counted_from_the_splits(camvid136):
    rows = plan_of(camvid136).few["rows"]
    assert {m: r["masks"] for m, r in rows.items()} == {
        "scratch": 34, "scratch_all": 136, "scratch_all_b8": 136, "response": 34, "response@u": 34,
        "feature+cwd": 34, "feature+cwd@u": 34}


def test_label_gap_recovered_by_hand():
    """scratch 0.30, scratch_all 0.40: a row at 0.36 recovers 60% of the label gap."""
    table = [{"method": m, "mean_miou": v} for m, v in (("teacher", 0.35), ("scratch", 0.30), ("scratch_all", 0.40),
                                                        ("response@u", 0.36))]
    reports.label_gap(table)
    got = [round(r["label_gap_recovered"], 9) for r in table]
    assert got == [0.5, 0.0, 1.0, 0.6]


# ---- no mask outside the labelled quarter reaches a network ----------------------------------------------------------
# "Reaches a network" is taken as: decoded (pixels, not a header) by a training process (train.py, train_kd.py): there
# the only reader of train masks is the training set, whose decoded masks are the targets. Header pre-flights and the
# listing of splits (experiments.py counting masks) open files without decoding them; test.py decodes val's masks.
def spy_env(log):
    env = cli_env()
    return dict(env, PYTHONPATH=os.pathsep.join([SPY, env["PYTHONPATH"]]), SEGKD_MASK_SPY=str(log))


def decoded_train_masks(log):
    """{run: {mask paths of trainannot decoded by a training script}} from the spy's log."""
    runs = {}
    for line in log.read_text().splitlines():
        script, run, path = line.split("\t")
        if script in ("train.py", "train_kd.py") and os.path.basename(os.path.dirname(path)) == "trainannot":
            runs.setdefault(run, set()).add(path)
    return runs


def test_no_mask_outside_the_labelled_quarter_reaches_a_network(tmp_path):
    """train: 4 frames of 0001TP and 8 of 0006R0; the labelled quarter is 0001TP's first and 0006R0's first two."""
    import subprocess

    root = write_frames(tmp_path / "camvid", {"train": {"0001TP": 4, "0006R0": 8}, "val": {"0016E5": 2}})
    quarter = {str(root / "trainannot" / name) for name in ("0001TP_00000.png", "0006R0_00000.png",
                                                            "0006R0_00001.png")}
    log = tmp_path / "decoded.tsv"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "experiments.py"), "--preset", "camvid_few",
                           "--root_dir", str(root), "--img_size", "32", "--teacher_epochs", "1", "--student_epochs",
                           "1", "--seeds", "0", "--methods", "response@u", "--out_dir", str(tmp_path / "out"),
                           "--num_workers", "0", "--device", "cpu", "--jobs", "2"], cwd=tmp_path, env=spy_env(log),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = decoded_train_masks(log)
    assert set(runs) == {"teacher", "scratch_s0", "scratch_all_s0", "scratch_all_b8_s0", "response@u_s0"}, \
        "the spy saw no decode of some run: it would see no leak either"
    assert len(runs["scratch_all_s0"]) == 12  # every mask, as it should: the spy sees them
    leaks = {run: sorted(os.path.basename(p) for p in paths - quarter) for run, paths in runs.items()
             if not run.startswith("scratch_all") and paths - quarter}
    assert not leaks, f"masks outside the labelled quarter decoded into training targets: {leaks}"
