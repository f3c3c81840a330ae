"""The seeded table (experiments.py --seeds ... --split dev) on a tiny CamVid folder: one CLI run shared by the tests
that read it; every number checked against the runs' own logs, computed here independently. The few-label preset
with a teacher on every label (camvid_few_full_teacher) runs it, as it has every kind of row (scratch, scratch_all, a
combination with unlabelled images); tests/test_few_labels.py holds camvid_few's own."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import experiments
import reports
from conftest import ROOT, run_cli

METHOD = "response+cwd@u"
RUNS = ("teacher", "scratch_s0", "scratch_s1", "scratch_all_s0", "scratch_all_s1", f"{METHOD}_s0", f"{METHOD}_s1")


def write_camvid(root, rng, n_dev=4, n_other=6):
    """A SegNet-layout CamVid folder: train holds the development sequence 0001TP and another one."""
    frames = {"train": [f"0001TP_{i:06d}.png" for i in range(n_dev)] + [f"0006R0_f{i:05d}.png" for i in range(n_other)],
              "val": [f"0016E5_{i:05d}.png" for i in range(3)]}
    for split, names in frames.items():
        os.makedirs(root / split), os.makedirs(root / f"{split}annot")
        for name in names:
            mask = rng.integers(0, 12, (24, 32), dtype=np.uint8)
            image = mask[..., None] * 20 + rng.integers(0, 30, (24, 32, 3))
            Image.fromarray(mask).save(root / f"{split}annot" / name)
            Image.fromarray(image.astype(np.uint8)).save(root / split / name)


def command(root, out, *more, seeds="0,1", methods=METHOD):
    return [os.path.join(ROOT, "experiments.py"), "--preset", "camvid_few_full_teacher", "--root_dir", str(root),
            "--img_size", "24", "32", "--teacher_epochs", "1", "--student_epochs", "2", "--seeds", seeds, "--methods",
            methods, "--split", "dev", "--out_dir", str(out), "--num_workers", "0", "--device", "cpu", "--jobs", "2",
            "--extra", "--batch_size 2", *more]


@pytest.fixture(scope="module")
def table(tmp_path_factory, torch_home):
    """The one training CLI run: teacher 1 epoch, students 2, seeds 0 and 1. (camvid root, out_dir, its stdout)."""
    tmp = tmp_path_factory.mktemp("table")
    write_camvid(tmp / "camvid", np.random.default_rng(1))
    proc = run_cli(command(tmp / "camvid", tmp / "out"), tmp, torch_home, timeout=600)
    return tmp / "camvid", tmp / "out", proc.stdout


def rows(out):
    with open(out / "results_seeds.csv") as f:
        return {r["method"]: r for r in csv.DictReader(f)}


def last_miou(out, run):
    return [json.loads(line) for line in (out / "weights" / f"{run}_log.jsonl").read_text().splitlines()][-1]["val_miou"]


def copy_of(table, tmp_path, checkpoints=True):
    """The fixture's out_dir copied, so a test may change it; without checkpoints: the logs as committed."""
    out = tmp_path / "out"
    shutil.copytree(table[1], out, ignore=None if checkpoints else shutil.ignore_patterns("*.pth"))
    return out


# ---- what the run trained -------------------------------------------------------------------------------------------
def test_the_teacher_trains_on_every_label_outside_the_held_out_sequence(table):
    log = (table[1] / "teacher.out").read_text()
    assert "6 images from split 'train_no_dev'" in log and "4 images from split 'dev'" in log


def test_the_students_have_the_masks_of_a_quarter(table):
    for run in ("scratch_s0", f"{METHOD}_s1"):  # ceil(6 / 4) frames of 0006R0, none of 0001TP
        assert "2 images from split 'train_no_dev_quarter'" in (table[1] / f"{run}.out").read_text(), run


def test_scratch_all_has_every_label(table):
    assert "6 images from split 'train_no_dev'" in (table[1] / "scratch_all_s0.out").read_text()


def test_unlabelled_rows_take_the_pool_without_masks(table):
    assert "unlabeled: 6 images from split:train_no_dev" in (table[1] / f"{METHOD}_s0.out").read_text()


def test_a_combination_runs_both_methods_in_one_loss(table):
    assert "--kd_method response,cwd" in table[2]


def test_every_student_trains_at_one_thread_count_the_teacher_at_every_core(table):
    threads = {run: line.split("(started, ")[1].split(" thread")[0] for run in RUNS
               for line in table[2].splitlines() if line.startswith(f"=== {run} (started, ")}
    assert set(threads) == set(RUNS)
    assert threads.pop("teacher") == str(len(os.sched_getaffinity(0)))
    assert len(set(threads.values())) == 1


def test_every_step_is_timed_in_steps_json(table):
    assert set(json.loads((table[1] / "steps.json").read_text())) == set(RUNS)


# ---- the table ------------------------------------------------------------------------------------------------------
def test_the_rows_follow_the_plan(table):
    assert list(rows(table[1])) == ["teacher", "scratch", "scratch_all", METHOD]


def test_the_teacher_row_is_its_last_epoch(table):
    teacher = rows(table[1])["teacher"]
    assert teacher["seeds"] == "1" and abs(float(teacher["mean_miou"]) - last_miou(table[1], "teacher")) < 1e-4


@pytest.mark.parametrize("method", ["scratch", METHOD])
def test_mean_min_max_over_the_seeds_last_epochs(table, method):
    values = [last_miou(table[1], f"{method}_s{s}") for s in (0, 1)]
    r = rows(table[1])[method]
    assert r["seeds"] == "2" and abs(float(r["mean_miou"]) - sum(values) / 2) < 1e-4
    assert abs(float(r["min_miou"]) - min(values)) < 1e-4 and abs(float(r["max_miou"]) - max(values)) < 1e-4


def test_gain_and_gain_beyond_ranges_from_the_logs(table):
    kd = [last_miou(table[1], f"{METHOD}_s{s}") for s in (0, 1)]
    scratch = [last_miou(table[1], f"scratch_s{s}") for s in (0, 1)]
    gain = sum(kd) / 2 - sum(scratch) / 2
    r = rows(table[1])
    assert abs(float(r[METHOD]["gain"]) - gain) < 1e-4
    # the bar for a margin: the gain less the KD runs' and the scratch runs' max-min ranges
    beyond = gain - (max(kd) - min(kd)) - (max(scratch) - min(scratch))
    assert abs(float(r[METHOD]["gain_beyond_ranges"]) - beyond) < 1e-4
    assert r["scratch"]["gain_beyond_ranges"] == "" and r["teacher"]["gain_beyond_ranges"] == ""


def test_each_row_states_its_steps_and_images_seen(table):
    """2 epochs of 1 step (2 labelled frames; the preset's batch 8 wins over --extra's 2); the @u row appends 8
    unlabelled images a step; scratch_all takes 6 frames a step; the teacher 1 epoch over 6 frames in one batch."""
    r = rows(table[1])
    got = {m: (r[m]["unlabeled"], r[m]["steps"], r[m]["images_seen"]) for m in r}
    assert got == {"teacher": ("0", "1", "6"), "scratch": ("0", "2", "4"), "scratch_all": ("0", "2", "12"),
                   METHOD: ("1", "2", "20")}


def test_the_students_ran_the_planned_epochs(table):
    for run in RUNS[1:]:
        assert len((table[1] / "weights" / f"{run}_log.jsonl").read_text().splitlines()) == 2, run


def test_the_markdown_names_the_split_and_what_chose_each_setting(table):
    md = (table[1] / "results_seeds.md").read_text()
    assert "Split `dev`" in md and "- student lr 5e-3: val" in md and "guard: teacher" in md


def test_the_guard_is_printed(table):
    assert "guard: teacher" in table[2]


def test_the_curves_are_drawn(table):
    assert (table[1] / "curves_seeds.png").stat().st_size > 0


def test_ms_per_image_is_timed_from_the_checkpoints(table):
    assert float(rows(table[1])["teacher"]["ms_per_image"]) > 0 and float(rows(table[1])["scratch"]["ms_per_image"]) > 0


# ---- tables from what is on disk --------------------------------------------------------------------------------------
def test_table_only_trains_nothing_and_names_what_it_leaves_out(table, tmp_path, torch_home):
    """Seed 2 never ran; dist@u's seed 0 has one epoch of two, as a run stopped half-way leaves it."""
    out = copy_of(table, tmp_path, checkpoints=False)  # the logs decide; no checkpoint, no timing step
    first = (out / "weights" / f"{METHOD}_s0_log.jsonl").read_text().splitlines()[0]
    (out / "weights" / "dist@u_s0_log.jsonl").write_text(first + "\n")
    files = sorted(p.name for p in (out / "weights").iterdir())
    proc = run_cli(command(table[0], out, "--table_only", seeds="0,1,2", methods=f"{METHOD},dist@u"), tmp_path, torch_home)
    for run, done in (("scratch_s2", 0), ("scratch_all_s2", 0), ("dist@u_s0", 1), (f"{METHOD}_s2", 0)):
        assert f"left out: {run} ({done} of 2 epochs" in proc.stdout
    assert sorted(p.name for p in (out / "weights").iterdir()) == files
    assert [r["mean_miou"] for r in rows(out).values()] == [r["mean_miou"] for r in rows(table[1]).values()]


def test_the_logs_alone_give_the_same_table_without_timing(table, tmp_path, torch_home):
    out = copy_of(table, tmp_path, checkpoints=False)
    proc = run_cli(command(table[0], out, "--table_only"), tmp_path, torch_home)
    assert "ms_per_image left empty: " in proc.stdout and "teacher_last.pth" in proc.stdout
    assert [r["mean_miou"] for r in rows(out).values()] == [r["mean_miou"] for r in rows(table[1]).values()]
    assert {r["ms_per_image"] for r in rows(out).values()} == {""}


def test_finished_logs_are_not_trained_again_and_the_teacher_is_checked(table, tmp_path, torch_home):
    """The table's command on the logs alone: the students whose logs hold every epoch are kept (logs unchanged);
    the teacher is retrained (the KD runs need its checkpoint) and repeats its logged epochs."""
    out = copy_of(table, tmp_path, checkpoints=False)
    students = {p.name: p.read_bytes() for p in (out / "weights").glob("*_s?_log.jsonl")}
    proc = run_cli(command(table[0], out), tmp_path, torch_home, timeout=600)
    assert len(students) == 6 and {p: (out / "weights" / p).read_bytes() for p in students} == students
    assert all(f"{run}: finished in " in proc.stdout for run in RUNS[1:])
    assert "teacher retrained: its log repeats the earlier one epoch for epoch" in proc.stdout
    assert (out / "weights" / "teacher_last.pth").is_file() and not (out / "weights" / "scratch_s0_last.pth").exists()
    machine = json.loads((out / "machine.json").read_text())
    assert {"torch", "avx512f", "ATEN_CPU_CAPABILITY", "jobs"} <= set(machine[-1])


def test_a_teacher_that_does_not_repeat_the_logged_one_stops_every_student(table, tmp_path, torch_home):
    out = copy_of(table, tmp_path, checkpoints=False)
    lines = [json.loads(x) for x in (out / "weights" / "teacher_log.jsonl").read_text().splitlines()]
    lines[0]["train_loss"] += 1e-6
    altered = "".join(json.dumps(x) + "\n" for x in lines)
    (out / "weights" / "teacher_log.jsonl").write_text(altered)
    proc = run_cli(command(table[0], out, methods=f"{METHOD},feature@u"), tmp_path, torch_home, timeout=600,
                   check=False)
    assert proc.returncode != 0 and "does not repeat the one in the logs" in proc.stderr
    assert "epoch 0: train_loss" in proc.stderr
    assert (out / "weights" / "teacher_log.earlier.jsonl").read_text() == altered
    assert not (out / "weights" / "feature@u_s0_log.jsonl").exists()  # no student trained from the other teacher


# ---- the numbers, by hand ---------------------------------------------------------------------------------------------
@pytest.fixture
def hand_made():
    """scratch 0.30/0.34 (mean 0.32, range 0.04), KD 0.38/0.40 (mean 0.39, range 0.02)."""
    return {"scratch": [0.30, 0.34], "kd": [0.38, 0.40]}


def test_gap_closed_and_gain_beyond_ranges_with_a_teacher_above_scratch(hand_made):
    """Teacher 0.42: gain 0.07 of a 0.10 gap, 70% closed, 0.07 - 0.02 - 0.04 = 0.01 beyond the two seed ranges."""
    table = {r["method"]: r for r in reports.summarize(hand_made, 0.42)}
    assert list(table) == ["teacher", "scratch", "kd"]
    kd = table["kd"]
    assert (kd["min_miou"], kd["max_miou"]) == (0.38, 0.40) and abs(kd["mean_miou"] - 0.39) < 1e-9
    assert abs(kd["gain"] - 0.07) < 1e-9 and abs(kd["gap_closed"] - 0.70) < 1e-9
    assert abs(kd["gain_beyond_ranges"] - 0.01) < 1e-9


def test_the_teacher_and_scratch_rows_by_hand(hand_made):
    table = {r["method"]: r for r in reports.summarize(hand_made, 0.42)}
    teacher, scratch = table["teacher"], table["scratch"]
    assert teacher["seeds"] == 1 and teacher["gap_closed"] == "" and abs(teacher["gain"] - 0.10) < 1e-9
    assert scratch["seeds"] == 2 and abs(scratch["mean_miou"] - 0.32) < 1e-9 and scratch["gain"] == 0
    assert scratch["gain_beyond_ranges"] == "" and scratch["gap_closed"] == 0


def test_the_guard_says_by_how_much_the_teacher_leads():
    assert reports.teacher_guard(0.42, [0.30, 0.34], "dev") == (
        "guard: teacher 0.4200 vs scratch student 0.3200 (mean of 2 seeds) on dev: the teacher leads by 10.0 points")


@pytest.mark.parametrize("teacher", [0.25, 0.32], ids=["below", "equal"])
def test_gap_closed_stays_empty_when_the_teacher_does_not_lead(hand_made, teacher):
    """No gap to close: gap closed is empty for every row, the gain and the gain beyond ranges are still given."""
    table = {r["method"]: r for r in reports.summarize(hand_made, teacher)}
    assert [r["gap_closed"] for r in table.values()] == ["", "", ""]
    assert abs(table["teacher"]["gain"] - (teacher - 0.32)) < 1e-9
    assert abs(table["kd"]["gain"] - 0.07) < 1e-9 and abs(table["kd"]["gain_beyond_ranges"] - 0.01) < 1e-9


@pytest.mark.parametrize("teacher", [0.25, 0.32], ids=["below", "equal"])
def test_the_guard_warns_when_the_teacher_does_not_lead(teacher):
    guard = reports.teacher_guard(teacher, [0.30, 0.34], "val")
    assert guard.startswith(f"guard: teacher {teacher:.4f} vs scratch student 0.3200 (mean of 2 seeds) on val: ")
    assert "THE TEACHER IS NOT BETTER THAN THE STUDENT FROM SCRATCH" in guard and "leads" not in guard


@pytest.mark.parametrize("method, name", [
    ("teacher", "teacher"), ("scratch", "student from scratch"), ("response", "student, response KD"),
    ("response@u", "student, response KD + unlabelled images"), ("feature+cwd", "student, feature+cwd KD"),
    ("scratch_all", "student from scratch, every label")])
def test_a_rows_name_comes_from_its_method(method, name):
    assert reports.display_name(method) == name


def test_the_one_seed_table_takes_any_method(tmp_path, capsys):
    """A row the demo never had (feature+cwd) gets a name, not a KeyError; the line under the table compares every
    row with scratch."""
    columns = "run,training_mode,mIoU_with_ignore,mIoU_without_ignore,pixel_accuracy,avg_inference_time_ms\n"
    (tmp_path / "results.csv").write_text(columns + "scratch_s0,regular,0.3000,0.2,0.8,1.0\n"
                                          "feature+cwd_s0,regular,0.3500,0.2,0.8,1.0\n")
    reports.write_table(str(tmp_path), str(tmp_path / "results.csv"), {"scratch_s0": "scratch",
                        "feature+cwd_s0": "feature+cwd"}, str(tmp_path), {"scratch_s0": 60.0}, "demo", None, 2)
    md = (tmp_path / "results.md").read_text()
    assert "| student, feature+cwd KD | 0.3500 |" in md and "| student from scratch | 0.3000 |" in md
    assert "mIoU against the student from scratch: student, feature+cwd KD +5.0 points" in capsys.readouterr().out


# ---- the few-label budget -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_camvid(tmp_path_factory):
    """72 train frames: 8 of the held-out 0001TP, 64 of 0006R0."""
    root = tmp_path_factory.mktemp("camvid72") / "camvid"
    write_camvid(root, np.random.default_rng(2), n_dev=8, n_other=64)
    return root


def few_plan(root, *flags):
    args = experiments.get_args_parser().parse_args(["--preset", "camvid_few_full_teacher", "--root_dir", str(root),
                                                     *flags])
    data = {"dataset": "camvid", "root_dir": str(root), "img_size": ["24", "32"]}
    return experiments.make_plan(args, experiments.PRESETS["camvid_few_full_teacher"], data, "/w")


def test_few_label_students_get_the_camvid_tables_steps(big_camvid):
    """val: the camvid table's scratch runs 30 x (72 // 8) = 270 steps; the labelled quarter, ceil(8/4) + ceil(64/4)
    = 18 frames, gives 2 batches an epoch: 135 epochs, for every student."""
    plan = few_plan(big_camvid, "--seeds", "0")
    assert plan.few["steps_per_epoch"] == 2 and {r.flags["epochs"] for r in plan.students} == {135}


def test_scratch_all_has_every_label_and_the_quarters_steps(big_camvid):
    (run,) = [r for r in few_plan(big_camvid, "--seeds", "0").students if r.method == "scratch_all"]
    assert (run.flags["train_split"], run.flags["steps_per_epoch"]) == ("train", 2)


def test_few_label_epochs_on_the_development_split(big_camvid):
    """dev: train_no_dev has the 64 frames of 0006R0 (30 x 8 = 240 steps), its quarter 16 (2 batches): 120 epochs."""
    plan = few_plan(big_camvid, "--seeds", "0", "--split", "dev")
    assert {r.flags["epochs"] for r in plan.students} == {120}
    assert {r.flags["train_split"] for r in plan.students if r.method != "scratch_all"} == {"train_no_dev_quarter"}


def test_student_epochs_win_over_the_few_label_epochs(big_camvid):
    assert {r.flags["epochs"] for r in few_plan(big_camvid, "--seeds", "0", "--student_epochs", "7").students} == {7}


def test_few_label_epochs_on_the_real_split_sizes():
    """367 frames (45 batches of 8) and a quarter of 93 (11): 123 epochs, 1353 >= 1350 steps."""
    assert experiments.few_label_epochs(30, 45, 11) == 123 and 122 * 11 < 30 * 45 <= 123 * 11
