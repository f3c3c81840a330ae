"""The results tables in one command: a teacher, a student from scratch and distilled students under one fixed
budget, tested, into a Markdown/CSV table and a plot of the students' validation curves.

    python experiments.py                          # demo: synthetic shapes, offline, minutes on 2 cores (README)
    python experiments.py --preset camvid --seeds 0,1,2   # the real-data table, on data/camvid-240x180 (README)
    python experiments.py --preset camvid --root_dir DIR --device cuda --num_workers 8
    python experiments.py --preset camvid_few --seeds 0,1,2   # few labels: no network sees a mask beyond a quarter
    python experiments.py --preset camvid_few_full_teacher --seeds 0,1,2 --table_only   # from the committed logs

Reads: parse, plan, run, report. The plan is a list of runs, each one value (name, method, seed, flags merged
once from the preset of configs/, see make_plan); runner.py runs them, --jobs at a time, every student of a table at
the same thread count; reports.py writes the tables. Every student gets the same epochs, image size, batch, seed,
optimizer, schedule, augmentation and threads, so the distillation term is the only difference (train_kd.py with
--alpha 0 replays the scratch run exactly). One seed (the default) gives the demo's table: test.py on each run's
best checkpoint, results.md, results.csv, curves.png, visualizations/. --seeds gives the seeded table: each run's
last epoch from its log, mean and spread over the seeds, results_seeds.{csv,md}, curves_seeds.png. Runs are named
METHOD_sSEED (scratch_s0, response@u_s0) and the teacher `teacher`. Each step runs its script with --resume auto:
a re-run after an interruption continues the unfinished step and skips the finished ones. Outputs go to --out_dir
(default runs/PRESET): weights/, the tables, steps.json (wall time of every step), machine.json (what the runs ran
under), NAME.out (every step's output).
"""
import argparse
import json
import os
import time
from dataclasses import dataclass

import reports
import runner
import utils
from configs import PRESETS, UNLABELED

SPLITS = {"val": ({}, {}), "dev": ({"train_split": "train_no_dev"}, {"val_split": "dev"})}  # (train, val) flags
LEGACY_MODES = {"regular": "scratch"}  # --modes names of the four-row table that became method names
# test.py's --training_mode of a run's method: it picks the teacher's loader; every other row is the `light` student
TEST_MODES = {"teacher": "teacher", "scratch": "regular", "response": "response", "feature": "feature"}


def get_args_parser():
    p = argparse.ArgumentParser(description="Train and test a teacher and its students under one budget; write the "
                                            "table")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="a file of configs/")
    p.add_argument("--root_dir", default=None, help="dataset folder (default: the preset's)")
    p.add_argument("--out_dir", default=None, help="default runs/PRESET (runs/PRESET_dev with --split dev)")
    p.add_argument("--device", default="auto")
    p.add_argument("--num_workers", type=int, default=-1, help=utils.NUM_WORKERS_HELP)
    p.add_argument("--seed", type=int, default=0, help="the teacher's seed, and the students' without --seeds")
    p.add_argument("--modes", default=None,
                   help="the one-seed table's rows to run, comma list of teacher, regular (or scratch) and method "
                        "names (e.g. teacher,regular,response@u); default: the teacher, scratch and every --methods "
                        "entry")
    p.add_argument("--img_size", nargs="+", default=None, help="override the preset's image size (H [W])")
    p.add_argument("--teacher_epochs", type=int, default=None, help="override the preset's teacher budget")
    p.add_argument("--student_epochs", type=int, default=None, help="override the preset's student budget")
    p.add_argument("--extra", default="",
                   help="flags added to every training step, e.g. '--amp'; the preset's recipes and the flags above "
                        "win over them (make_plan's order)")
    p.add_argument("--jobs", default="auto",
                   help="students trained at once after the teacher (alone, at every core), each at cores // jobs "
                        "threads, the odd one out included: the plan fixes every step's threads, so a re-run or "
                        "resume reproduces it. auto: 2 on a CPU of 2+ cores, 1 on a GPU. The thread count is part "
                        "of a run's draw (float sums)")
    p.add_argument("--methods", default=None,
                   help="KD methods, comma list, '+' joins methods into one run, '@u' adds the preset's unlabelled "
                        "images (e.g. response,feature,cwd,response+cwd,response@u); default: the preset's")
    g = p.add_argument_group("the seeded table (issue: results a researcher can trust)")
    g.add_argument("--seeds", default=None,
                   help="comma list of student seeds, e.g. 0,1,2: the teacher once, then scratch and every --methods "
                        "entry per seed; one row per method with mean, min and max over the seeds of each run's "
                        "LAST epoch (a fixed budget, no epoch picked on the reported split). Default: the one-seed "
                        "table of --seed (test.py on each run's best checkpoint)")
    g.add_argument("--table_only", action="store_true",
                   help="train nothing: write the seeded table from the runs of --out_dir that have finished (the "
                        "others are named and left out; a row's 'seeds' column says how many it holds), e.g. a "
                        "partial table while the runs go on")
    g.add_argument("--split", default="val", choices=("val", "dev"),
                   help="dev: train on train_no_dev and report the development split (CamVid's held-out sequence "
                        "0001TP), for choosing hyper-parameters; val: train on all of train, report val (the table)")
    return p


# ---- plan: every run one value --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    name: str  # the files' prefix under weights/ and the step's name: teacher, scratch_s0, feature+cwd@u_s1
    method: str  # teacher, scratch, scratch_all, or KD methods: 'a+b' (both in one loss), 'a@u' (unlabelled images)
    seed: int
    script: str
    flags: dict  # {flag: value}: True for a switch, a list for several values

    def argv(self):
        return [self.script, *to_argv(self.flags)]


def to_argv(flags):
    """{'epochs': 12, 'geometric': True, 'img_size': ['90', '120']} -> ['--epochs', '12', '--geometric', ...]."""
    argv = []
    for key, value in flags.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not None and value is not False:
            argv += [f"--{key}", *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return argv


def parse_extra(text):
    """--extra '--amp --batch_size 4' -> {'amp': True, 'batch_size': '4'} (a flag takes the words up to the next
    flag)."""
    words, key = {}, None
    for word in text.split():
        if word.startswith("--"):
            key = word[2:]
            words[key] = []
        elif key is None:
            raise SystemExit(f"--extra {text!r}: {word!r} comes before any flag; give flags such as '--amp'")
        else:
            words[key].append(word)
    return {k: True if not v else v[0] if len(v) == 1 else v for k, v in words.items()}


def method_flags(preset, method, unlabeled):
    """The preset's flags for a method; a combination 'a+b' gets each part's flags; 'a@u' also the unlabelled
    images' flags."""
    flags = {}
    for part in method.removesuffix(UNLABELED).split("+"):
        flags.update(preset.get(part, {}))
    return {**flags, **(unlabeled if method.endswith(UNLABELED) else {})}


def is_seeded(args, preset):
    """The seeded table (last epochs from the logs) rather than the one-seed table (test.py on best checkpoints)."""
    return args.seeds is not None or args.split != "val" or "few_labels" in preset or args.table_only


@dataclass(frozen=True)
class Plan:
    teacher: Run  # None when --modes leaves it out
    students: list  # in the table's order: scratch, scratch_all, then the methods, each over the seeds
    few: dict  # the few-label table's numbers (reports.seeded_rows), else None


def make_plan(args, preset, data, weights):
    """Every run's flags, merged once; a later layer wins:
    1. the script's identity (model_name, kd_method);  2. data and bookkeeping (dataset, root_dir, img_size, the
    --split's splits, save_dir, device, num_workers, patience 0, resume auto, no_progress);  3. --extra;  4. the
    run's seed;  5. the preset's teacher or student recipe (the students also its teacher_arch), and the honest
    few-label teacher's split and epochs (its labelled split, the camvid teacher's steps);  6. the few-label
    students' epochs (the camvid table's steps);  7. --teacher_epochs / --student_epochs;  8. the few-label splits
    (labelled quarter; scratch_all's every label; batch and steps_per_epoch where the preset sets images per step);
    9. the method's flags, then its unlabelled images;  10. run_name, and in the seeded table the teacher's last
    checkpoint as --teacher_weights (no epoch picked on the reported split; the one-seed table's students take
    train_kd.py's default, the teacher's best)."""
    seeds = [int(x) for x in (args.seeds or str(args.seed)).split(",")]
    train_split, val_split = SPLITS[args.split]
    extra = parse_extra(args.extra)
    common = {**data, **train_split, **val_split, "save_dir": weights, "device": args.device,
              "num_workers": args.num_workers, "patience": 0, "resume": "auto", "no_progress": True, **extra}
    recipe = {**preset["student"], "teacher_arch": preset["teacher"]["teacher_arch"]}
    layers = {"common": common, "recipe": recipe, "epochs": {}, "splits": {}, "unlabeled": preset.get("unlabeled"),
              "kd": {"teacher_weights": os.path.join(weights, "teacher_last.pth")} if is_seeded(args, preset) else {}}
    rows = ["scratch", *(preset.get("scratch_rows", ["scratch_all"]) if "few_labels" in preset else []),
            *(args.methods.split(",") if args.methods else preset["methods"])]
    few, t_few = None, {}
    if "few_labels" in preset:
        t_recipe = {**common, **preset["teacher"]}
        few, layers["splits"], layers["unlabeled"], t_few = few_labels(args, preset, data, {**extra, **recipe},
                                                                       t_recipe, rows)
        layers["epochs"] = {"epochs": few["epochs"]}
    teacher = Run("teacher", "teacher", args.seed, "train.py", {
        "model_name": "teacher", **common, "seed": args.seed, **preset["teacher"], **t_few,
        **({"epochs": args.teacher_epochs} if args.teacher_epochs else {}), "run_name": "teacher"})
    if args.student_epochs:
        layers["epochs"] = {"epochs": args.student_epochs}
    plan = Plan(teacher, [student_run(preset, m, seed, layers) for m in rows for seed in seeds], few)
    return select_modes(args, plan)


def student_run(preset, method, seed, layers):
    """A student's run: train.py for scratch and scratch_all, else train_kd.py with the method's flags ('a+b' runs a
    and b in one loss). layers: make_plan's, by name."""
    name, scratch = f"{method}_s{seed}", method.startswith("scratch")
    head = {"model_name": "light"} if scratch else {"kd_method": method.removesuffix(UNLABELED).replace("+", ","),
                                                    "model_name": "light"}
    splits = split_flags(layers["splits"], method)
    flags = {**head, **layers["common"], "seed": seed, **layers["recipe"], **layers["epochs"], **splits,
             **method_flags(preset, method, layers["unlabeled"]), "run_name": name, **({} if scratch else layers["kd"])}
    return Run(name, method, seed, "train.py" if scratch else "train_kd.py", flags)


def select_modes(args, plan):
    """--modes: keep the one-seed table's rows it names (the teacher among them or not)."""
    if args.modes is None:
        return plan
    if is_seeded(args, PRESETS[args.preset]):
        raise SystemExit("--modes chooses the rows of the one-seed table; the seeded table takes --methods")
    wanted = {LEGACY_MODES.get(m, m) for m in args.modes.split(",")}
    unknown = wanted - {"teacher", *(r.method for r in plan.students)}
    if unknown:
        raise SystemExit(f"--modes {args.modes}: no row {', '.join(sorted(unknown))} in this table (its rows: teacher, "
                         f"{', '.join(r.method for r in plan.students)}; regular is scratch)")
    return Plan(plan.teacher if "teacher" in wanted else None, [r for r in plan.students if r.method in wanted],
                plan.few)


def few_label_epochs(epochs, full_steps, steps):
    """Epochs of `steps` steps that give at least the steps of `epochs` passes of `full_steps` (the camvid table's
    scratch student: 30 epochs of 45 steps = 1350; 123 epochs of the labelled quarter's 11 = 1353)."""
    return -(-epochs * full_steps // steps)


def split_flags(splits, method):
    """A row's few-label split flags: its own entry, else the '@u' rows' (UNLABELED), else every row's ('*')."""
    if method in splits:
        return splits[method]
    return splits.get(UNLABELED if method.endswith(UNLABELED) and UNLABELED in splits else "*", {})


def few_labels(args, preset, data, recipe, t_recipe, rows):
    """The few-label presets: (the table's numbers, {method: its split flags}, the '@u' rows' flags, the teacher's
    split flags). Every student trains on the labelled quarter but the scratch_all rows, on every label with as many
    steps per epoch as the labelled quarter gives; the '@u' rows' pool is the --split's. The students' epochs: the
    camvid table's scratch budget in steps, in whole epochs of the labelled split. recipe: the students' flags so far
    (--extra, then the preset's); t_recipe: the teacher's. Numbers counted from the splits' own lists."""
    import dataset

    labelled, pool = preset["few_labels"][args.split]
    full = SPLITS[args.split][0].get("train_split", "train")
    masks = {split: {pair[1] for pair in dataset.build_dataset(preset["dataset"], data["root_dir"], "train", (8, 8),
                                                               train=False, cache=False, train_split=split).files}
             for split in (labelled, full)}
    n, n_all = len(masks[labelled]), len(masks[full])
    batch, u = int(recipe["batch_size"]), int(preset["unlabeled_batch"])
    full_steps = reports.batches_per_pass(n_all, batch)  # the camvid table's scratch student's steps per epoch
    steps = reports.batches_per_pass(n, int(preset.get("images_per_step", batch)))
    epochs = few_label_epochs(int(recipe["epochs"]), full_steps, steps)
    splits = {"*": {"train_split": labelled}, "scratch_all": {"train_split": full, "steps_per_epoch": steps}}
    t_few, t_split = {}, full
    if "images_per_step" in preset:
        splits, t_few = honest_splits(args, preset, (labelled, full), (n, n_all, batch, int(recipe["epochs"])),
                                      t_recipe)
        t_split = labelled
    t_batch = int(t_recipe["batch_size"])
    few = {"epochs": epochs, "steps_per_epoch": steps, "teacher_batch": t_batch, "teacher_frames": len(masks[t_split]),
           "rows": {}}
    for method in rows:
        flags, scratch = split_flags(splits, method), method.startswith("scratch")
        b, split = int(flags.get("batch_size", batch)), masks[flags["train_split"]]
        few["rows"][method] = {"steps_per_epoch": int(flags.get("steps_per_epoch") or
                                                      reports.batches_per_pass(len(split), b)),
                               "batch": min(b, len(split)), "unlabeled_batch": u if method.endswith(UNLABELED) else 0,
                               # the masks its networks learned from: its own split's, and its teacher's
                               "masks": len(split if scratch else split | masks[t_split])}
    return few, splits, {"unlabeled": pool, "unlabeled_batch": u}, t_few


def honest_splits(args, preset, names, sizes, t_recipe):
    """camvid_few's ({method: split flags}, the teacher's flags): every student row takes `images_per_step` images a
    step (labelled-only rows that batch, '@u' rows that less unlabeled_batch labelled ones) and the labelled quarter's
    steps per epoch at that batch; scratch_all_b8 is the full-teacher table's scratch_all (batch 8, 11 steps an epoch);
    the teacher trains on the labelled split for as many steps as the camvid teacher on every label."""
    (labelled, full), (n, n_all, batch, epochs) = names, sizes
    per_step, u = int(preset["images_per_step"]), int(preset["unlabeled_batch"])
    steps = reports.batches_per_pass(n, per_step)
    b8_steps = reports.batches_per_pass(n, batch)
    b8 = {"train_split": full, "steps_per_epoch": b8_steps}
    if not args.student_epochs:  # its own epochs: the camvid table's scratch steps in epochs of b8_steps
        b8["epochs"] = few_label_epochs(epochs, reports.batches_per_pass(n_all, batch), b8_steps)
    splits = {"*": {"train_split": labelled, "batch_size": per_step, "steps_per_epoch": steps},
              UNLABELED: {"train_split": labelled, "batch_size": per_step - u, "steps_per_epoch": steps},
              "scratch_all": {"train_split": full, "batch_size": per_step, "steps_per_epoch": steps},
              "scratch_all_b8": b8}
    t_batch, t_epochs = int(t_recipe["batch_size"]), int(t_recipe["epochs"])
    return splits, {"train_split": labelled, "epochs": few_label_epochs(
        t_epochs, reports.batches_per_pass(n_all, t_batch), reports.batches_per_pass(n, t_batch))}


# ---- the data ---------------------------------------------------------------------------------------------------
def out_dir(args):
    """--out_dir, else runs/PRESET (runs/PRESET_dev for the development split)."""
    name = args.preset + ("_dev" if args.split == "dev" else "")
    return os.path.abspath(args.out_dir or os.path.join("runs", name))


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


def data_flags(args, preset, steps):
    """The data flags of every step, once the preset's synthetic set (if it has one) is in place."""
    root = args.root_dir or preset["root_dir"]
    if "synthetic" in preset:
        prepare_synthetic(root, preset["synthetic"], args.seed, steps, own=args.root_dir is None)
    return {"dataset": preset["dataset"], "root_dir": os.path.abspath(root),
            "img_size": args.img_size or preset["img_size"]}


# ---- run ----------------------------------------------------------------------------------------------------------
def done_or_todo(args, run, out, weights):
    """(result, None) for a run that needs no training (or --table_only), else (None, its step)."""
    log = os.path.join(weights, f"{run.name}_log.jsonl")
    epochs = int(run.flags["epochs"])
    if args.table_only:
        return reports.finished(log, epochs, run.name), None
    if run.method != "teacher" and not os.path.exists(os.path.join(weights, f"{run.name}_last.pth")) and \
            len(reports.read_log(log)) >= epochs:
        # its log holds every epoch (e.g. the logs committed beside a table, on a new machine): not trained again; the
        # teacher is, when its checkpoint is missing, since the KD runs need it
        print(f"{run.name}: finished in {log} (its checkpoints are not here); not trained again", flush=True)
        return reports.final_miou(log), None
    return None, (run.name, run.argv(), os.path.join(out, f"{run.name}.out"))


def run_group(args, runs, out, weights, steps):
    """Train the runs that need it, --jobs at a time, those with unlabelled images (twice the images a step) first
    so that a short one ends the group; record their wall times in steps.json. Returns {name: final_miou or None}."""
    results, todo, done = {}, [], set()
    for run in sorted(runs, key=lambda r: not r.method.endswith(UNLABELED)):
        results[run.name], step = done_or_todo(args, run, out, weights)
        todo.append(step or (run.name, [], ""))
        done |= {run.name} if step is None else set()
    for name, seconds in runner.run_steps(todo, args.jobs, skip=done).items():
        if "already finished" not in open(os.path.join(out, f"{name}.out")).read():
            steps[name] = round(seconds, 1)  # a skipped step keeps the time it took when it ran
            utils.atomic_write_text(os.path.join(out, "steps.json"), json.dumps(steps, indent=1))
        results[name] = reports.final_miou(os.path.join(weights, f"{name}_log.jsonl"))
    return results


def run_plan(args, plan, out, weights, steps):
    """The teacher first, alone at every core; then the students. {run name: final_miou or None}."""
    t_log = os.path.join(weights, "teacher_log.jsonl")
    # The students' logs (e.g. committed beside a table, read on a new machine) were distilled from the teacher that
    # teacher_log.jsonl describes; one retrained for its missing checkpoint must repeat it, or no run may join them.
    earlier = None
    if not args.table_only and os.path.exists(t_log) and not os.path.exists(os.path.join(weights, "teacher_last.pth")) \
            and any(f.endswith("_log.jsonl") and f != "teacher_log.jsonl" for f in os.listdir(weights)):
        earlier = open(t_log).read()
    if not args.table_only:
        reports.record_machine(out, args.jobs)
    results = run_group(args, [plan.teacher], out, weights, steps) if plan.teacher else {}
    if earlier is not None and plan.teacher:
        reports.check_teacher_repeats(earlier, t_log, out)
    if plan.teacher and results["teacher"] is None:
        raise SystemExit(f"--table_only: the teacher has not finished in {weights}; run without --table_only first")
    return {**results, **run_group(args, plan.students, out, weights, steps)}


def run_tests(args, out, data, results_csv, runs, flags):
    """test.py once per run into a new results_csv. runs: {run name: (method, flags naming its weights)}; flags:
    those of every test (split, pictures)."""
    if os.path.exists(results_csv):
        os.remove(results_csv)  # the table is rebuilt from the checkpoints each time
    for name, (method, source) in runs.items():
        # test.py's mode picks the teacher's loader and names the pictures; every student is the `light` network
        mode = TEST_MODES.get(method.removesuffix(UNLABELED), "regular")
        runner.run_step(f"test {name}", ["test.py", "--training_mode", mode, *to_argv(
            {**data, **source, "run_name": name, "teacher_arch": PRESETS[args.preset]["teacher"]["teacher_arch"],
             "device": args.device, "num_workers": args.num_workers, "results_csv": results_csv, **flags,
             "no_progress": True})], os.path.join(out, f"test_{name}.out"))


# ---- report -------------------------------------------------------------------------------------------------------
def one_seed_report(args, plan, out, weights, data, steps, wall):
    """The demo's table: test.py on each run's best checkpoint (and its pictures), then results.md and curves.png."""
    runs = {r.name: r.method for r in [*([plan.teacher] if plan.teacher else []), *plan.students]}
    run_tests(args, out, data, os.path.join(out, "results.csv"),
              {name: (method, {"save_dir": weights}) for name, method in runs.items()},
              {"vis_dir": os.path.join(out, "visualizations"), "num_vis": 4})
    reports.write_table(out, os.path.join(out, "results.csv"), runs, weights, steps, args.preset, wall, args.jobs)
    if PRESETS[args.preset].get("note"):
        print("\n" + PRESETS[args.preset]["note"])


def seeded_report(args, plan, results, out, weights, data):
    """The seeded table from the runs' last epochs, with the teacher guard and test.py's timing of the teacher and
    of the first scratch student."""
    methods = reports.by_method(plan.students, results)
    if "scratch" not in methods:
        raise SystemExit(f"--table_only: no scratch student has finished in {weights}; the table needs one")
    verdict = reports.teacher_guard(results["teacher"][0], [r[0] for _, r in methods["scratch"]], args.split)
    print("\n" + verdict + "\n", flush=True)
    # ms/image: the student's and the teacher's inference on the reported split (test.py, one run each)
    first = f"scratch_s{methods['scratch'][0][0]}"  # the first seed's scratch student that finished
    timed = {"teacher": ("teacher", os.path.join(weights, "teacher_last.pth")),
             first: ("scratch", os.path.join(weights, f"{first}_last.pth"))}
    missing = [path for _, path in timed.values() if not os.path.exists(path)]
    if missing:
        # the logs alone (e.g. those committed beside a table) give every mIoU; the timing needs the checkpoints
        print(f"ms_per_image left empty: {' or '.join(missing)} missing (the timing runs test.py on the checkpoints; "
              "the mIoUs come from the logs)", flush=True)
        ms = {"teacher": "", "regular": ""}
    else:
        timing_csv = os.path.join(out, "timing.csv")
        run_tests(args, out, data, timing_csv, {name: (method, {**SPLITS[args.split][1], "weights": path})
                                                for name, (method, path) in timed.items()}, {"num_vis": 0})
        ms = {r["training_mode"]: float(r["avg_inference_time_ms"]) for r in reports.read_csv(timing_csv)}
    table = reports.seeded_rows(results["teacher"], methods, ms, plan.few)
    reports.write_seeded(out, table, methods, verdict, (args.preset, args.split),
                         len(args.seeds.split(",")) if args.seeds else 1, PRESETS[args.preset].get("chosen_on", {}),
                         extra_columns=("unlabeled", "steps", "images_seen", *PRESETS[args.preset].get(
                             "table_columns", ())) if plan.few else ())


def main(args):
    args.jobs = runner.resolve_jobs(args.jobs, args.device)  # once, before any work: a bad value stops here
    preset = PRESETS[args.preset]
    out = out_dir(args)
    weights = os.path.join(out, "weights")
    os.makedirs(weights, exist_ok=True)
    steps_path = os.path.join(out, "steps.json")
    steps = json.load(open(steps_path)) if os.path.exists(steps_path) else {}
    data = data_flags(args, preset, steps)
    plan = make_plan(args, preset, data, weights)
    t0 = time.time()
    results = run_plan(args, plan, out, weights, steps)
    if is_seeded(args, preset):
        seeded_report(args, plan, results, out, weights, data)
    else:
        one_seed_report(args, plan, out, weights, data, steps, time.time() - t0)


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser().parse_args())  # Ctrl-C: exit 130, no traceback (runner.interrupt)
