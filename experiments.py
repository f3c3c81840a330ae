"""The results table in one command: teacher, student from scratch, response KD and feature KD under one fixed
budget, then test.py for the four modes, a Markdown/CSV table and a plot of the students' validation curves.

    python experiments.py                          # demo: synthetic shapes, offline, minutes on 2 cores (README)
    python experiments.py --preset camvid          # the real-data table, on data/camvid-240x180 (README: CamVid)
    python experiments.py --preset camvid --root_dir DIR --device cuda --num_workers 8

Every student gets the same epochs, image size, batch, seed, optimizer, schedule and augmentation, so the
distillation term is the only difference (train_kd.py with --alpha 0 replays the scratch run exactly).
Each step runs its script with --resume auto: a re-run after an interruption continues the unfinished step and
skips the finished ones. Outputs go to --out_dir (default runs/PRESET): weights/, results.csv, results.md,
curves.png, visualizations/, steps.json (wall time of every step).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

import utils
from test import MODES

HERE = os.path.dirname(os.path.abspath(__file__))

PRESETS = {
    # Distillation on data a small network learns in minutes: 64x64 synthetic shapes, 5 object classes that
    # differ in both shape and texture, large objects. As torchvision's VOC teacher was trained on COCO (far more
    # images than VOC's train), the teacher here is trained on a larger set than the students: 512 images
    # (train_large: the students' 128 plus 384 more) for 12 epochs, as much compute as 48 epochs on 128. A ResNet50
    # from scratch learns nothing here in the time, so the teacher has the student's own architecture. The
    # students' budget is short on purpose (12 epochs on the 128, where the scratch student is still far from the
    # teacher); both KD terms at the per-pixel scale (--kd_reduction pixel), response KD at the README's T 4.
    # What was tried and what each gave: docs/demo_notes.md.
    "demo": {
        "dataset": "voc", "root_dir": "data/synthetic",
        "synthetic": {"num_train": 128, "num_val": 32, "size": (64, 64), "classes": (1, 6, 11, 16, 17),
                      "radius": (0.2, 0.35), "num_extra": 384},
        "img_size": ["64"],
        "teacher": ["--teacher_arch", "light", "--train_split", "train_large", "--epochs", "12", "--batch_size", "8",
                    "--learning_rate", "2e-3", "--optimizer", "adamw", "--scheduler", "poly", "--geometric",
                    "--monitor", "miou"],
        "student": ["--epochs", "12", "--batch_size", "8", "--learning_rate", "2e-3", "--optimizer", "adamw",
                    "--scheduler", "poly", "--augment", "train", "--geometric", "--monitor", "miou"],
        "response": ["--kd_reduction", "pixel", "--alpha", "0.9", "--temperature", "4"],
        "feature": ["--kd_reduction", "pixel", "--alpha", "0.9"],
        # "@u" rows: the same student with the teacher's own images offered without masks (train_kd.py --unlabeled),
        # 8 of them appended to every step's 8 labelled ones: the same steps, twice the images
        "unlabeled": ["--unlabeled", "split:train_large", "--unlabeled_batch", "8"],
        "rows": ["response@u", "feature@u"],
        "note": ("What this demo shows: the pipeline runs end to end (data, teacher, five students, test, table), "
                 "and whether, on this data, the distillation terms carry the teacher's knowledge: the students "
                 "share one budget (steps, lr, batch, seed, augmentation) and differ only by the distillation term "
                 "(and, in the last two, the teacher's own images offered without masks), so a KD row above the "
                 "scratch row is what that term brought.\n"
                 "What it does not show: anything about PASCAL VOC. The data are synthetic textured shapes (5 "
                 "classes, 64x64, made in this run); the teacher is the student's own architecture trained on 4x "
                 "the students' images (as the real teacher saw COCO), not a ResNet50; one seed, so read a margin "
                 "of a few points as such (docs/demo_notes.md has three student seeds of every row)."),
    },
    # CamVid at half resolution. The teacher is the student's architecture trained 4x longer (born-again
    # distillation): a ResNet50 trained from scratch on 367 images is no better than the student (README).
    "camvid": {
        "dataset": "camvid", "root_dir": "data/camvid-240x180", "img_size": ["90", "120"],
        # --augment strong (lighting from dusk to noon) for teacher and students alike: chosen on the development
        # split, whose held-out sequence is filmed at dusk (docs/camvid_dev_notes.md)
        "teacher": ["--teacher_arch", "light", "--epochs", "120", "--batch_size", "8", "--learning_rate", "2e-3",
                    "--optimizer", "adamw", "--weight_decay", "1e-4", "--scheduler", "poly", "--geometric",
                    "--augment", "strong", "--monitor", "miou"],
        # Every student picks its best checkpoint by val mIoU (train.py's own default watches val loss), and the KD
        # terms use the per-pixel scale the recipe was tuned with (the original's scale grows with the image size).
        "student": ["--epochs", "30", "--batch_size", "8", "--learning_rate", "5e-3", "--optimizer", "adamw",
                    "--weight_decay", "1e-4", "--scheduler", "poly", "--augment", "strong", "--geometric",
                    "--monitor", "miou"],
        "response": ["--kd_reduction", "pixel", "--alpha", "0.9", "--temperature", "1"],
        "feature": ["--kd_reduction", "pixel", "--alpha", "0.9"],
        # attention transfer at 100 (of 1000, the paper's beta, and 100): the development split's choice
        "at": ["--w_at", "100"],
        # the seeded table (--seeds): every method at train_kd.py's defaults (its papers' weights) until the
        # development split has chosen otherwise; '+' runs a combination with each part's flags
        "methods": ["response", "feature", "cwd", "dist", "at", "affinity", "mgd", "feature+cwd"],
        # which split chose each value (written under the seeded table): the one-seed sweep of docs/camvid_sweep.md
        # chose on val, the split the table reports; each entry moves to "dev" when the development split re-chooses it
        "chosen_on": {"--augment strong (teacher and students)": "dev", "student lr 5e-3": "val",
                      "response T 1 (of 1 and 4)": "dev", "response alpha 0.9 (of 0.9 and 1.0)": "dev",
                      "feature alpha 0.9": "val (dev: +4.7 over scratch, one seed)",
                      "student 30 epochs": "val", "teacher 120 epochs at lr 2e-3": "val (dev: still rising at 120)",
                      "cwd, dist weights": "none (train_kd.py's defaults, their papers'; dev, one seed: cwd +4.2, "
                                           "dist +0.5)",
                      "at weight 100 (of 1000 and 100)": "dev (-3.5 and -1.4, one seed; the best tried, no gain)",
                      "affinity, mgd weights": "none (train_kd.py's defaults, their papers'; not run on dev)",
                      "combination feature+cwd": "dev (+6.3 against feature +4.7 and cwd +4.2, one seed)"},
    },
}
# CamVid with few labels (issue 22): the camvid preset's teacher (every label) and student recipe; the students have
# the masks of the first quarter of each train sequence (dataset.py's SPLIT_quarter) and, in the '@u' rows, every
# train frame without its mask, 8 appended to each step's 8 labelled ones; scratch_all has every label and the same
# steps (--steps_per_epoch). Every student runs the camvid table's scratch budget in optimizer steps (30 epochs of all
# train = 1350 steps), so fewer labels never mean fewer steps: 123 epochs of the labelled quarter (few_label_epochs).
# On the development split the held-out sequence is in neither the labels nor the pool.
PRESETS["camvid_few"] = {
    **PRESETS["camvid"],
    "few_labels": {"val": ("train_quarter", "split:train"), "dev": ("train_no_dev_quarter", "split:train_no_dev")},
    "unlabeled_batch": "8",
    "methods": ["response", "response@u", "feature", "feature@u", "dist", "dist@u", "feature+cwd", "feature+cwd@u"],
    "chosen_on": {**PRESETS["camvid"]["chosen_on"],
                  "unlabelled images per step 8 (1:1)": "none (the default; not compared)",
                  "student steps: the camvid table's scratch budget (1350)": "none (that table's; not compared)"},
}


def get_args_parser():
    p = argparse.ArgumentParser(description="Train and test teacher + three students; write the table")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS))
    p.add_argument("--root_dir", default=None, help="dataset folder (default: the preset's)")
    p.add_argument("--out_dir", default=None, help="default runs/PRESET")
    p.add_argument("--device", default="auto")
    p.add_argument("--num_workers", type=int, default=-1, help=utils.NUM_WORKERS_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help="comma list of steps to run")
    p.add_argument("--img_size", nargs="+", default=None, help="override the preset's image size (H [W])")
    p.add_argument("--teacher_epochs", type=int, default=None, help="override the preset's teacher budget")
    p.add_argument("--student_epochs", type=int, default=None, help="override the preset's student budget")
    p.add_argument("--extra", default="", help="flags appended to every training step, e.g. '--amp'")
    p.add_argument("--jobs", default="auto",
                   help="students trained at once after the teacher, each at cores // jobs threads (an odd one out "
                        "at more: the plan fixes every step's threads, so a re-run or resume reproduces it). auto: 2 "
                        "on a CPU of 2+ cores, 1 on a GPU. The thread count is part of a run's draw (float sums)")
    g = p.add_argument_group("the seeded table (issue: results a researcher can trust)")
    g.add_argument("--seeds", default=None,
                   help="comma list of student seeds, e.g. 0,1,2: the teacher once, then scratch and every --methods "
                        "entry per seed; one row per method with mean, min and max over the seeds of each run's "
                        "LAST epoch (a fixed budget, no epoch picked on the reported split). Default: the four-row "
                        "table of --seed")
    g.add_argument("--methods", default=None,
                   help="KD methods of the seeded table, comma list, '+' joins methods into one run "
                        "(e.g. response,feature,cwd,response+cwd); default: the preset's")
    g.add_argument("--table_only", action="store_true",
                   help="train nothing: write the seeded table from the runs of --out_dir that have finished (the "
                        "others are named and left out; a row's 'seeds' column says how many it holds), e.g. a "
                        "partial table while the runs go on")
    g.add_argument("--split", default="val", choices=("val", "dev"),
                   help="dev: train on train_no_dev and report the development split (CamVid's held-out sequence "
                        "0001TP), for choosing hyper-parameters; val: train on all of train, report val (the table)")
    return p


def run_step(name, argv, log_path):
    """One script in its own process; its output is shown and kept in OUT/NAME.out."""
    t0 = time.time()
    print(f"\n=== {name}: python {' '.join(argv)}", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, *argv], cwd=HERE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if not progress_line(line):
                print(line, end="", flush=True)
        proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"step {name} failed (exit {proc.returncode}); its output is in {log_path}")
    return time.time() - t0


def cpu_cores():
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_jobs(jobs, device):
    """--jobs auto: 2 on a CPU of 2 cores or more (two 1-thread trainings beat one 2-thread one: torch's threads
    scale poorly on small steps), 1 on a GPU (one device) or a single core."""
    if jobs != "auto":
        if not jobs.isdigit() or int(jobs) < 1:
            raise SystemExit(f"--jobs {jobs}: give a whole number of 1 or more, or auto")
        return int(jobs)
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return 2 if device == "cpu" and cpu_cores() >= 2 else 1


def step_threads(n_steps, jobs, cores):
    """Threads of each of n_steps independent steps run `jobs` at a time: cores // jobs, except the last
    n_steps % jobs steps, which run together at cores // (n_steps % jobs) (the last step of an odd plan, alone, at
    every core). A function of the plan alone, never of timing: a step's thread count (part of its draw, as it
    orders float sums) is the same on every run and every resume."""
    per = [max(1, cores // jobs)] * n_steps
    tail = n_steps % jobs
    for i in range(n_steps - tail, n_steps):
        per[i] = max(1, cores // tail)
    return per


def progress_line(line):
    return "it/s]" in line or "s/it]" in line


def run_steps(steps, jobs, cores=None, skip=()):
    """Run independent steps [(name, argv, log_path)] `jobs` at a time, each at its step_threads count over the
    whole list (OMP_NUM_THREADS), but those named in `skip` (finished ones: a resume keeps every step's threads);
    with jobs 1, one after another as run_step. A step starts when the threads it needs are free,
    so no more threads than cores run at once. Each step's lines are kept in its log and shown as they come,
    prefixed with its name. A failed step stops the others (each resumes from its last epoch on a re-run) and
    names its log. Returns {name: wall seconds}."""
    if jobs <= 1:
        return {name: run_step(name, argv, log) for name, argv, log in steps if name not in skip}
    import threading

    cores = cores or cpu_cores()
    pending = [(s, t) for s, t in zip(steps, step_threads(len(steps), jobs, cores)) if s[0] not in skip]
    running, seconds, failed = {}, {}, []  # running: name -> (process, threads)
    changed = threading.Condition()

    def relay(name, proc, log_path, t0):
        with open(log_path, "w") as log:
            for line in proc.stdout:
                log.write(line)
                if not progress_line(line):
                    with changed:
                        print(f"[{name}] {line}", end="", flush=True)
        proc.wait()
        with changed:
            seconds[name] = time.time() - t0
            running.pop(name)
            print(f"=== {name}: ended after {seconds[name]:.0f} s (exit {proc.returncode})", flush=True)
            if proc.returncode != 0:
                failed.append(f"step {name} failed (exit {proc.returncode}); its output is in {log_path}")
            changed.notify_all()

    def stop_all():
        for proc, _ in running.values():
            proc.terminate()

    with changed:
        try:
            while (pending or running) and not failed:
                free = cores - sum(t for _, t in running.values())
                if pending and (not running or pending[0][1] <= free):
                    (name, argv, log_path), t = pending.pop(0)
                    print(f"\n=== {name} (started, {t} thread{'s' * (t > 1)}): python {' '.join(argv)}", flush=True)
                    proc = subprocess.Popen([sys.executable, *argv], cwd=HERE, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True,
                                            env={**os.environ, "OMP_NUM_THREADS": str(t)})
                    running[name] = (proc, t)
                    threading.Thread(target=relay, args=(name, proc, log_path, time.time()), daemon=True).start()
                    continue
                changed.wait()
            if failed:
                stop_all()
                while running:
                    changed.wait()
                raise SystemExit(failed[0])
        except KeyboardInterrupt:
            stop_all()
            raise
    return seconds


def prepare_synthetic(root, recipe, seed, steps, own):
    """Write the preset's synthetic set to root if root holds no VOC set. In the preset's own folder (own: no
    --root_dir given), a set written with other settings (an older generator, another seed) is written over
    (same file names, split lists rewritten); a folder passed as --root_dir is used as it is."""
    import dataset

    if not os.path.isdir(os.path.join(root, "VOCdevkit")):
        dataset.make_synthetic_voc(root, seed=seed, **recipe)
        return
    marker = os.path.join(root, dataset.SYNTHETIC_RECIPE)
    have = json.load(open(marker)) if os.path.exists(marker) else None
    if not own or have == dataset.synthetic_recipe(seed=seed, **recipe):
        return
    if have is None and not os.path.exists(os.path.join(root, "VOCdevkit", "VOC2012", "JPEGImages",
                                                        "synth_00000.jpg")):
        raise SystemExit(f"{root} holds a VOC set that this demo did not write; move it or pass --root_dir")
    if steps:
        raise SystemExit(f"the synthetic set in {root} was made with other settings than this preset's, and "
                         "--out_dir holds steps trained on it: delete that out_dir (or pass another --out_dir) "
                         "and run again")
    print(f"{root}: a synthetic set made with other settings ({have}); writing this preset's over it", flush=True)
    dataset.make_synthetic_voc(root, seed=seed, **recipe)


# ---- what both tables share: output folder, flags of every step, the test step ---------------------------------
SPLITS = {"val": ([], []), "dev": (["--train_split", "train_no_dev"], ["--val_split", "dev"])}  # (train, val) flags


UNLABELED = "@u"  # a method name's suffix: the run also takes the preset's --unlabeled images


def method_flags(preset, method):
    """The preset's flags for a method; a combination 'a+b' gets each part's flags; 'a@u' also the preset's
    unlabelled images."""
    flags = []
    for part in method.removesuffix(UNLABELED).split("+"):
        flags += preset.get(part, [])
    return flags + (preset["unlabeled"] if method.endswith(UNLABELED) else [])


def run_name(method):
    """'feature+cwd@u' -> 'feature_cwd_unl': the files' prefix and the table's row key."""
    return method.replace("+", "_").replace(UNLABELED, "_unl")


def is_seeded(args):
    return args.seeds is not None or args.split != "val"


def out_dir(args):
    """--out_dir, else runs/PRESET (runs/PRESET_dev for the development split)."""
    name = args.preset + ("_dev" if args.split == "dev" else "")
    return os.path.abspath(args.out_dir or os.path.join("runs", name))


def teacher_arch(preset):
    return preset["teacher"][preset["teacher"].index("--teacher_arch") + 1]


def epochs_flag(n):
    """An --epochs override, appended last: argparse keeps the last --epochs."""
    return ["--epochs", str(n)] if n else []


def base_flags(args, data, weights, split="val", seed=None):
    """The flags every training step shares. seed: given, it follows --num_workers (the four-row table's steps);
    the seeded table appends each run's --seed after these flags instead."""
    train_split, val_split = SPLITS[split]
    return [*data, *train_split, *val_split, "--save_dir", weights, "--device", args.device,
            "--num_workers", str(args.num_workers), *(["--seed", str(seed)] if seed is not None else []),
            "--patience", "0", "--resume", "auto", "--no_progress", *args.extra.split()]


def teacher_argv(args, preset, flags):
    return ["train.py", "--model_name", "teacher", *flags, *preset["teacher"], *epochs_flag(args.teacher_epochs)]


def student_flags(args, preset):
    """The students' recipe: one budget for scratch and every KD method."""
    return [*preset["student"], "--teacher_arch", teacher_arch(preset), *epochs_flag(args.student_epochs)]


def student_argv(preset, method, flags, student):
    """train.py for "scratch", else train_kd.py with the method's flags ('a+b' runs a and b in one loss)."""
    if method == "scratch":
        return ["train.py", "--model_name", "light", *flags, *student]
    return ["train_kd.py", "--kd_method", method.removesuffix(UNLABELED).replace("+", ","), "--model_name", "light",
            *flags, *student, *method_flags(preset, method)]


def run_tests(args, preset, out, data, results_csv, sources, pictures):
    """test.py once per mode into a new results_csv. sources: {mode: flags that name its weights}; pictures: the
    --vis_dir/--num_vis flags."""
    if os.path.exists(results_csv):
        os.remove(results_csv)  # the table is rebuilt from the checkpoints each time
    for mode, source in sources.items():
        base = mode.split("_unl")[0] if mode.endswith("_unl") else mode  # test.py's mode; the row keeps the run name
        source = source if base == mode else [*source, "--run_name", mode]
        run_step(f"test {mode}", ["test.py", "--training_mode", base, *data, *source, "--teacher_arch",
                                  teacher_arch(preset), "--device", args.device, "--num_workers",
                                  str(args.num_workers), "--results_csv", results_csv, *pictures, "--no_progress"],
                 os.path.join(out, f"test_{mode}.out"))


def main(args):
    args.jobs = resolve_jobs(args.jobs, args.device)  # once, before any work: a bad value stops here
    preset = PRESETS[args.preset]
    root = args.root_dir or preset["root_dir"]
    out = out_dir(args)
    weights = os.path.join(out, "weights")
    os.makedirs(weights, exist_ok=True)
    steps_path = os.path.join(out, "steps.json")
    steps = json.load(open(steps_path)) if os.path.exists(steps_path) else {}

    if "synthetic" in preset:
        prepare_synthetic(root, preset["synthetic"], args.seed, steps, own=args.root_dir is None)
    root = os.path.abspath(root)
    data = ["--dataset", preset["dataset"], "--root_dir", root, "--img_size", *(args.img_size or preset["img_size"])]
    if is_seeded(args) or "few_labels" in preset:
        return run_seeded(args, preset, data, out, weights)
    common = base_flags(args, data, weights, seed=args.seed)
    student = student_flags(args, preset)
    plan = {"teacher": teacher_argv(args, preset, common), "regular": student_argv(preset, "scratch", common, student),
            "response": student_argv(preset, "response", common, student),
            "feature": student_argv(preset, "feature", common, student),
            **{run_name(m): [*student_argv(preset, m, common, student), "--run_name", run_name(m)]
               for m in preset.get("rows", ())}}
    wanted = args.modes.split(",") + ([run_name(m) for m in preset.get("rows", ())] if args.modes == ",".join(MODES)
                                      else [])
    # the teacher first, at every core; then the students, --jobs at a time: the longest first (the rows with
    # unlabelled images), the student from scratch last (alone at every core when the count is odd: step_threads)
    students = [m for m in plan if m != "teacher"]
    students = [m for m in students if m.endswith("_unl")] + [m for m in students if not m.endswith("_unl")
                                                             and m != "regular"] + ["regular"]
    t0 = time.time()
    for group in (["teacher"], students):
        todo = [(mode, plan[mode], os.path.join(out, f"{mode}.out")) for mode in group if mode in wanted]
        for mode, seconds in run_steps(todo, args.jobs).items():
            if "already finished" not in open(os.path.join(out, f"{mode}.out")).read():
                steps[mode] = round(seconds, 1)  # a skipped step keeps the time it took when it ran
                utils.atomic_write_text(steps_path, json.dumps(steps, indent=1))
    wall = time.time() - t0

    run_tests(args, preset, out, data, os.path.join(out, "results.csv"),
              {mode: ["--save_dir", weights] for mode in plan if mode in wanted},
              ["--vis_dir", os.path.join(out, "visualizations"), "--num_vis", "4"])
    write_table(out, weights, steps, args, wall)


def write_table(out, weights, steps, args, wall=None):
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    curves, lines = {}, []
    lines.append("| model | mIoU (255 excluded) | mIoU (original, 255 clamped) | pixel acc. | ms/image | "
                 "best epoch | train time |")
    lines.append("|---|---|---|---|---|---|---|")
    names = {"teacher": "teacher", "regular": "student from scratch", "response": "student, response KD",
             "feature": "student, feature KD", "response_unl": "student, response KD + unlabelled images",
             "feature_unl": "student, feature KD + unlabelled images"}
    for r in rows:
        mode = r.get("run") or r["training_mode"]
        log = os.path.join(weights, f"{mode}_log.jsonl")
        hist = [json.loads(x) for x in open(log)] if os.path.exists(log) else []
        best = max(hist, key=lambda h: h["val_miou"])["epoch"] if hist else "-"
        if mode != "teacher" and hist:
            curves[names[mode]] = ([h["epoch"] for h in hist], [h["val_miou"] for h in hist])
        t = steps.get(mode)
        lines.append(f"| {names[mode]} | {float(r['mIoU_with_ignore']):.4f} | {float(r['mIoU_without_ignore']):.4f} | "
                     f"{float(r['pixel_accuracy']):.4f} | {float(r['avg_inference_time_ms']):.2f} | {best} | "
                     f"{f'{t / 60:.1f} min' if t else '-'} |")
    total = sum(steps.values())
    table = "\n".join(lines) + f"\n\nPreset `{args.preset}`, training time {total / 60:.1f} min summed over the steps"
    if wall is not None:
        table += f"; {wall / 60:.1f} min of wall time in this run (--jobs {args.jobs})"
    table += ".\n"
    utils.atomic_write_text(os.path.join(out, "results.md"), table)
    if curves:
        utils.plot_miou_curves(curves, os.path.join(out, "curves.png"),
                               title=f"students' validation mIoU ({args.preset})")
    print("\n" + table)
    print(f"written: {out}/results.md, results.csv, curves.png, visualizations/")
    miou = {r.get("run") or r["training_mode"]: float(r["mIoU_with_ignore"]) for r in rows}
    if "regular" in miou:
        print("\nmIoU against the student from scratch: " + ", ".join(
            f"{names[m]} {100 * (miou[m] - miou['regular']):+.1f} points" for m in miou if m != "regular"))
    if PRESETS[args.preset].get("note"):
        print("\n" + PRESETS[args.preset]["note"])


# ---- the seeded table: every method, several seeds, mean and spread, fixed budget ------------------------
def last_value(argv, flag):
    """The value of the last `flag` in argv (argparse keeps the last one), as an int."""
    return int(argv[len(argv) - argv[::-1].index(flag)])


def batches_per_pass(n, batch):
    """Optimizer steps in one pass over n images: engine.build_data drops the last partial batch when it can."""
    return n // batch if n >= batch else 1


def final_miou(log_path, hist=None):
    """(last epoch's val mIoU, epochs, val mIoU per epoch, training seconds) from RUN_log.jsonl (or its lines)."""
    hist = hist if hist is not None else [json.loads(x) for x in open(log_path)]
    return hist[-1]["val_miou"], [h["epoch"] for h in hist], [h["val_miou"] for h in hist], \
        sum(h["epoch_time_s"] for h in hist)


def finished(log_path, epochs, run):
    """final_miou of a run whose log holds all its epochs; None (and a line naming it) for one missing or unfinished."""
    hist = [json.loads(x) for x in open(log_path)] if os.path.exists(log_path) else []
    if len(hist) < epochs:
        print(f"left out: {run} ({len(hist)} of {epochs} epochs in {log_path})", flush=True)
        return None
    return final_miou(log_path, hist)


def summarize(rows_by_method, teacher_miou):
    """rows_by_method: {method: [final mIoU per seed]} with 'scratch' among them -> table rows (dicts)."""
    scratch = sum(rows_by_method["scratch"]) / len(rows_by_method["scratch"])
    gap = teacher_miou - scratch
    scratch_range = max(rows_by_method["scratch"]) - min(rows_by_method["scratch"])
    table = [{"method": "teacher", "seeds": 1, "mean_miou": teacher_miou, "min_miou": teacher_miou,
              "max_miou": teacher_miou, "gain": gap, "gap_closed": "", "gain_beyond_ranges": ""}]
    for method, values in rows_by_method.items():
        mean = sum(values) / len(values)
        # the gain less the two seed ranges (this method's and scratch's): > 0 when the gain is larger than both
        # spreads together, the bar a margin has to clear before it is read as the method's and not the seeds'
        beyond = "" if method == "scratch" else mean - scratch - (max(values) - min(values)) - scratch_range
        table.append({"method": method, "seeds": len(values), "mean_miou": mean, "min_miou": min(values),
                      "max_miou": max(values), "gain": mean - scratch,
                      "gap_closed": (mean - scratch) / gap if gap > 0 else "", "gain_beyond_ranges": beyond})
    return table


def history_difference(earlier, now):
    """The first difference between two runs' per-epoch logs, wall times aside ('' when they are the same run)."""
    if len(earlier) != len(now):
        return f"{len(now)} epochs against {len(earlier)}"
    for a, b in zip(earlier, now):
        for key in sorted(set(a) | set(b)):
            if key != "epoch_time_s" and a.get(key) != b.get(key):
                return f"epoch {a.get('epoch')}: {key} {b.get(key)} against {a.get(key)}"
    return ""


KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS",
              "SEGKD_DISABLE")


def record_machine(out, jobs):
    """Append to OUT/machine.json what decides a run's float sums besides its flags (torch, the CPU's AVX-512, the
    kernel and thread settings, --jobs), when it differs from the last entry; say so when it does."""
    import platform

    import torch

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    now = {"torch": torch.__version__, "machine": platform.machine(), "cores": cpu_cores(), "jobs": jobs,
           "avx512f": " avx512f" in flags, **{k: os.environ.get(k, "") for k in KERNEL_ENV}}
    path = os.path.join(out, "machine.json")
    history = json.load(open(path)) if os.path.exists(path) else []
    last = {k: v for k, v in history[-1].items() if k != "date"} if history else None
    if last == now:
        return
    if last is not None:
        print(f"note: {path}: earlier runs here ran with {history[-1]}, this one with {now}; runs under other kernels "
              "or threads are other draws", flush=True)
    utils.atomic_write_text(path, json.dumps(history + [{**now, "date": time.strftime("%Y-%m-%d")}], indent=1))


def check_teacher_repeats(earlier, t_log, out):
    """Stop unless the teacher just retrained into t_log repeats the history `earlier` (that log's text before),
    which is kept as teacher_log.earlier.jsonl when it does not."""
    differs = history_difference([json.loads(x) for x in earlier.splitlines()], [json.loads(x) for x in open(t_log)])
    if not differs:
        print(f"teacher retrained: its log repeats the earlier one epoch for epoch ({t_log})", flush=True)
        return
    weights = os.path.dirname(t_log)
    kept = os.path.join(weights, "teacher_log.earlier.jsonl")
    utils.atomic_write_text(kept, earlier)
    raise SystemExit(
        f"the teacher retrained here (its checkpoint was missing) does not repeat the one in the logs of {weights}: "
        f"{differs}. The students there learned from that other teacher, so no new run may join them: repeat the "
        f"kernels, threads and torch of {os.path.join(out, 'machine.json')} (e.g. ATEN_CPU_CAPABILITY=avx2 "
        f"DNNL_MAX_CPU_ISA=AVX2 on any x86 CPU), or use another --out_dir. The earlier log is kept as {kept}")


def teacher_guard(teacher_miou, scratch_mious, split):
    """The line that says whether the teacher leads the scratch student (mean over seeds) on the reported split."""
    scratch = sum(scratch_mious) / len(scratch_mious)
    return (f"guard: teacher {teacher_miou:.4f} vs scratch student {scratch:.4f} (mean of {len(scratch_mious)} seeds) "
            f"on {split}: " + ("the teacher leads by {:.1f} points".format(100 * (teacher_miou - scratch))
                               if teacher_miou > scratch else
                               "THE TEACHER IS NOT BETTER THAN THE STUDENT FROM SCRATCH; distillation from it "
                               "is not a result (train a stronger teacher first)"))


def few_label_epochs(epochs, full_steps, steps):
    """Epochs of `steps` steps that give at least the steps of `epochs` passes of `full_steps` (the camvid table's
    scratch student: 30 epochs of 45 steps = 1350; 123 epochs of the labelled quarter's 11 = 1353)."""
    return -(-epochs * full_steps // steps)


def few_labels(args, preset, data, student):
    """camvid_few: the students' labelled split, the preset with its unlabelled pool, and scratch_all's flags (every
    label, as many steps per epoch as the labelled quarter gives)."""
    import dataset

    labelled, pool = preset["few_labels"][args.split]
    full = SPLITS[args.split][0][1:] or ["train"]
    root = data[data.index("--root_dir") + 1]
    argv = [*args.extra.split(), *student]  # the order of a student's argv: the last --batch_size wins
    batch = last_value(argv, "--batch_size")
    n, n_all = (len(dataset.build_dataset(preset["dataset"], root, "train", (8, 8), train=False, cache=False,
                                          train_split=split).files) for split in (labelled, *full))
    steps = batches_per_pass(n, batch)
    if not args.student_epochs:  # the camvid table's scratch budget in steps, in whole epochs of the labelled split
        epochs = last_value(argv, "--epochs")
        student = [*student, "--epochs", str(few_label_epochs(epochs, batches_per_pass(n_all, batch), steps))]
    preset = {**preset, "unlabeled": ["--unlabeled", pool, "--unlabeled_batch", preset["unlabeled_batch"]]}
    scratch_all = ["--train_split", *full, "--steps_per_epoch", str(steps)]
    return ([*student, "--train_split", labelled], preset, scratch_all,
            {"steps_per_epoch": steps, "batch": min(batch, n), "batch_all": min(batch, n_all), "n_all": n_all})


def budget(method, epochs, shape):
    """(unlabeled 0/1, optimizer steps, images seen) of a student row of the few-label table."""
    steps = epochs * shape["steps_per_epoch"]
    extra = int(shape["unlabeled_batch"]) if method.endswith(UNLABELED) else 0
    labelled = shape["batch_all"] if method == "scratch_all" else shape["batch"]
    return int(method.endswith(UNLABELED)), steps, steps * (labelled + extra)


def run_seeded(args, preset, data, out, weights):
    seeds = [int(x) for x in (args.seeds or str(args.seed)).split(",")]
    methods = (args.methods or ",".join(preset.get("methods", ("response", "feature")))).split(",")
    base = base_flags(args, data, weights, args.split)
    student = student_flags(args, preset)
    teacher_last = os.path.join(weights, "teacher_last.pth")
    few = None
    if "few_labels" in preset:
        student, preset, scratch_all, few = few_labels(args, preset, data, student)
        few["unlabeled_batch"] = preset["unlabeled_batch"]

    def done_or_todo(run, argv):
        """(result, None) for a run that needs no training (or --table_only), else (None, the step to run)."""
        log = os.path.join(weights, f"{run}_log.jsonl")
        if args.table_only:
            return finished(log, last_value(argv, "--epochs"), run), None
        if run != "teacher" and not os.path.exists(os.path.join(weights, f"{run}_last.pth")) and os.path.exists(log) \
                and len(open(log).readlines()) >= last_value(argv, "--epochs"):
            # its log holds every epoch (e.g. the logs committed beside a table, on a new machine): not trained again;
            # the teacher is, when its checkpoint is missing, since the KD runs need it
            print(f"{run}: finished in {log} (its checkpoints are not here); not trained again", flush=True)
            return final_miou(log), None
        return None, (run, [*argv, "--run_name", run], os.path.join(out, f"{run}.out"))

    def run_all(plan):
        """{run: final_miou or None} for [(run, argv)]: the runs that need training, --jobs at a time."""
        results, steps, done = {}, [], set()
        for run, argv in plan:
            results[run], step = done_or_todo(run, argv)
            steps.append(step or (run, [], ""))
            done |= {run} if step is None else set()
        run_steps(steps, args.jobs, skip=done)
        for run, _ in plan:
            if results[run] is None and not args.table_only:  # trained just now
                results[run] = final_miou(os.path.join(weights, f"{run}_log.jsonl"))
        return results

    t_argv = teacher_argv(args, preset, [*base, "--seed", str(args.seed)])
    t_log = os.path.join(weights, "teacher_log.jsonl")
    # The students' logs (e.g. committed beside a table, read on a new machine) were distilled from the teacher that
    # teacher_log.jsonl describes; one retrained for its missing checkpoint must repeat it, or no run may join them.
    earlier = None
    if not args.table_only and os.path.exists(t_log) and not os.path.exists(teacher_last) and any(
            f.endswith("_log.jsonl") and f != "teacher_log.jsonl" for f in os.listdir(weights)):
        earlier = open(t_log).read()
    if not args.table_only:
        record_machine(out, args.jobs)
    teacher = run_all([("teacher", t_argv)])["teacher"]
    if earlier is not None:
        check_teacher_repeats(earlier, t_log, out)
    if teacher is None:
        raise SystemExit(f"--table_only: the teacher has not finished in {weights}; run without --table_only first")
    t_miou, t_epochs, _, t_sec = teacher
    finals, curves, seconds = {}, {}, {"teacher": [t_sec]}
    first_scratch = []  # the seed whose scratch student test.py times

    def record(method, seed, result):
        if result is None:
            return
        if method == "scratch":
            first_scratch.append(seed)
        miou, ep, mious, sec = result
        finals.setdefault(method, []).append(miou)
        curves.setdefault(method, []).append((ep, mious))
        seconds.setdefault(method, []).append(sec)
        print(f"{method} seed {seed}: last-epoch val mIoU {miou:.4f}", flush=True)

    # every student in one plan (scratch first, the methods after), run --jobs at a time, recorded in plan order
    plan = [("scratch", seed, student_argv(preset, "scratch", [*base, "--seed", str(seed)], student))
            for seed in seeds]
    if few:
        plan += [("scratch_all", seed, student_argv(preset, "scratch", [*base, "--seed", str(seed)],
                                                   [*student, *scratch_all])) for seed in seeds]
    plan += [(method, seed, [*student_argv(preset, method, [*base, "--seed", str(seed)], student),
                             "--teacher_weights", teacher_last]) for method in methods for seed in seeds]
    results = run_all([(f"{method}_s{seed}", argv) for method, seed, argv in plan])
    for method, seed, _ in plan:
        record(method, seed, results[f"{method}_s{seed}"])
    if "scratch" not in finals:
        raise SystemExit(f"--table_only: no scratch student has finished in {weights}; the table needs one")
    verdict = teacher_guard(t_miou, finals["scratch"], args.split)
    print("\n" + verdict + "\n", flush=True)

    # ms/image: the student's and the teacher's inference on the reported split (test.py, one run each)
    timed = {"teacher": teacher_last, "regular": os.path.join(weights, f"scratch_s{first_scratch[0]}_last.pth")}
    if not all(map(os.path.exists, timed.values())):
        # the logs alone (e.g. those committed beside a table) give every mIoU; the timing needs the checkpoints
        print(f"ms_per_image left empty: {' or '.join(p for p in timed.values() if not os.path.exists(p))} "
              "missing (the timing runs test.py on the checkpoints; the mIoUs come from the logs)", flush=True)
        ms = {"teacher": "", "regular": ""}
    else:
        timing_csv = os.path.join(out, "timing.csv")
        run_tests(args, preset, out, data, timing_csv,
                  {mode: [*SPLITS[args.split][1], "--weights", path] for mode, path in timed.items()}, ["--num_vis", "0"])
        with open(timing_csv) as f:
            ms = {r["training_mode"]: float(r["avg_inference_time_ms"]) for r in csv.DictReader(f)}
    table = summarize(finals, t_miou)
    for row in table:
        row["train_min"] = round(sum(seconds[row["method"]]) / len(seconds[row["method"]]) / 60, 2)
        row["ms_per_image"] = ms["teacher" if row["method"] == "teacher" else "regular"]
        if few and row["method"] == "teacher":  # its own epochs of full passes over every labelled frame
            t_batch = last_value(t_argv, "--batch_size")
            t_steps = len(t_epochs) * batches_per_pass(few["n_all"], t_batch)
            row["unlabeled"], row["steps"], row["images_seen"] = 0, t_steps, t_steps * min(t_batch, few["n_all"])
        elif few:
            row["unlabeled"], row["steps"], row["images_seen"] = budget(
                row["method"], len(curves[row["method"]][0][0]), few)
    write_seeded(out, table, curves, verdict, args, len(seeds), preset.get("chosen_on", {}),
                 extra_columns=("unlabeled", "steps", "images_seen") if few else ())


def write_seeded(out, table, curves, verdict, args, n_seeds, chosen_on=None, extra_columns=()):
    columns = ["method", "seeds", "mean_miou", "min_miou", "max_miou", "gain", "gap_closed", "gain_beyond_ranges",
               "train_min", "ms_per_image", *extra_columns]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731 - mIoU as fractions
    lines = [",".join(columns)] + [",".join(fmt(r[c]) for c in columns) for r in table]
    utils.atomic_write_text(os.path.join(out, "results_seeds.csv"), "\n".join(lines) + "\n")
    md = ["| method | seeds | mean mIoU | min-max | gain over scratch | gap closed | gain beyond ranges | "
          "train time / student | ms/image |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        gap = f"{100 * r['gap_closed']:.0f}%" if isinstance(r["gap_closed"], float) else "-"
        beyond = f"{100 * r['gain_beyond_ranges']:+.1f}" if isinstance(r["gain_beyond_ranges"], float) else "-"
        ms = f"{r['ms_per_image']:.2f}" if isinstance(r["ms_per_image"], float) else "-"
        md.append(f"| {r['method']} | {r['seeds']} | {r['mean_miou']:.4f} | {r['min_miou']:.4f}-{r['max_miou']:.4f} "
                  f"| {100 * r['gain']:+.1f} | {gap} | {beyond} | {r['train_min']:.1f} min | {ms} |")
    text = ("\n".join(md) + f"\n\nSplit `{args.split}`; every number is a run's last epoch (fixed budget); "
            f"min-max over {n_seeds} seed(s); gap closed = (KD - scratch) / (teacher - scratch); gain beyond ranges "
            f"= gain - (KD max - min) - (scratch max - min), in points: > 0 when the gain outgrows both seed "
            f"spreads.\n{verdict}\n")
    if chosen_on:
        text += "\nWhich split chose each setting:\n" + "".join(f"- {k}: {v}\n" for k, v in chosen_on.items())
    utils.atomic_write_text(os.path.join(out, "results_seeds.md"), text)
    bands = {}
    for method, runs in curves.items():
        n = min(len(e) for e, _ in runs)
        per_epoch = list(zip(*[m[:n] for _, m in runs]))
        bands[method] = (runs[0][0][:n], [sum(v) / len(v) for v in per_epoch], [min(v) for v in per_epoch],
                         [max(v) for v in per_epoch])
    utils.plot_miou_curves(bands, os.path.join(out, "curves_seeds.png"),
                           title=f"{args.preset} ({args.split}): mean over seeds, band min-max", twin_suffix=UNLABELED)
    print("\n" + text + f"written: {out}/results_seeds.csv, results_seeds.md, curves_seeds.png")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
