"""The seeded table (experiments.py --seeds ... --split dev): every method over several seeds, each number a run's
last epoch, on CamVid's development split; checked against the runs' own logs, computed here independently."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

import experiments
from conftest import ROOT, run_cli


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
    # which branch of gap closed this runs depends on the random data: both are checked on their own below
    gap = teacher - (scratch[0] + scratch[1]) / 2
    if gap > 0:
        assert abs(float(rows["response+cwd"]["gap_closed"]) - gain / gap) < 1e-3
    else:  # no gap to close: the guard says so, and the column stays empty
        assert rows["response+cwd"]["gap_closed"] == "" and "NOT BETTER" in proc.stdout
    assert (out / "curves_seeds.png").stat().st_size > 0
    md = (out / "results_seeds.md").read_text()
    assert "Split `dev`" in md and "- student lr 5e-3: val" in md  # the preset's record of what chose each value


def test_gap_closed_and_guard_with_a_teacher_above_scratch():
    """Hand-made numbers: scratch 0.30/0.34 (mean 0.32, range 0.04), KD 0.38/0.40 (mean 0.39, range 0.02), teacher
    0.42: gain 0.07 of a 0.10 gap, 70% closed, 0.07 - 0.02 - 0.04 = 0.01 beyond the two seed ranges."""
    table = {r["method"]: r for r in experiments.summarize({"scratch": [0.30, 0.34], "kd": [0.38, 0.40]}, 0.42)}
    assert list(table) == ["teacher", "scratch", "kd"]
    teacher, scratch, kd = table["teacher"], table["scratch"], table["kd"]
    assert teacher["seeds"] == 1 and teacher["gap_closed"] == "" and teacher["gain_beyond_ranges"] == ""
    assert abs(teacher["gain"] - 0.10) < 1e-9
    assert scratch["seeds"] == 2 and abs(scratch["mean_miou"] - 0.32) < 1e-9 and scratch["gain"] == 0
    assert scratch["gain_beyond_ranges"] == "" and scratch["gap_closed"] == 0
    assert (kd["min_miou"], kd["max_miou"]) == (0.38, 0.40) and abs(kd["mean_miou"] - 0.39) < 1e-9
    assert abs(kd["gain"] - 0.07) < 1e-9
    assert abs(kd["gap_closed"] - 0.70) < 1e-9
    assert abs(kd["gain_beyond_ranges"] - 0.01) < 1e-9
    guard = experiments.teacher_guard(0.42, [0.30, 0.34], "dev")
    assert guard == ("guard: teacher 0.4200 vs scratch student 0.3200 (mean of 2 seeds) on dev: the teacher leads "
                     "by 10.0 points")


@pytest.mark.parametrize("teacher", [0.25, 0.32], ids=["below", "equal"])
def test_gap_closed_stays_empty_when_the_teacher_does_not_lead(teacher):
    """No gap to close (teacher below or level with the scratch mean 0.32): gap closed is empty for every row, the
    gain and the gain beyond ranges are still given, and the guard says the teacher is not better."""
    table = {r["method"]: r for r in experiments.summarize({"scratch": [0.30, 0.34], "kd": [0.38, 0.40]}, teacher)}
    assert [r["gap_closed"] for r in table.values()] == ["", "", ""]
    assert abs(table["teacher"]["gain"] - (teacher - 0.32)) < 1e-9
    assert abs(table["kd"]["gain"] - 0.07) < 1e-9 and abs(table["kd"]["gain_beyond_ranges"] - 0.01) < 1e-9
    guard = experiments.teacher_guard(teacher, [0.30, 0.34], "val")
    assert guard.startswith(f"guard: teacher {teacher:.4f} vs scratch student 0.3200 (mean of 2 seeds) on val: ")
    assert "THE TEACHER IS NOT BETTER THAN THE STUDENT FROM SCRATCH" in guard and "leads" not in guard


def test_few_label_table_on_the_development_split(tmp_path, torch_home):
    """camvid_few: the students' masks are the first quarter of each sequence (the held-out one excluded), '@u' rows
    add every other train frame without masks, scratch_all has every label and the same steps; the table states
    each row's steps and images seen."""
    write_camvid(tmp_path / "camvid", np.random.default_rng(1))
    out = tmp_path / "out"
    run_cli([os.path.join(ROOT, "experiments.py"), "--preset", "camvid_few", "--root_dir", str(tmp_path / "camvid"),
             "--img_size", "24", "32", "--teacher_epochs", "1", "--student_epochs", "2", "--seeds", "0",
             "--methods", "response@u", "--split", "dev", "--out_dir", str(out), "--num_workers", "0",
             "--device", "cpu", "--extra", "--batch_size 2"], tmp_path, torch_home, timeout=600)
    assert "6 images from split 'train_no_dev'" in (out / "teacher.out").read_text()
    quarter = (out / "scratch_s0.out").read_text()
    assert "2 images from split 'train_no_dev_quarter'" in quarter  # ceil(6 / 4) frames of 0006R0, none of 0001TP
    unl = (out / "response@u_s0.out").read_text()
    assert "2 images from split 'train_no_dev_quarter'" in unl and "unlabeled: 6 images from split:train_no_dev" in unl
    assert "6 images from split 'train_no_dev'" in (out / "scratch_all_s0.out").read_text()
    with open(out / "results_seeds.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["teacher", "scratch", "scratch_all", "response@u"]
    # 2 epochs of 1 step (2 labelled frames; the preset's batch 8 is the last --batch_size); response@u appends 8
    # unlabelled images to each step
    assert (rows["scratch"]["unlabeled"], rows["scratch"]["steps"], rows["scratch"]["images_seen"]) == ("0", "2", "4")
    # the teacher: 1 epoch over the 6 labelled frames of train_no_dev in one batch (its preset batch 8 > 6)
    assert (rows["teacher"]["unlabeled"], rows["teacher"]["steps"], rows["teacher"]["images_seen"]) == ("0", "1", "6")
    assert (rows["scratch_all"]["steps"], rows["scratch_all"]["images_seen"]) == ("2", "12")  # 6 frames a step
    assert (rows["response@u"]["unlabeled"], rows["response@u"]["steps"], rows["response@u"]["images_seen"]) == (
        "1", "2", "20")
    for run in ("scratch_s0", "scratch_all_s0", "response@u_s0"):
        assert len((out / "weights" / f"{run}_log.jsonl").read_text().splitlines()) == 2

    # --table_only: the same table from the finished runs, trains nothing, names what it leaves out (seed 1 never
    # ran; dist@u's seed 0 has one epoch of two, as a run stopped half-way leaves it)
    logs = sorted(p.name for p in (out / "weights").iterdir())
    first = (out / "weights" / "response@u_s0_log.jsonl").read_text().splitlines()[0]
    (out / "weights" / "dist@u_s0_log.jsonl").write_text(first + "\n")
    proc = run_cli([os.path.join(ROOT, "experiments.py"), "--preset", "camvid_few", "--root_dir", str(tmp_path / "camvid"),
                    "--img_size", "24", "32", "--teacher_epochs", "1", "--student_epochs", "2", "--seeds", "0,1",
                    "--methods", "response@u,dist@u", "--split", "dev", "--out_dir", str(out), "--num_workers", "0",
                    "--device", "cpu", "--extra", "--batch_size 2", "--table_only"], tmp_path, torch_home, timeout=600)
    assert sorted(p.name for p in (out / "weights").iterdir() if p.name != "dist@u_s0_log.jsonl") == logs
    for run, done in (("scratch_s1", 0), ("scratch_all_s1", 0), ("dist@u_s0", 1), ("response@u_s1", 0)):
        assert f"left out: {run} ({done} of 2 epochs" in proc.stdout
    with open(out / "results_seeds.csv") as f:
        again = {r["method"]: r for r in csv.DictReader(f)}
    assert list(again) == list(rows)
    for method, row in rows.items():
        assert again[method]["mean_miou"] == row["mean_miou"] and again[method]["seeds"] == "1"

    # the logs alone (as committed beside a table, the checkpoints gone): the same mIoUs, ms_per_image empty and said
    for p in (out / "weights").glob("*.pth"):
        p.unlink()
    proc = run_cli([os.path.join(ROOT, "experiments.py"), "--preset", "camvid_few", "--root_dir", str(tmp_path / "camvid"),
                    "--img_size", "24", "32", "--teacher_epochs", "1", "--student_epochs", "2", "--seeds", "0",
                    "--methods", "response@u", "--split", "dev", "--out_dir", str(out), "--num_workers", "0",
                    "--device", "cpu", "--extra", "--batch_size 2", "--table_only"], tmp_path, torch_home, timeout=600)
    assert "ms_per_image left empty: " in proc.stdout and "teacher_last.pth" in proc.stdout
    with open(out / "results_seeds.csv") as f:
        logs_only = {r["method"]: r for r in csv.DictReader(f)}
    assert list(logs_only) == list(rows)
    for method, row in rows.items():
        assert logs_only[method]["mean_miou"] == row["mean_miou"] and logs_only[method]["ms_per_image"] == ""
        assert float(row["ms_per_image"]) > 0
    assert not list((out / "weights").glob("*.pth"))  # nothing trained

    # and the table's command itself on those logs: the students whose logs hold every epoch are not trained again
    # (their logs unchanged), the teacher is (the KD runs need its checkpoint)
    students = {p.name: p.read_bytes() for p in (out / "weights").glob("*_s0_log.jsonl")}
    proc = run_cli([os.path.join(ROOT, "experiments.py"), "--preset", "camvid_few", "--root_dir", str(tmp_path / "camvid"),
                    "--img_size", "24", "32", "--teacher_epochs", "1", "--student_epochs", "2", "--seeds", "0",
                    "--methods", "response@u", "--split", "dev", "--out_dir", str(out), "--num_workers", "0",
                    "--device", "cpu", "--extra", "--batch_size 2"], tmp_path, torch_home, timeout=600)
    assert len(students) == 4 and {p: (out / "weights" / p).read_bytes() for p in students} == students
    for run in ("scratch_s0", "scratch_all_s0", "response@u_s0"):
        assert f"{run}: finished in " in proc.stdout
    assert (out / "weights" / "teacher_last.pth").is_file() and not (out / "weights" / "scratch_s0_last.pth").exists()
    with open(out / "results_seeds.csv") as f:
        assert [r["mean_miou"] for r in csv.DictReader(f)] == [r["mean_miou"] for r in rows.values()]
    # the retrained teacher repeated the logged one (same kernels and threads), which is what lets the runs join
    assert "teacher retrained: its log repeats the earlier one epoch for epoch" in proc.stdout
    machine = json.loads((out / "machine.json").read_text())
    assert machine and {"torch", "avx512f", "ATEN_CPU_CAPABILITY", "jobs"} <= set(machine[-1])

    # a teacher that does not repeat the logged one (here: its log altered) stops the run before any student
    (out / "weights" / "teacher_last.pth").unlink()
    lines = [json.loads(x) for x in (out / "weights" / "teacher_log.jsonl").read_text().splitlines()]
    lines[0]["train_loss"] += 1e-6
    altered = "".join(json.dumps(x) + "\n" for x in lines)
    (out / "weights" / "teacher_log.jsonl").write_text(altered)
    proc = run_cli([os.path.join(ROOT, "experiments.py"), "--preset", "camvid_few", "--root_dir", str(tmp_path / "camvid"),
                    "--img_size", "24", "32", "--teacher_epochs", "1", "--student_epochs", "2", "--seeds", "0",
                    "--methods", "response@u,feature@u", "--split", "dev", "--out_dir", str(out), "--num_workers", "0",
                    "--device", "cpu", "--extra", "--batch_size 2"], tmp_path, torch_home, timeout=600, check=False)
    assert proc.returncode != 0 and "does not repeat the one in the logs" in proc.stderr
    assert "epoch 0: train_loss" in proc.stderr
    assert (out / "weights" / "teacher_log.earlier.jsonl").read_text() == altered
    assert not (out / "weights" / "feature@u_s0_log.jsonl").exists()  # no student trained from the other teacher


def test_few_label_students_get_the_camvid_tables_steps(tmp_path):
    """Fewer labels never mean fewer steps: without --student_epochs, a camvid_few student runs the camvid preset's
    scratch budget in optimizer steps (its 30 epochs over all of train), rounded up to whole epochs of the labelled
    quarter; --student_epochs still overrides it."""
    write_camvid(tmp_path / "camvid", np.random.default_rng(2), n_dev=8, n_other=64)
    data = ["--dataset", "camvid", "--root_dir", str(tmp_path / "camvid")]
    preset = experiments.PRESETS["camvid_few"]
    student = experiments.PRESETS["camvid"]["student"]
    assert student[student.index("--epochs") + 1] == "30" and student[student.index("--batch_size") + 1] == "8"

    def student_epochs(*flags):
        args = experiments.get_args_parser().parse_args(["--preset", "camvid_few", *data[2:], *flags])
        student, _, scratch_all, few = experiments.few_labels(args, preset, data,
                                                              experiments.student_flags(args, preset))
        return int(student[len(student) - 1 - student[::-1].index("--epochs") + 1]), scratch_all, few

    # val: train has 72 frames (8 of 0001TP, 64 of 0006R0): the camvid table's scratch runs 30 x (72 // 8) = 270
    # steps; the labelled quarter, ceil(8/4) + ceil(64/4) = 18 frames, gives 2 batches an epoch: 135 epochs
    epochs, scratch_all, few = student_epochs()
    assert few["steps_per_epoch"] == 2 and epochs == 135
    assert scratch_all == ["--train_split", "train", "--steps_per_epoch", "2"]
    # dev: train_no_dev has the 64 frames of 0006R0 (30 x 8 = 240 steps), its quarter 16 (2 batches): 120 epochs
    assert student_epochs("--split", "dev")[0] == 120
    assert student_epochs("--student_epochs", "7")[0] == 7
    # the real split sizes: 367 frames (45 batches of 8) and a quarter of 93 (11): 123 epochs, 1353 >= 1350 steps
    assert experiments.few_label_epochs(30, 45, 11) == 123 and 122 * 11 < 30 * 45 <= 123 * 11
