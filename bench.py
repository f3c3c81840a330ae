"""Speed of the repo's training and inference path against the original project's choices: same weights, one run.

    python bench.py --device cpu --threads 16                            # CPU, fp32: 4 workloads x 2 paths
    python bench.py --device cuda --amp --compile --json bench_gpu.json  # GPU: bf16 autocast + torch.compile
    python bench.py --device cuda --workloads feature --check            # one workload; first check the losses agree
    python bench.py --epoch_bench --device cuda                          # 1 epoch of train_kd.py vs the original's
    python bench.py --img_size 64 --batch_size 2 --warmup 1 --steps 2 --threads 1   # smoke run (a minute on a laptop)
    python bench.py --epoch_bench --img_size 64 --epoch_images 8                    # epoch smoke run

Workloads on synthetic tensors: scratch (student light, cross-entropy), response and feature (one KD step),
inference (student forward). Both paths load one set of random weights (--check: they compute the same losses).
  reference  the original's choices, run by original.py (an independent re-expression of the original's student,
             losses and epoch): float32, NCHW, the student classifying after upsampling, every ASPP tap, the whole
             torchvision fcn_resnet50 teacher (aux head too) under no_grad with hooks on layer1..3, .item() every
             step, the original's loss scale (batchmean KL, the three feature terms added)
  optimised  the repo's code: engine.train_one_epoch, channels_last, classify-then-upsample, FrozenTeacher under
             no_grad (feature KD stops after layer3), the losses of losses.py, the tricks of fast.py
             (Winograd 3x3 convs in the teacher on the CPU, glibc's allocator told to keep freed memory), --amp, --compile. --disable TRICK[,TRICK] times it without some of
             fast.py's tricks (the reference path never uses them): what each one pays.
Each (workload, path) runs in its own process (so its peak memory is its own); the device is synchronised at each
step's clock reading. --epoch_bench times whole processes: one epoch of train_kd.py against `python original.py`.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
from torchvision.models.segmentation import fcn_resnet50

import engine
import fast
import losses
import original
import train
import train_kd
import utils
from model import TappedSegNet, build_model, load_original_state_dict
from teacher import FrozenTeacher

REPO = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("scratch", "response", "feature", "inference")
TAG = "BENCH_JSON "  # marks the child's result line on stdout
PARTS = ("student", "teacher")  # the networks whose weights both paths share (the student's: the original's layout)

def get_args_parser():
    p = argparse.ArgumentParser(description="Benchmark the repo's path against the original's choices")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (lazy init, cudnn autotune, compile)")
    p.add_argument("--steps", type=int, default=5, help="timed steps: their median and min-max are reported")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of " + ", ".join(WORKLOADS))
    p.add_argument("--no_reference", action="store_true", help="time the optimised path only")
    p.add_argument("--amp", action="store_true", help="optimised path: mixed precision (engine.make_autocast)")
    p.add_argument("--compile", action="store_true", help="optimised path: torch.compile the student")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads / OMP_NUM_THREADS (0: default)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--disable", default="", help="comma list of fast.py tricks to switch off in the optimised path: "
                   + ", ".join(fast.TRICKS))
    p.add_argument("--check", action="store_true", help="first compare both paths' losses (eval mode, fp32)")
    p.add_argument("--epoch_bench", action="store_true", help="time one epoch of train_kd.py vs the original's")
    p.add_argument("--epoch_images", type=int, default=64, help="epoch bench: train images (val: a quarter)")
    p.add_argument("--_one", help=argparse.SUPPRESS)  # child process: this workload...
    p.add_argument("--_path", help=argparse.SUPPRESS)  # ...on this path
    return p


# --------------------------------------------------------------------------- the two paths
def canonical_weights(parts=PARTS):
    """The one set of random weights that every path in every process loads (a seed per part: any subset agrees)."""
    makers = {"student": lambda: original.OriginalLight(),  # alignment convs inside, as the original had them
              "teacher": lambda: fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)}
    weights = {}
    for seed, name in enumerate(PARTS):
        if name in parts:
            torch.manual_seed(seed)
            weights[name] = makers[name]().state_dict()
    return weights


def build_reference(workload, device, weights):
    student, loss_fn, optimizer = original.build("scratch" if workload == "inference" else workload, device,
                                                 weights.get("teacher"), weights["student"])
    if workload == "inference":
        def infer(loader):
            student.eval()
            with torch.no_grad():
                for images, _ in loader:
                    student(images.to(device))
        return SimpleNamespace(run=infer, loss=lambda x, y: student(x)[0], student=student)
    return SimpleNamespace(run=lambda loader: original.train_epoch(student, loss_fn, optimizer, loader, device),
                           loss=loss_fn, student=student)


def build_optimised(workload, device, weights, amp=False, compile=False):
    student = build_model("light")
    student.load_state_dict(load_original_state_dict(weights["student"])[0])
    student.to(device).to(memory_format=torch.channels_last)
    autocast, scaler = engine.make_autocast(device, amp)
    model = torch.compile(student) if compile else student
    cl = lambda x: x.contiguous(memory_format=torch.channels_last)  # noqa: E731
    if workload == "inference":
        student.eval()
        def infer(loader):
            model.eval()
            with torch.inference_mode(), autocast:
                for images, _ in loader:  # as engine.to_device, without the targets' copy
                    model(cl(images.to(device, non_blocking=True)))
        return SimpleNamespace(run=infer, loss=lambda x, y: student(cl(x)), student=student)
    # The flags of a real run: train.py's for scratch, train_kd.py's (AdamW, alpha, temperature) for KD.
    args = (train if workload == "scratch" else train_kd).get_args_parser().parse_args([])
    if workload == "scratch":
        criterion = losses.SegmentationLoss()
    else:
        net = TappedSegNet("fcn_resnet50", 21)
        net.load_state_dict({k: v for k, v in weights["teacher"].items() if not k.startswith("aux_classifier.")})
        frozen = FrozenTeacher(net).to(device).to(memory_format=torch.channels_last)  # as train_kd.main
        args.kd_method = workload
        criterion = losses.build_loss([workload], frozen, student, args)
        if workload == "feature":
            criterion.methods["feature"].align.load_state_dict(
                {"convs." + k.removeprefix("align_layers."): v for k, v in weights["student"].items()
                 if k.startswith("align_layers.")})
    criterion.to(device)
    optimizer = engine.build_optimizer(
        args, list(student.parameters()) + [p for p in criterion.parameters() if p.requires_grad])

    def run(loader):
        engine.train_one_epoch(model, criterion, optimizer, loader, device, 0, autocast=autocast, scaler=scaler,
                              channels_last=True, progress=False)

    def loss_fn(x, y):
        return criterion(cl(x), student(cl(x), needs=criterion.needs), y)["loss"]
    return SimpleNamespace(run=run, loss=loss_fn, student=student)


def timed_batches(batch, n, device, stamps):
    """One fixed batch, n times. The loop under test runs unchanged; the clock is read (device synchronised) as each
    step asks for its batch and once after the last step, so consecutive readings bracket exactly one step."""
    for i in range(n + 1):
        utils.synchronize(device)
        stamps.append(time.perf_counter())
        if i < n:
            yield batch


def synthetic_batch(args, device):
    g = torch.Generator().manual_seed(1)
    n, s = args.batch_size, args.img_size
    images, targets = torch.randn(n, 3, s, s, generator=g), torch.randint(0, 21, (n, s, s), generator=g)
    return (images.pin_memory(), targets.pin_memory()) if device.type == "cuda" else (images, targets)


def peak_rss():
    """Peak RSS in bytes. /proc's VmHWM starts afresh at exec; Linux's ru_maxrss survives fork and exec, so a child's
    would include its parent's peak (macOS has no /proc, and counts ru_maxrss in bytes)."""
    if not os.path.exists("/proc/self/status"):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def one(args):
    """Child process: one workload on one path; prints one JSON line."""
    start_mem = peak_rss()  # what importing torch & co. costs, before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args._path == "optimised":
        fast.setup_backends(device)  # as engine.fit()
    weights = canonical_weights(("student",) if args._one in ("scratch", "inference") else PARTS)
    path = (build_reference(args._one, device, weights) if args._path == "reference" else
            build_optimised(args._one, device, weights, args.amp, args.compile))
    del weights
    batch = synthetic_batch(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stamps = []
    if args.warmup:
        path.run(timed_batches(batch, args.warmup, device, []))
    path.run(timed_batches(batch, args.steps, device, stamps))
    t = [b - a for a, b in zip(stamps, stamps[1:])]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()
    print(TAG + json.dumps({"workload": args._one, "path": args._path, "median_s": statistics.median(t),
                            "min_s": min(t), "max_s": max(t), "img_per_s": args.batch_size / statistics.median(t),
                            "peak_mem_bytes": peak, "start_rss_bytes": start_mem, "times_s": t}), flush=True)


# --------------------------------------------------------------------------- the parent
def check(args, device, workloads):
    """Both paths on one batch in eval mode (no dropout) and fp32: the same function up to float rounding."""
    weights, (x, y) = canonical_weights(), synthetic_batch(args, torch.device("cpu"))
    x, y = x.to(device), y.to(device)
    for w in workloads:
        ref, opt = build_reference(w, device, weights), build_optimised(w, device, weights)
        ref.student.eval(), opt.student.eval()
        with torch.no_grad():
            a, b = ref.loss(x, y).float(), opt.loss(x, y).float()
        print(f"check {w:<10} reference {a.abs().mean():.6f}  optimised {b.abs().mean():.6f}  max |difference| "
              f"{(a - b).abs().max():.2e}" + ("  (logits: mean |value|)" if a.ndim else "  (loss)"))


def print_row(r, rows):
    if r is None:
        return print(f"{'workload':<11}{'path':<11}{'s/step (median, min-max)':<30}{'img/s':>9}{'peak mem':>11}")
    if "error" in r:
        return print(f"{r['workload']:<11}{r['path']:<11}failed: {r['error']}", flush=True)
    ref = [q for q in rows if q["workload"] == r["workload"] and q["path"] == "reference" and "error" not in q]
    ratio = f"{ref[0]['median_s'] / r['median_s']:9.2f}x" if ref and r["path"] == "optimised" else ""
    s = f"{r['median_s']:.4g} ({r['min_s']:.4g}-{r['max_s']:.4g})"
    print(f"{r['workload']:<11}{r['path']:<11}{s:<30}{r['img_per_s']:>9.2f}{r['peak_mem_bytes'] / 1e9:>8.2f} GB"
          f"{ratio}", flush=True)


def step_bench(args, device, workloads):
    rows = []
    for w in workloads:
        for p in ("optimised",) if args.no_reference else ("reference", "optimised"):
            cmd = [sys.executable, os.path.join(REPO, "bench.py"), "--_one", w, "--_path", p, "--device", str(device)]
            cmd += [f"--{k}={getattr(args, k)}" for k in ("img_size", "batch_size", "warmup", "steps", "threads")]
            cmd += ["--amp"] * args.amp + ["--compile"] * args.compile
            env = {**os.environ, "SEGKD_DISABLE": args.disable if p == "optimised" else ""}
            res = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)  # stderr: straight through
            lines = [line for line in res.stdout.splitlines() if line.startswith(TAG)]
            rows.append(json.loads(lines[-1][len(TAG):]) if res.returncode == 0 and lines else
                        {"workload": w, "path": p, "error": f"child exited {res.returncode}; see stderr above"})
            print_row(rows[-1], rows)
    return rows


def epoch_bench(args, device, workloads):
    tmp = tempfile.mkdtemp(prefix="kd_epoch_bench_")
    env = {**os.environ, "PYTHONPATH": REPO, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    s, b, n_val = str(args.img_size), str(args.batch_size), max(2, args.epoch_images // 4)

    def timed(cmd):
        t0 = time.perf_counter()
        res = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode:
            sys.exit(f"error: {' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}")
        return time.perf_counter() - t0, (res.stdout.strip().splitlines() or [""])[-1]

    rows = []
    try:  # the temporary folder goes whatever happens
        data, weights = (os.path.join(tmp, f) for f in ("data", "teacher.pth"))
        script = os.path.join(REPO, "original.py")
        timed([sys.executable, "dataset.py", "--make_synthetic", data, "--num_train", str(args.epoch_images),
               "--num_val", str(n_val), "--height", s, "--width", s])
        # Untimed: the first timed run must not pay alone for cold caches (a fresh machine builds matplotlib's fonts).
        timed([sys.executable, "-c", "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot, train_kd"])
        torch.save(canonical_weights(("teacher",))["teacher"], weights)  # torchvision's format, aux head included
        print(f"epoch bench: 1 epoch of {args.epoch_images} train + {n_val} val images at {s}x{s}, batch {b}, "
              f"{device}{', repo with --amp' if args.amp else ''}{' --compile' if args.compile else ''}; "
              "wall seconds of the whole process")
        for m in [w for w in workloads if w in ("response", "feature")]:
            out = [os.path.join(tmp, f"{p}_{m}") for p in ("original", "repo")]
            os.makedirs(out[0])
            t_orig, last_orig = timed([sys.executable, script, m, data, s, b, weights, str(device), out[0]])
            t_repo, last_repo = timed([sys.executable, "train_kd.py", "--kd_method", m, "--root_dir", data,
                                       "--epochs", "1", "--img_size", s, "--batch_size", b, "--save_dir", out[1],
                                       "--num_vis", "0", "--no_progress", "--teacher_weights", weights,
                                       "--device", str(device)] + ["--amp"] * args.amp + ["--compile"] * args.compile)
            rows.append({"method": m, "original_s": t_orig, "repo_s": t_repo, "ratio": t_orig / t_repo})
            print(f"{m:<10} original {t_orig:8.1f} s   repo {t_repo:8.1f} s   {t_orig / t_repo:6.2f}x\n"
                  f"           ({last_orig})\n           ({last_repo})", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(args):
    if args._one:
        return one(args)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not workloads or set(workloads) - set(WORKLOADS):
        sys.exit(f"--workloads {args.workloads}: choose from {', '.join(WORKLOADS)}")
    unknown = {t for t in args.disable.split(",") if t} - set(fast.TRICKS)
    if unknown:
        sys.exit(f"--disable {args.disable}: unknown {', '.join(sorted(unknown))}; choose from {', '.join(fast.TRICKS)}")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 2:
        sys.exit("--steps must be >= 1, --warmup >= 0 and --batch_size >= 2 (BatchNorm in training)")
    device, _ = utils.init_distributed(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = {k: getattr(args, k) for k in ("img_size", "batch_size", "warmup", "steps", "amp", "compile", "threads", "disable")}
    config.update(device=str(device), torch=torch.__version__,
                  gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    result = {"config": config}
    if args.epoch_bench:
        result["epoch"] = epoch_bench(args, device, workloads)
    else:
        if args.check:
            check(args, device, workloads)
        print(f"{device}{' ' + config['gpu'] if config['gpu'] else ''}, torch {torch.__version__}, "
              f"{args.img_size}x{args.img_size}, batch {args.batch_size}, warm-up {args.warmup}, {args.steps} timed "
              f"steps, optimised: {'amp' if args.amp else 'fp32'}{', compile' if args.compile else ''}"
              f"{f', {args.threads} threads' if args.threads else ''}")
        print_row(None, [])
        result["steps"] = step_bench(args, device, workloads)
        start = min([r["start_rss_bytes"] for r in result["steps"] if "start_rss_bytes" in r] or [0]) / 1e9
        print("ratio = reference median / optimised median. peak mem: " + (
            "torch.cuda.max_memory_allocated in the workload's own process, weights included." if device.type == "cuda"
            else f"peak RSS (VmHWM) of the workload's own process, {start:.2f} GB of it start-up (importing torch)."))
    if args.json:
        utils.atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
