"""The honest few-label preset (experiments.py --preset camvid_few, issue 36): no network of the table, the teacher
included, learns from a mask outside the labelled quarter; every student row but scratch_all_b8 takes the same steps
and images a step; the table counts each row's masks and its share of the label gap."""
import os

import numpy as np
import pytest
from PIL import Image

import experiments
import reports

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
