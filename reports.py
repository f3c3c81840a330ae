"""The reports of experiments.py, from files alone (the runs' logs, test.py's csv): the one-seed table of the demo,
the seeded table, their curves, the teacher guard, machine records and the check that a retrained teacher repeats
the logged one. Nothing here trains or runs a script, so a table can be rebuilt from the logs committed beside it.
"""
import csv
import json
import os
import time

import utils
from configs import UNLABELED
from runner import cpu_cores


# ---- the runs' logs -------------------------------------------------------------------------------------------
def read_log(log_path):
    return [json.loads(x) for x in open(log_path)] if os.path.exists(log_path) else []


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def final_miou(log_path, hist=None):
    """(last epoch's val mIoU, epochs, val mIoU per epoch, training seconds) from RUN_log.jsonl (or its lines)."""
    hist = hist if hist is not None else read_log(log_path)
    scored = utils.scored(hist)
    return hist[-1]["val_miou"], [h["epoch"] for h in scored], [h["val_miou"] for h in scored], \
        sum(h["epoch_time_s"] for h in hist)


def finished(log_path, epochs, run):
    """final_miou of a run whose log holds all its epochs; None (and a line naming it) for one missing or unfinished."""
    hist = read_log(log_path)
    if len(hist) < epochs:
        print(f"left out: {run} ({len(hist)} of {epochs} epochs in {log_path})", flush=True)
        return None
    return final_miou(log_path, hist)


def history_difference(earlier, now):
    """The first difference between two runs' per-epoch logs, wall times aside ('' when they are the same run)."""
    if len(earlier) != len(now):
        return f"{len(now)} epochs against {len(earlier)}"
    for a, b in zip(earlier, now):
        for key in sorted(set(a) | set(b)):
            if key != "epoch_time_s" and a.get(key) != b.get(key):
                return f"epoch {a.get('epoch')}: {key} {b.get(key)} against {a.get(key)}"
    return ""


def check_teacher_repeats(earlier, t_log, out):
    """Stop unless the teacher just retrained into t_log repeats the history `earlier` (that log's text before),
    which is kept as teacher_log.earlier.jsonl when it does not."""
    differs = history_difference([json.loads(x) for x in earlier.splitlines()], read_log(t_log))
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


# ---- the demo's one-seed table: test.py's numbers for every run ----------------------------------------------------
def display_name(method):
    """A row's name from its method: 'scratch' -> 'student from scratch', 'response@u' -> 'student, response KD +
    unlabelled images', 'feature+cwd' -> 'student, feature+cwd KD'."""
    if method == "teacher":
        return "teacher"
    if method.startswith("scratch"):
        return "student from scratch" + (", every label" if method == "scratch_all" else "")
    name = method.removesuffix(UNLABELED)
    return f"student, {name} KD" + (" + unlabelled images" if method.endswith(UNLABELED) else "")


def write_table(out, results_csv, methods, weights, steps, preset, wall, jobs):
    """results.md (and the printed table) from test.py's rows in results_csv, curves.png from the runs' logs.
    methods: {run name: method}, in the table's order; steps: {run name: training wall seconds}; wall: seconds of
    this invocation's training (None: nothing timed)."""
    rows = {r["run"]: r for r in read_csv(results_csv)}
    lines = ["| model | mIoU (255 excluded) | mIoU (original, 255 clamped) | pixel acc. | ms/image | best epoch | "
             "train time |", "|---|---|---|---|---|---|---|"]
    curves = {}
    for run, method in methods.items():
        r, t = rows[run], steps.get(run)
        hist = utils.scored(read_log(os.path.join(weights, f"{run}_log.jsonl")))
        best = max(hist, key=lambda h: h["val_miou"])["epoch"] if hist else "-"
        if method != "teacher" and hist:
            curves[display_name(method)] = ([h["epoch"] for h in hist], [h["val_miou"] for h in hist])
        lines.append(f"| {display_name(method)} | {float(r['mIoU_with_ignore']):.4f} | "
                     f"{float(r['mIoU_without_ignore']):.4f} | {float(r['pixel_accuracy']):.4f} | "
                     f"{float(r['avg_inference_time_ms']):.2f} | {best} | {f'{t / 60:.1f} min' if t else '-'} |")
    total = sum(steps.get(run, 0) for run in methods)
    table = "\n".join(lines) + f"\n\nPreset `{preset}`, training time {total / 60:.1f} min summed over the steps"
    if wall is not None:
        table += f"; {wall / 60:.1f} min of wall time in this run (--jobs {jobs})"
    table += ".\n"
    utils.atomic_write_text(os.path.join(out, "results.md"), table)
    if curves:
        utils.plot_miou_curves(curves, os.path.join(out, "curves.png"), title=f"students' validation mIoU ({preset})")
    print("\n" + table)
    print(f"written: {out}/results.md, results.csv, curves.png, visualizations/")
    miou = {m: float(rows[run]["mIoU_with_ignore"]) for run, m in methods.items()}
    if "scratch" in miou:
        print("\nmIoU against the student from scratch: " + ", ".join(
            f"{display_name(m)} {100 * (v - miou['scratch']):+.1f} points" for m, v in miou.items() if m != "scratch"))


# ---- the seeded table: every method over several seeds, each number a run's last epoch ----------------------------
def by_method(runs, results):
    """{method: [(seed, (last mIoU, epochs, mIoU per epoch, seconds))]} in plan order, from {run name: result or
    None} (None: a run left out); says each run's number."""
    out = {}
    for run in runs:
        if results.get(run.name) is not None:
            out.setdefault(run.method, []).append((run.seed, results[run.name]))
            print(f"{run.method} seed {run.seed}: last-epoch val mIoU {results[run.name][0]:.4f}", flush=True)
    return out


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


def teacher_guard(teacher_miou, scratch_mious, split):
    """The line that says whether the teacher leads the scratch student (mean over seeds) on the reported split."""
    scratch = sum(scratch_mious) / len(scratch_mious)
    return (f"guard: teacher {teacher_miou:.4f} vs scratch student {scratch:.4f} (mean of {len(scratch_mious)} seeds) "
            f"on {split}: " + ("the teacher leads by {:.1f} points".format(100 * (teacher_miou - scratch))
                               if teacher_miou > scratch else
                               "THE TEACHER IS NOT BETTER THAN THE STUDENT FROM SCRATCH; distillation from it "
                               "is not a result (train a stronger teacher first)"))


def batches_per_pass(n, batch):
    """Optimizer steps in one pass over n images: engine.build_data drops the last partial batch when it can."""
    return n // batch if n >= batch else 1


def budget(method, epochs, shape):
    """(unlabeled 0/1, optimizer steps, images seen) of a student row of the few-label table. shape: the plan's
    few-label numbers of the row (steps_per_epoch, batch, unlabeled_batch)."""
    steps = epochs * shape["steps_per_epoch"]
    return int(method.endswith(UNLABELED)), steps, steps * (shape["batch"] + shape["unlabeled_batch"])


def seeded_rows(teacher, methods, ms, few=None):
    """The seeded table's rows: summarize's, with train time, ms/image and, for the few-label table, each row's
    budget, masks and share of the label gap. teacher: its final_miou; methods: by_method's; ms: {"teacher": ...,
    "regular": ...} ('' when untimed); few: the plan's few-label numbers (experiments.few_labels)."""
    table = summarize({m: [r[0] for _, r in runs] for m, runs in methods.items()}, teacher[0])
    for row in table:
        method = row["method"]
        seconds = [teacher[3]] if method == "teacher" else [r[3] for _, r in methods[method]]
        row["train_min"] = round(sum(seconds) / len(seconds) / 60, 2)
        row["ms_per_image"] = ms["teacher" if method == "teacher" else "regular"]
        if few and method == "teacher":  # its own epochs of full passes over its labelled frames
            t_steps = trained_epochs(teacher) * batches_per_pass(few["teacher_frames"], few["teacher_batch"])
            row["unlabeled"], row["steps"], row["images_seen"] = 0, t_steps, t_steps * min(few["teacher_batch"],
                                                                                           few["teacher_frames"])
            row["masks"] = few["teacher_frames"]
        elif few:
            row["unlabeled"], row["steps"], row["images_seen"] = budget(method, trained_epochs(methods[method][0][1]),
                                                                        few["rows"][method])
            row["masks"] = few["rows"][method]["masks"]
    if few:
        label_gap(table)
    return table


def trained_epochs(result):
    """A final_miou result's epochs trained: its last epoch's index + 1 (its epoch list holds the scored ones only,
    every Nth under --eval_every N; the last is always scored)."""
    return result[1][-1] + 1


def label_gap(table):
    """Each row's label_gap_recovered, (row - scratch) / (scratch_all - scratch), means over seeds, both at the
    table's images per step ('' without a finished scratch_all or when it does not lead scratch)."""
    means = {r["method"]: r["mean_miou"] for r in table}
    gap = means["scratch_all"] - means["scratch"] if "scratch_all" in means else 0
    for row in table:
        row["label_gap_recovered"] = (row["mean_miou"] - means["scratch"]) / gap if gap > 0 else ""


def write_seeded(out, table, methods, verdict, title, n_seeds, chosen_on=None, extra_columns=()):
    """results_seeds.csv, results_seeds.md (printed too) and curves_seeds.png (mean over seeds, band min-max).
    title: (preset, split)."""
    preset, split = title
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
    text = ("\n".join(md) + f"\n\nSplit `{split}`; every number is a run's last epoch (fixed budget); "
            f"min-max over {n_seeds} seed(s); gap closed = (KD - scratch) / (teacher - scratch); gain beyond ranges "
            f"= gain - (KD max - min) - (scratch max - min), in points: > 0 when the gain outgrows both seed "
            f"spreads.\n{verdict}\n")
    if chosen_on:
        text += "\nWhich split chose each setting:\n" + "".join(f"- {k}: {v}\n" for k, v in chosen_on.items())
    utils.atomic_write_text(os.path.join(out, "results_seeds.md"), text)
    utils.plot_miou_curves(seed_bands(methods), os.path.join(out, "curves_seeds.png"),
                           title=f"{preset} ({split}): mean over seeds, band min-max", twin_suffix=UNLABELED)
    print("\n" + text + f"written: {out}/results_seeds.csv, results_seeds.md, curves_seeds.png")


def seed_bands(methods):
    """{method: (epochs, mean, min, max)} over the seeds' curves, cut to the shortest run."""
    bands = {}
    for method, runs in methods.items():
        curves = [(r[1], r[2]) for _, r in runs]
        n = min(len(e) for e, _ in curves)
        per_epoch = list(zip(*[m[:n] for _, m in curves]))
        bands[method] = (curves[0][0][:n], [sum(v) / len(v) for v in per_epoch], [min(v) for v in per_epoch],
                         [max(v) for v in per_epoch])
    return bands
