"""The training engine: the loop, evaluation, one training state, checkpoints, resume and early stopping.

It knows no method and builds no network. A script builds the network and the loss (losses.py) and hands them to
fit(): the loss says what it needs from the network (its `needs`), what it trains besides it (trainable()) and how
that is wrapped for DDP; the engine calls, logs, saves and restores accordingly. Everything a run carries from one
epoch to the next is one TrainState with one state_dict() / load_state_dict() pair, and write_checkpoint() writes
every checkpoint from it. The training scripts and test.py are thin command lines over this module
(torchvision's references/segmentation/train.py and DeiT's engine.py are the models).

    with engine.session(args) as device:             # processes, backends, seed
        data = engine.build_data(args, device)      # then the network, then the loss: the RNG order of every run
        model = build_model(...)
        return engine.fit(args, run, model, loss, data, device, meta)
"""
import argparse
import itertools
import math
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import fast
import utils
from dataset import (DatasetError, add_data_args, build_dataset, colorize, dataset_info, denormalize, info_to_dict,
                     parse_size)


class NonFiniteLoss(utils.UserError):
    pass
class EpochSeededSampler(DistributedSampler):
    """DistributedSampler that also hands each sample a seed derived from (seed, epoch, index).

    The dataset runs its random augmentations under that seed, so an epoch's data depends on nothing but the
    epoch number: a resumed run sees exactly the images an uninterrupted one would, whatever the workers do.
    """

    def __iter__(self):
        for idx in super().__iter__():
            yield idx, (self.seed * 1_000_003 + self.epoch) * 1_000_003 + idx


# --------------------------------------------------------------------------- argument handling
def get_args_parser(description, add_help=True):
    """The flags every training script shares; each script adds its own (model, method)."""
    p = argparse.ArgumentParser(description=description, add_help=add_help)
    p.add_argument("--epochs", type=int, default=500)
    p.add_argument("--save_dir", default="weights")
    p.add_argument("--steps_per_epoch", type=int, default=0,
                   help="0: an epoch is one pass over the training split; N: the first N batches of each epoch's "
                        "shuffled pass (one budget in steps for runs whose splits differ in size)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=30, help="early stopping on --monitor; 0 disables it")
    p.add_argument("--eval_every", type=int, default=1,
                   help="score the val split every N epochs and after the last (RUN_best.pth sees only those); the "
                        "weights are those of --eval_every 1; needs --patience 0 and --scheduler poly or none")
    p.add_argument("--delta", type=float, default=0.0, help="minimum improvement of --monitor that resets the patience")
    p.add_argument("--monitor", default="loss", choices=["loss", "miou"],
                   help="what the plateau scheduler, early stopping and RUN_best.pth watch: val loss (lower is "
                        "better; the original train.py's choice) or val mIoU; each script sets its default")
    add_data_args(p, augment_default="train")
    p.add_argument("--num_workers", type=int, default=-1, help=utils.NUM_WORKERS_HELP)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    p.add_argument("--scheduler", default="plateau", choices=["plateau", "poly", "none"],
                   help="plateau: ReduceLROnPlateau(factor 0.5, patience 10) on --monitor (the original); "
                        "poly: (1 - it/total)^0.9 per step, for fixed budgets")
    p.add_argument("--run_name", default=None, help="file prefix under --save_dir (default: the training mode)")
    p.add_argument("--resume", default="", help="checkpoint to continue from, or 'auto' (RUN_last.pth if present)")
    p.add_argument("--amp", action="store_true", help="mixed precision: bf16 where supported, else fp16 + GradScaler")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC memory layout (faster convolutions on CPU and tensor cores)")
    p.add_argument("--sync_bn", action="store_true", help="SyncBatchNorm across GPUs (torchrun + CUDA only)")
    p.add_argument("--log_interval", type=int, default=20, help="steps between loss read-backs (host syncs)")
    p.add_argument("--num_vis", type=int, default=4, help="validation images in RUN_predictions.png")
    p.add_argument("--no_progress", action="store_true", help="no tqdm bars (logs only)")
    return p


def check_args(args, parser, rules=()):
    """Bad flags fail here, before any data or network is touched. rules: the script's own, as (flag, ok, why)."""
    common = [
        ("batch_size", lambda v: v >= 1, "must be at least 1"),
        ("epochs", lambda v: v >= 1, "must be at least 1"),
        ("learning_rate", lambda v: v > 0, "must be > 0"),
        ("weight_decay", lambda v: v >= 0, "must be >= 0"),
        ("num_workers", lambda v: v >= -1, "must be >= 0, or -1 (auto)"),
        ("steps_per_epoch", lambda v: v >= 0, "must be >= 0 (0: one pass over the training split)"),
        ("eval_every", lambda v: v >= 1, "must be at least 1 (1: score the val split after every epoch)"),
    ]
    for name, ok, why in [*common, *rules]:
        if hasattr(args, name) and not ok(getattr(args, name)):
            parser.error(f"--{name} {getattr(args, name)}: {why}")
    if getattr(args, "eval_every", 1) > 1 and (args.patience > 0 or args.scheduler == "plateau"):
        parser.error(f"--eval_every {args.eval_every}: early stopping (--patience {args.patience}) and the plateau "
                     f"scheduler (--scheduler {args.scheduler}) watch every epoch's val score; pass --patience 0 and "
                     "--scheduler poly (or none), or --eval_every 1")
    try:
        parse_size(args.img_size)
    except (ValueError, DatasetError) as e:
        parser.error(f"--img_size {' '.join(map(str, args.img_size))}: {e}")


# --------------------------------------------------------------------------- the loop
def make_autocast(device, enabled):
    """Built once (nanoGPT): the loop has no AMP branches."""
    if not enabled:
        return nullcontext(), torch.amp.GradScaler(enabled=False)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    return torch.autocast(device.type, dtype=dtype), torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def images_to_device(images, device, channels_last):
    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def to_device(images, targets, device, channels_last):
    return images_to_device(images, device, channels_last), targets.to(device, non_blocking=True)


def train_one_epoch(model, criterion, optimizer, loader, device, epoch, *, autocast=None, scaler=None,
                    scheduler_step=None, channels_last=True, log_interval=20, progress=True):
    """One pass over the loader. Returns the mean of every loss part. Reads losses back to the host only every
    log_interval steps (each .item() is a device sync); a non-finite loss raises NonFiniteLoss."""
    model.train()
    criterion.train()
    autocast = autocast or nullcontext()
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    sums, count = {}, 0
    # what the loss moves outside the optimizer after a step (losses.Loss.after_step); a loss of one's own may lack it
    after_step = getattr(criterion, "after_step", None)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not (progress and utils.is_main()),
               dynamic_ncols=True)
    for step, (images, targets, *teacher_view) in enumerate(bar):
        images, targets = to_device(images, targets, device, channels_last)
        # A loader may give the teacher a view of its own (--unlabeled_views weak_strong): handed to the loss as it is
        view = {"teacher_images": images_to_device(teacher_view[0], device, channels_last)} if teacher_view else {}
        with autocast:
            outputs = model(images, needs=criterion.needs)  # {name: output}: model.py's forward convention
            losses = criterion(images, outputs, targets, **view)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler_step is not None:
            scheduler_step()
        if after_step is not None:
            after_step(model)
        sums = {k: sums.get(k, 0.0) + v.detach().float() for k, v in losses.items()}
        count += 1
        if (step + 1) % log_interval == 0:
            loss = utils.all_reduce_mean(losses["loss"].detach().float()).item()
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"loss became {loss} at epoch {epoch}, step {step + 1}")
            bar.set_postfix(loss=f"{loss:.4f}")
    if count == 0:
        raise DatasetError("the training loader produced no batch: the training split has fewer images than "
                           "--batch_size per process; lower --batch_size")
    means = {k: utils.all_reduce_mean(v / count).item() for k, v in sums.items()}
    if not all(math.isfinite(v) for v in means.values()):
        raise NonFiniteLoss(f"loss became non-finite during epoch {epoch}: {means}")
    return means


@torch.inference_mode()
def evaluate(model, loader, device, num_classes, ignore_index=255, *, autocast=None, channels_last=True,
             progress=True, time_inference=False):
    """Returns (confusion matrix, val loss, seconds per image) over the whole split, reduced across processes.
    The val loss is the cross-entropy averaged over every labelled pixel of the split (255 excluded). With
    time_inference, the mean forward time per image, the device synchronised around each forward pass (else None)."""
    model.eval()
    autocast = autocast or nullcontext()
    cm = utils.ConfusionMatrix(num_classes, ignore_index, device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seconds, images_timed = 0.0, 0
    bar = tqdm(loader, desc="val", leave=False, disable=not (progress and utils.is_main()), dynamic_ncols=True)
    for i, (images, targets) in enumerate(bar):
        images, targets = to_device(images, targets, device, channels_last)
        if time_inference:
            utils.synchronize(device)
            t0 = time.perf_counter()
        with autocast:
            logits = model(images)
        if time_inference:
            utils.synchronize(device)
            if i > 0 or len(loader) == 1:  # the first batch pays for lazy initialisation: not counted
                seconds += time.perf_counter() - t0
                images_timed += images.shape[0]
        cm.update(logits.argmax(1), targets)
        loss_sum += F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum").double()
    cm.reduce_from_all_processes()
    labelled = cm.mat[:num_classes].sum().item()  # reduced already; the last row holds the ignored pixels
    loss = (utils.all_reduce_sum(loss_sum).item() / labelled) if labelled else float("nan")
    return cm, loss, (seconds / images_timed if images_timed else None)


def build_optimizer(args, params):
    """Adam, AdamW (fused on the CPU: fast.adam_kwargs) or SGD with momentum 0.9 over params (on their device)."""
    params = list(params)
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay,
                                **fast.adam_kwargs(params))
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay,
                                 **fast.adam_kwargs(params))
    return torch.optim.SGD(params, lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay)


def build_scheduler(args, optimizer, steps_per_epoch):
    """plateau: stepped once per epoch on --monitor; poly: stepped after every optimizer step; none: None."""
    if args.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if args.monitor == "miou" else "min", factor=0.5, patience=10)
    if args.scheduler == "poly":
        total = args.epochs * steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / total) ** 0.9)
    return None


def build_data(args, device):
    """The dataset's info, both splits and their loaders (the train loader's sampler seeds every augmentation)."""
    size = parse_size(args.img_size)
    info = dataset_info(args.dataset, args.root_dir)  # a folder's classes.txt is read (and refused) first
    common = dict(root=args.root_dir, img_size=size, train_split=args.train_split, ignore_index=args.ignore_index,
                  val_fraction=args.val_fraction)
    train_set = build_dataset(args.dataset, split="train", train=True, augment=args.augment,
                              geometric=args.geometric, download=args.download, **common)
    val_set = build_dataset(args.dataset, split="val", train=False, val_split=args.val_split, **common)
    world, rank = utils.get_world_size(), utils.get_rank()
    sampler = EpochSeededSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    per_rank = len(sampler)
    if per_rank < 2 and args.batch_size > 1 or per_rank == 0:
        raise DatasetError(f"{args.root_dir}: the training split has {len(train_set)} images, too few for "
                           f"{world} process(es); BatchNorm needs at least 2 images per batch")
    workers = utils.resolve_num_workers(args.num_workers, device)
    loader_kw = dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    train_loader = DataLoader(
        train_set, batch_size=args.batch_size, sampler=sampler, drop_last=per_rank >= args.batch_size,
        # The loader's own generator: drawing worker seeds must not move the global RNG (exact resume).
        generator=torch.Generator().manual_seed(args.seed), **loader_kw)
    if args.steps_per_epoch:
        if args.steps_per_epoch > len(train_loader):
            raise DatasetError(f"--steps_per_epoch {args.steps_per_epoch}: the training split gives "
                               f"{len(train_loader)} batches per pass; ask for at most that many")
        train_loader = FirstBatches(train_loader, args.steps_per_epoch)
    val_indices = list(range(rank, len(val_set), world))  # no padding: every image counted exactly once
    val_loader = DataLoader(val_set, batch_size=args.batch_size, sampler=val_indices, **loader_kw)
    return SimpleNamespace(info=info, train_set=train_set, val_set=val_set,
                           train_loader=train_loader, val_loader=val_loader)


class FirstBatches:
    """The first n batches of a loader's pass (--steps_per_epoch); its sampler and settings are the loader's."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __len__(self):
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)

    def __getattr__(self, name):  # sampler, num_workers, pin_memory ...
        return getattr(self.loader, name)


@contextmanager
def session(args):
    """Start the processes (torchrun) and the backends, seed every generator; yields the device. A script builds
    its data, network and loss inside, in that order, so every run draws its random numbers in the same order."""
    device, _ = utils.init_distributed(args.device)
    try:
        fast.setup_backends(device)
        utils.seed_everything(args.seed)
        yield device
    finally:
        utils.cleanup_distributed()


# --------------------------------------------------------------------------- checkpoints
def checkpoint_meta(args, mode, info, extra_meta):
    """What every checkpoint records besides the weights: the network, the dataset and its classes (dataset_info:
    names and palette, so predict.py and export.py need no data folder), the mode and the args."""
    return {"model_name": args.model_name, "num_classes": info.num_classes, "dataset": info.name,
            "dataset_info": info_to_dict(info), "mode": mode, **extra_meta, "args": dict(vars(args))}


def check_compatible(ckpt, args, info, path):
    """A checkpoint for another architecture or class count fails with a message, not a size-mismatch trace."""
    got = (ckpt.get("model_name"), ckpt.get("num_classes"))
    want = (args.model_name, info.num_classes)
    if got != want:
        raise utils.CheckpointError(
            f"{path} holds a {got[0]} with {got[1]} classes, but this run builds a {want[0]} with {want[1]} "
            f"classes (--model_name / --dataset). Pass matching flags or another checkpoint.")


# Flags that say how a run is carried out, not what it computes: a resume may change them. Every other flag saved in a
# checkpoint is part of the recipe (data, split, sizes, augmentation, optimizer, schedule, seed, loss weights ...).
# A script adds its own such flags (fit's may_change).
RUN_CONTROL = {"resume", "device", "num_workers", "no_progress", "log_interval", "num_vis", "save_dir", "root_dir",
               "download", "run_name", "compile", "channels_last", "sync_bn", "eval_every"}


def check_same_recipe(ckpt, args, path, may_change=()):
    """A resume must not mix two recipes, nor a finished run be 'skipped' under flags it never had: name every
    flag whose value differs from the checkpoint's (flags that one of the two does not know are not compared)."""
    saved, now = ckpt.get("args") or {}, vars(args)
    as_saved = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 - a checkpoint holds tuples as lists
    free = RUN_CONTROL | set(may_change)
    diff = [k for k in sorted(set(saved) & set(now) - free) if as_saved(saved[k]) != as_saved(now[k])]
    if diff:
        flags = ", ".join(f"--{k} {saved[k]!r} there, {now[k]!r} here" for k in diff)
        raise utils.CheckpointError(
            f"{path} was trained with another recipe ({flags}); resuming it would mix the two (or skip this run as "
            "finished). Use another --save_dir or --run_name, or move that file away to start afresh.")


class TrainState:
    """Everything a run carries from one epoch to the next (torch.distributed.checkpoint's "Stateful"): the network,
    the loss's trainable parts, optimizer, scheduler, scaler, early stopping, history and the RNG states."""

    def __init__(self, model, extra, optimizer, scheduler, scaler, args, carried=None):
        self.model, self.extra, self.optimizer, self.scheduler, self.scaler = model, extra, optimizer, scheduler, scaler
        self.carried = carried  # the loss's state outside the optimizer (an EMA teacher), or None
        self.monitor, self.delta, self.patience, self.epochs = args.monitor, args.delta, args.patience, args.epochs
        self.epoch = -1  # the last finished epoch
        self.best = -math.inf  # the best --monitor value so far as a score, higher is better (minus the loss)
        self.best_miou, self.bad_epochs, self.history, self.finished = -1.0, 0, [], False
        self.rng = None  # the RNG states a resume restores just before the first step

    def state_dict(self):
        return {
            **({"carried": self.carried.state_dict()} if self.carried is not None else {}),
            "model": self.model.state_dict(),
            "criterion": self.extra.state_dict() if self.extra is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict(),
            "early_stopping": {"best": self.best, "bad_epochs": self.bad_epochs, "monitor": self.monitor},
            "epoch": self.epoch, "best_miou": self.best_miou, "history": self.history,
            "rng": utils.rng_state(), "finished": self.finished,
        }

    def load_state_dict(self, sd, path="the checkpoint"):
        stopping = sd["early_stopping"]
        if stopping.get("monitor", "miou") != self.monitor:
            raise utils.CheckpointError(
                f"{path} was trained with --monitor {stopping.get('monitor', 'miou')}; resume it with the same "
                f"--monitor (this run has {self.monitor})")
        self.model.load_state_dict(sd["model"])
        if self.extra is not None:
            try:
                self.extra.load_state_dict(sd.get("criterion") or {})
            except RuntimeError:
                raise utils.CheckpointError(
                    f"{path} holds no state for this loss's trainable parts (written by another loss or an older "
                    "version of this repo); start afresh without --resume") from None
        if self.carried is not None:
            if "carried" not in sd:
                raise utils.CheckpointError(f"{path} holds none of the loss's state outside the optimizer (written "
                                            "without --ema_teacher?); start afresh without --resume")
            self.carried.load_state_dict(sd["carried"])
        self.optimizer.load_state_dict(sd["optimizer"])
        if self.scheduler is not None and sd.get("lr_scheduler"):
            self.scheduler.load_state_dict(sd["lr_scheduler"])
        if sd.get("scaler"):
            self.scaler.load_state_dict(sd["scaler"])
        self.best, self.bad_epochs = stopping["best"], stopping["bad_epochs"]
        self.epoch, self.best_miou, self.history = sd["epoch"], sd["best_miou"], sd["history"]
        self.rng, self.finished = sd["rng"], bool(sd.get("finished"))

    def end_epoch(self, epoch, parts, val_loss, res, seconds):
        """Step the plateau scheduler, early stopping and the history; returns (record, improved). res None: an
        epoch that --eval_every does not score (its record has no val keys, and nothing watches it)."""
        if res is None:
            return self._record(epoch, parts, {}, seconds), False
        miou = res["miou"]
        watched = miou if self.monitor == "miou" else val_loss
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(watched)
        score = watched if self.monitor == "miou" else -watched
        improved = score > self.best + self.delta
        if improved:
            self.best, self.best_miou, self.bad_epochs = score, miou, 0
        else:
            self.bad_epochs += 1
        return self._record(epoch, parts, {"val_loss": val_loss, "val_miou": miou, "val_pixel_acc": res["pixel_acc"]},
                            seconds), improved

    def _record(self, epoch, parts, val, seconds):
        record = {"epoch": epoch, **{f"train_{k}": v for k, v in parts.items()}, **val,
                  "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": round(seconds, 3)}
        self.history.append(record)
        self.epoch = epoch
        self.finished = self.stopped_early or epoch == self.epochs - 1
        return record

    @property
    def stopped_early(self):
        return self.patience > 0 and self.bad_epochs >= self.patience


def write_checkpoint(path, state, meta, full=True):
    """Every checkpoint of a run, written from its one state: full (RUN_last.pth, the resume point) or the network
    alone (RUN_best.pth, RUN_interrupted.pth: small files for test.py, predict.py and export.py)."""
    sd = state.state_dict() if full else {"model": state.model.state_dict(), "epoch": state.epoch,
                                          "best_miou": state.best_miou}
    utils.save_checkpoint({**meta, **sd}, path)


def all_ranks_agree(error, device):
    """Under DDP, one process's error (a full disk on rank 0) ends every process instead of leaving the others
    waiting in the next collective: each learns whether any failed, and those that did not raise too."""
    if utils.is_dist():
        failed = utils.all_reduce_sum(torch.tensor([int(error is not None)], device=device))
        if failed.item() and error is None:
            error = utils.UserError("another process failed (its message is above); stopping this one too")
    if error is not None:
        raise error


def save_predictions(model, val_set, device, info, path, indices, channels_last, title):
    """A picture with one row per validation image: image | ground truth | prediction."""
    if len(indices) == 0:
        return
    model.eval()
    images, truths, preds = [], [], []
    with torch.inference_mode():
        for i in indices:
            image, mask = val_set[i]
            x = image[None].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pred = model(x).argmax(1)[0].cpu().numpy()
            images.append(denormalize(image))
            truths.append(colorize(mask.numpy(), info.palette))
            preds.append(colorize(pred, info.palette))
    utils.plot_predictions(images, truths, preds, path, title)


# --------------------------------------------------------------------------- fit
def fit(args, mode, model, criterion, data, device, meta=None, may_change=()):
    """Train `model` with `criterion` (losses.py) on `data` (build_data) inside session(). Files go to
    args.save_dir as RUN_* (RUN: --run_name, else mode): RUN_best.pth, RUN_last.pth, RUN_log.jsonl, RUN_curves.png, RUN_predictions.png.
    meta: what a checkpoint must also record to rebuild the network (the script knows); may_change: the script's
    own flags that a resume may change. Returns {best_miou, history, best_path, skipped, model, criterion}."""
    main_proc, info = utils.is_main(), data.info
    run = args.run_name or mode
    meta = checkpoint_meta(args, mode, info, meta or {})
    state, autocast = prepare(args, model, criterion, len(data.train_loader), device)
    model = state.model  # SyncBatchNorm, when asked, is a new module
    os.makedirs(args.save_dir, exist_ok=True)
    paths = {k: os.path.join(args.save_dir, f"{run}_{k}") for k in
             ("best.pth", "last.pth", "interrupted.pth", "log.jsonl", "curves.png", "predictions.png")}
    resume(state, args, paths["last.pth"], info, may_change)
    done = {"best_miou": state.best_miou, "history": state.history, "best_path": paths["best.pth"],
            "model": model, "criterion": criterion}
    if state.finished:
        if main_proc:
            print(f"{run}: training already finished ({paths['last.pth']}); nothing to do")
        return {**done, "skipped": True}
    train_model = wrap_for_training(model, criterion, args, device)
    if state.rng is not None:
        utils.set_rng_state(state.rng)
    if main_proc:
        print(f"{run}: {args.model_name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) on "
              f"{info.name} ({len(data.train_set)} train / {len(data.val_set)} val at {parse_size(args.img_size)}), "
              f"device {device}, {utils.get_world_size()} process(es), epochs {state.epoch + 1}..{args.epochs - 1}")
    poly = args.scheduler == "poly"
    loop = dict(channels_last=args.channels_last, progress=not args.no_progress)
    try:
        for epoch in range(state.epoch + 1, args.epochs):
            t0 = time.time()
            data.train_loader.sampler.set_epoch(epoch)
            parts = train_one_epoch(train_model, criterion, state.optimizer, data.train_loader, device, epoch,
                                    autocast=autocast, scaler=state.scaler, log_interval=args.log_interval,
                                    scheduler_step=state.scheduler.step if poly else None, **loop)
            utils.average_buffers(model)
            scores = (None, None)  # an epoch --eval_every leaves unscored: no val keys, nothing watches it
            if (epoch + 1) % args.eval_every == 0 or epoch == args.epochs - 1:
                cm, val_loss, _ = evaluate(model, data.val_loader, device, info.num_classes, info.ignore_index,
                                           autocast=autocast, **loop)
                scores = (val_loss, cm.compute())
            else:  # starting the iterator draws its base seed (from the global RNG without a generator), so the
                iter(data.val_loader)  # training goes on as with every epoch scored (tests/test_eval_every.py)
            record, improved = state.end_epoch(epoch, parts, *scores, time.time() - t0)
            error = None
            if main_proc:
                try:
                    write_epoch(state, record, improved, paths, meta, args, run, info)
                except utils.WriteError as e:
                    error = e
            all_ranks_agree(error, device)
            if state.stopped_early:
                if main_proc:
                    print(f"early stopping: no val {args.monitor} improvement above {args.delta} for "
                          f"{args.patience} epochs")
                break
    except KeyboardInterrupt:
        if main_proc:
            write_checkpoint(paths["interrupted.pth"], state, meta, full=False)
            print(f"\ninterrupted: weights of the unfinished epoch saved to {paths['interrupted.pth']}; "
                  f"{paths['last.pth']} (last complete epoch) is intact: re-run the same command with --resume auto "
                  "to continue", file=sys.stderr)
        raise
    if main_proc:
        save_predictions(model, data.val_set, device, info, paths["predictions.png"],
                         range(min(args.num_vis, len(data.val_set))), args.channels_last,
                         title=f"{run}: {args.model_name}, last epoch")
        print(f"{run}: best epoch by val {args.monitor}: val mIoU {state.best_miou:.4f}; weights in {paths['best.pth']}")
    return {**done, "best_miou": state.best_miou, "skipped": False}


def prepare(args, model, criterion, steps_per_epoch, device):
    """The network and the loss on the device; the TrainState around them; the autocast context."""
    if args.sync_bn:
        if not (utils.is_dist() and device.type == "cuda"):
            raise SystemExit("--sync_bn needs several CUDA processes (torchrun with --device cuda)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion.to(device)
    extra = criterion.trainable()  # what the loss trains beside the network, or None
    optimizer = build_optimizer(args, list(model.parameters()) + (list(extra.parameters()) if extra else []))
    autocast, scaler = make_autocast(device, args.amp)
    scheduler = build_scheduler(args, optimizer, steps_per_epoch)
    return TrainState(model, extra, optimizer, scheduler, scaler, args, criterion.carried()), autocast


def resume(state, args, last_path, info, may_change):
    """--resume FILE, or --resume auto with RUN_last.pth present: load it into the state after checking that it
    holds this network and this recipe."""
    path = last_path if args.resume == "auto" and os.path.isfile(last_path) else (
        args.resume if args.resume not in ("", "auto") else None)
    if path is None:
        if os.path.isfile(last_path) and utils.is_main():
            print(f"note: starting afresh; {last_path} of an earlier run will be replaced after the first epoch "
                  "(stop now and add --resume auto to continue it instead)")
        return
    ckpt = utils.load_checkpoint(path)
    check_compatible(ckpt, args, info, path)
    check_same_recipe(ckpt, args, path, may_change)
    state.load_state_dict(ckpt, path)
    if utils.is_main():
        print(f"resumed from {path}: epoch {state.epoch} done, best val mIoU "  # none yet: as write_epoch's line
              + (f"{state.best_miou:.4f}" if math.isfinite(state.best) else "none yet"))


def wrap_for_training(model, criterion, args, device):
    """DDP around the network and the loss's trainable parts (their gradients averaged), then torch.compile."""
    train_model = model
    if utils.is_dist():
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if criterion.trainable() is not None:
            criterion.wrap_trainable(lambda m: nn.parallel.DistributedDataParallel(m, device_ids=ids))
    return torch.compile(train_model) if args.compile else train_model


def write_epoch(state, record, improved, paths, meta, args, run, info):
    """Rank 0's files after an epoch: RUN_best.pth when it improved, RUN_last.pth, the log line, the curves."""
    if improved:
        write_checkpoint(paths["best.pth"], state, meta, full=False)
    write_checkpoint(paths["last.pth"], state, meta)
    # the whole history, as the checkpoint holds it: a run started afresh replaces an earlier run's log (appending
    # mixed two runs, and a half-done rerun over a finished log read as finished), a resumed one continues its own
    utils.write_jsonl(paths["log.jsonl"], state.history)
    utils.plot_curves(state.history, paths["curves.png"], title=f"{run}: {args.model_name} on {info.name}")
    scored = (f"val loss {record['val_loss']:.4f}, val mIoU {record['val_miou']:.4f} " if "val_miou" in record
              else f"val not scored (--eval_every {args.eval_every}) ")
    best = f"{abs(state.best):.4f}" if math.isfinite(state.best) else "none yet"
    print(f"{run} epoch {record['epoch']}: loss {record['train_loss']:.4f}, {scored}"
          f"(best {args.monitor}: {best}), lr {record['lr']:.2e}, {record['epoch_time_s']:.1f}s"
          + (" *" if improved else ""))


def run_cli(main_fn, parser, rules=()):
    """Parse and check the flags (rules: the script's own, as (flag, ok, why)), then run main as a command."""
    args = parser.parse_args()
    check_args(args, parser, rules)
    utils.run_cli(main_fn, args)
