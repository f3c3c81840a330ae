"""Helpers shared by the scripts: metrics, the errors a user can fix and the one command-line wrapper, checkpoint
I/O, atomic files, distributed seams, plots.

Nothing here knows about a particular model or dataset, and nothing here imports another module of this repo.
Imported by dataset.py and losses.py (UserError), engine.py, teacher/, model.py (inside load_trained) and every
script but train.py (which reaches it through engine.py): train_kd.py, test.py, predict.py, export.py,
experiments.py, bench.py.
"""
import csv
import io
import json
import math
import os
import random
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.distributed as dist


# --------------------------------------------------------------------------- metrics
class ConfusionMatrix:
    """Confusion matrix accumulated over a whole split (torchvision references style).

    It keeps one extra row for the ignore label, so that a single pass gives both numbers that
    results.csv reports: the standard mIoU with ignored pixels excluded, and the original project's
    mIoU that clamped 255 into the last class (kept only to compare with its table).
    Rows are targets, columns predictions.
    """

    def __init__(self, num_classes, ignore_index=255, device="cpu"):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes + 1, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred, target):
        """pred, target: integer tensors of the same shape (pred in [0, C), target in [0, C) or ignore)."""
        n = self.num_classes
        target = target.reshape(-1).to(torch.int64)
        pred = pred.reshape(-1).to(torch.int64)
        target = torch.where(target == self.ignore_index, torch.full_like(target, n), target)
        valid = (target >= 0) & (target <= n)
        idx = target[valid] * n + pred[valid]
        self.mat += torch.bincount(idx, minlength=(n + 1) * n).reshape(n + 1, n)

    def reduce_from_all_processes(self):
        if is_dist():
            dist.all_reduce(self.mat)
        return self

    @staticmethod
    def _iou(mat):
        mat = mat.double()
        inter = torch.diag(mat)
        union = mat.sum(0) + mat.sum(1) - inter
        # A class absent from both targets and predictions has no IoU: it is left out of the mean.
        iou = inter / union
        return iou

    def compute(self):
        n = self.num_classes
        mat = self.mat[:n].cpu()
        iou = self._iou(mat)
        miou = float(torch.nanmean(iou)) if torch.isfinite(iou).any() else float("nan")
        total = mat.sum()
        acc = float(torch.diag(mat).sum().double() / total) if total > 0 else float("nan")
        # The original's computation: 255 clamped into class C-1, every pixel counted.
        clamped = self.mat[:n].clone().cpu()
        clamped[n - 1] += self.mat[n].cpu()
        iou_c = self._iou(clamped)
        miou_c = float(torch.nanmean(iou_c)) if torch.isfinite(iou_c).any() else float("nan")
        return {"miou": miou, "pixel_acc": acc, "iou": iou.tolist(), "miou_clamped": miou_c}


# --------------------------------------------------------------------------- errors the user can fix
class UserError(RuntimeError):
    """An error the user can fix (a bad file, flag or folder): a command line prints its message as one line and
    exits 2 (run_cli). The scripts' own error types derive from it."""


class WriteError(UserError):
    """A file could not be written (a full disk, a read-only folder); the file it would have replaced is intact."""


def run_cli(main_fn, args, exit_code=None):
    """Run a script's main(args) as a command: a UserError prints one line and exits 2, Ctrl-C exits 130; a finished
    run exits exit_code(result) (default 0)."""
    try:
        result = main_fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        _stop(2)
    except KeyboardInterrupt:
        _stop(130)
    except Exception as e:  # Ctrl-C inside a C extension's import (matplotlib's, at the first epoch's curves) comes
        if not _interrupted(e):  # out as "ImportError: initialization failed" raised from the KeyboardInterrupt
            raise
        _stop(130)
    sys.exit(exit_code(result) if exit_code else 0)


def _interrupted(error):
    """True when a KeyboardInterrupt is in the error's chain of causes and contexts."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _stop(code):
    """Exit with code after an error. A process of torchrun's (WORLD_SIZE > 1) leaves at once, its output flushed:
    its process group is destroyed by then (engine.session), but a gloo worker thread may still hold a tensor, and
    the interpreter's teardown then dies of SIGABRT ('terminate called without an active exception'), seen about
    once in four runs of tests/test_full_disk.py, so that torchrun reported a signal instead of the exit code.
    Every file the run writes is written whole by then (atomic writes), so skipping the teardown loses nothing. A
    Ctrl-C (130) leaves the same way: a teardown after an interrupt that landed inside torch's or matplotlib's C code
    died once of SIGABRT ('PyThreadState_Get: ... the GIL is released', interpreter finalizing) in
    tests/test_cli.py's Ctrl-C test, so that the shell saw a signal instead of 130."""
    if launched_by_torchrun() or code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _free_space(folder):
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown space"
    return f"{free / 2**20:.1f} MiB" if free >= 2**20 else f"{free} bytes"


# --------------------------------------------------------------------------- files
def atomic_write_bytes(path, data: bytes):
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file. An OSError (a full
    disk, say) becomes a WriteError naming the file and the space left; the file it would replace is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        _atomic_write(path, folder, data)
    except OSError as e:
        raise WriteError(f"could not write {path}: {e.strerror or e} ({_free_space(folder)} free on that "
                         "filesystem); free some space or choose another folder (--save_dir), then run the same "
                         "command again") from None


def _atomic_write(path, folder, data):
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path, records):
    """One JSON line per record (an epoch), the file rewritten whole (small) so that an interrupted write cannot
    corrupt it."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))


def append_csv_row(path, row: dict, first_columns=()):
    """Append a row to a CSV, widening the header when a row brings new columns. Atomic."""
    rows, columns = [], list(first_columns)
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            for c in reader.fieldnames or []:
                if c not in columns:
                    columns.append(c)
    for c in row:
        if c not in columns:
            columns.append(c)
    rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class CheckpointError(UserError):
    pass


def save_checkpoint(obj, path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path, map_location="cpu"):
    """Load with weights_only=True: a pickle inside a downloaded file must not run code."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here means the same thing to the user
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0].split('. ')[0][:160]}). "
            "The file is corrupt, truncated, or not a PyTorch checkpoint (or it holds Python objects "
            "that weights_only=True refuses); delete it and train again, or pass another file."
        ) from None


# --------------------------------------------------------------------------- RNG
def rng_state():
    """RNG states as plain types and tensors, so that weights_only=True can load them."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    py = state["python"]
    gauss = py[-1]
    random.setstate((state["python_version"], tuple(py[:-1]), None if gauss == -1 else gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- distributed seams
def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main():
    return get_rank() == 0


def init_distributed(device_arg):
    """Start the process group when launched by torchrun (RANK/WORLD_SIZE set); resolve the device.

    Returns (device, local_rank). A plain `python train.py` run takes the same code path with world size 1.
    """
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device_arg}: CUDA is not available on this machine; use --device cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if launched_by_torchrun():
        if device_arg.startswith("cuda"):
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
            backend = "nccl"
        else:
            device = torch.device("cpu")
            backend = "gloo"
        dist.init_process_group(backend=backend)
    else:
        device = torch.device(device_arg)
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
    return device, local_rank


def launched_by_torchrun():
    """One of several processes started by torchrun (its RANK and WORLD_SIZE > 1): true before the process group
    starts and after it is destroyed, where is_dist() is not."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def cleanup_distributed():
    if is_dist():
        dist.destroy_process_group()


def all_reduce_sum(t):
    if is_dist():
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_reduce_mean(t):
    if is_dist():
        t = t.clone()
        dist.all_reduce(t)
        t /= get_world_size()
    return t


def average_buffers(model):
    """Average BatchNorm running statistics across processes (timm's distribute_bn): DDP keeps parameters in step
    but each rank's running statistics drift with its own batches, so every rank would validate a different model."""
    if not is_dist():
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf /= get_world_size()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the host: loader workers
NUM_WORKERS_HELP = ("DataLoader worker processes; -1 (default): 0 on the CPU, where workers would take cores from "
                    "the model (the decoded images are cached, so loading is light), min(8, CPU cores) on a GPU")


def resolve_num_workers(num_workers, device):
    """--num_workers -1 -> 0 on the CPU, min(8, cores) on an accelerator. Measured on 2 cores, one response-KD
    epoch at 256x256: 2 workers 34.6 s, none 27.9 s (workers and compute threads fought over the cores)."""
    if num_workers >= 0:
        return num_workers
    return 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)


# --------------------------------------------------------------------------- pictures
def _figure_bytes(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # scripts never open windows
    import matplotlib.pyplot as plt

    return plt


def scored(history):
    """The records of a run's history that hold a val score (--eval_every N scores every Nth epoch and the last)."""
    return [h for h in history if "val_miou" in h]


def plot_curves(history, path, title=""):
    """history: list of per-epoch dicts with 'epoch', 'train_loss', 'val_miou' (and 'val_loss' optional)."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    for key in sorted({k for h in history for k in h if k.startswith("train_") and k != "train_loss"}):
        ax1.plot(epochs, [h.get(key, math.nan) for h in history], label=key.replace("train_", "train "), alpha=0.7)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    val = scored(history)
    ax2.plot([h["epoch"] for h in val], [h["val_miou"] for h in val], color="C3", label="val mIoU",
             marker="." if len(val) < len(history) else None)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("mIoU"), ax2.legend(), ax2.grid(alpha=0.3)
    fig.suptitle(title)
    atomic_write_bytes(path, _figure_bytes(fig))


def plot_miou_curves(curves, path, title="validation mIoU", twin_suffix=None):
    """curves: {label: (epochs, mious)} on one axis, or {label: (epochs, mean, low, high)}: the mean as a line
    and the low-high band (e.g. the min and max over seeds) shaded. With twin_suffix (configs.UNLABELED), a label
    and its twin label + twin_suffix share a colour: the twin solid, the label dashed. The legend sits beside the
    axis, off the curves."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    colours = {}
    for label, (epochs, mious, *band) in curves.items():
        base = label.removesuffix(twin_suffix) if twin_suffix else label
        colour = colours.setdefault(base, f"C{len(colours) % 10}")
        dashed = bool(twin_suffix) and label + twin_suffix in curves
        ax.plot(epochs, mious, label=label, color=colour, linestyle="--" if dashed else "-")
        if band:
            ax.fill_between(epochs, band[0], band[1], color=colour, alpha=0.15 if dashed else 0.2, linewidth=0)
    ax.set_xlabel("epoch"), ax.set_ylabel("val mIoU"), ax.set_title(title), ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    atomic_write_bytes(path, _figure_bytes(fig))


def plot_predictions(images, targets, preds, path, title=""):
    """images/targets/preds: lists of HxWx3 uint8 arrays (already colorized). Rows: image | truth | prediction."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        for j, (pic, name) in enumerate(((images[i], "image"), (targets[i], "ground truth"), (preds[i], "prediction"))):
            axes[i, j].imshow(pic)
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(name)
    fig.suptitle(title)
    atomic_write_bytes(path, _figure_bytes(fig))
