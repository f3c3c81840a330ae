"""The training engine: the loop, evaluation, checkpoints, resume and early stopping, written once.

It knows no method. A script hands fit() a model builder and, optionally, a loss builder (losses.py): the loss says
what it needs from the model (logits or features), what it trains besides the model, and how that is wrapped for
DDP; the engine calls, logs, saves and restores accordingly. The training scripts and test.py are thin command
lines over this module (torchvision's references/segmentation/train.py and DeiT's engine.py are the models).
"""
import argparse
import math
import os
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import fast
import utils
from dataset import DATASETS, DatasetError, add_data_args, build_dataset, colorize, denormalize, parse_size
from losses import SegmentationLoss


class NonFiniteLoss(RuntimeError):
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
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--patience", type=int, default=30, help="early stopping on --monitor; 0 disables it")
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
    ]
    for name, ok, why in [*common, *rules]:
        if hasattr(args, name) and not ok(getattr(args, name)):
            parser.error(f"--{name} {getattr(args, name)}: {why}")
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


def to_device(images, targets, device, channels_last):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


def train_one_epoch(model, criterion, optimizer, loader, device, epoch, *, autocast=None, scaler=None,
                    scheduler_step=None, channels_last=True, log_interval=20, progress=True):
    """One pass over the loader. Returns the mean of every loss part. Reads losses back to the host only every
    log_interval steps (each .item() is a device sync); a non-finite loss raises NonFiniteLoss."""
    model.train()
    criterion.train()
    autocast = autocast or nullcontext()
    scaler = scaler or torch.amp.GradScaler(enabled=False)
    sums, count = {}, 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not (progress and utils.is_main()),
               dynamic_ncols=True)
    for step, (images, targets) in enumerate(bar):
        images, targets = to_device(images, targets, device, channels_last)
        with autocast:
            outputs = model(images, return_features=criterion.needs_features)
            losses = criterion(images, outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler_step is not None:
            scheduler_step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
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
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.learning_rate, momentum=0.9, weight_decay=args.weight_decay)


def build_loaders(args, device):
    size = parse_size(args.img_size)
    common = dict(root=args.root_dir, img_size=size, train_split=args.train_split)
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
    val_indices = list(range(rank, len(val_set), world))  # no padding: every image counted exactly once
    val_loader = DataLoader(val_set, batch_size=args.batch_size, sampler=val_indices, **loader_kw)
    return train_set, val_set, train_loader, val_loader


def checkpoint_meta(args, mode, info, extra_meta):
    return {"model_name": args.model_name, "num_classes": info.num_classes, "dataset": info.name, "mode": mode,
            **extra_meta, "args": dict(vars(args))}


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
RUN_CONTROL = {"resume", "device", "num_workers", "no_progress", "log_interval", "num_vis", "save_dir", "root_dir",
               "download", "run_name", "teacher_weights", "results_csv", "compile", "channels_last", "sync_bn"}


def check_same_recipe(ckpt, args, path):
    """A resume must not mix two recipes, nor a finished run be 'skipped' under flags it never had: name every
    flag whose value differs from the checkpoint's (flags that one of the two does not know are not compared)."""
    saved, now = ckpt.get("args") or {}, vars(args)
    as_saved = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 - a checkpoint holds tuples as lists
    diff = [k for k in sorted(set(saved) & set(now) - RUN_CONTROL) if as_saved(saved[k]) != as_saved(now[k])]
    if diff:
        flags = ", ".join(f"--{k} {saved[k]!r} there, {now[k]!r} here" for k in diff)
        raise utils.CheckpointError(
            f"{path} was trained with another recipe ({flags}); resuming it would mix the two (or skip this run as "
            "finished). Use another --save_dir or --run_name, or move that file away to start afresh.")


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


def fit(args, mode, build_model, build_criterion=None, extra_meta=None):
    """Train the network that build_model(num_classes) returns with the loss that build_criterion(model, info,
    device) returns (cross-entropy when None). Files go to args.save_dir under args.run_name or `mode`.
    extra_meta: what a checkpoint must also record to rebuild the network (the script knows). Handles data,
    optimizer, schedule, early stopping, checkpoints, resume, logs and pictures."""
    device, _ = utils.init_distributed(args.device)
    try:
        return _fit(args, mode, build_model, build_criterion, extra_meta or {}, device)
    finally:
        utils.cleanup_distributed()


def _fit(args, mode, build_model, build_criterion, extra_meta, device):
    main_proc = utils.is_main()
    run = args.run_name or mode
    info = DATASETS[args.dataset]
    fast.setup_backends(device)
    utils.seed_everything(args.seed)

    train_set, val_set, train_loader, val_loader = build_loaders(args, device)
    model = build_model(info.num_classes)
    if args.sync_bn:
        if not (utils.is_dist() and device.type == "cuda"):
            raise SystemExit("--sync_bn needs several CUDA processes (torchrun with --device cuda)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The loss's own randomness (the networks it builds, the init of its trainable parts) stays off the global
    # stream, so a loss whose extra terms are weighted 0 replays the cross-entropy run exactly.
    with torch.random.fork_rng(devices=[]):
        criterion = build_criterion(model, info, device) if build_criterion else SegmentationLoss(info.ignore_index)
    criterion.to(device)
    extra = criterion.trainable()  # what the loss trains beside the model, or None
    optimizer = build_optimizer(args, list(model.parameters()) + (list(extra.parameters()) if extra else []))

    higher_is_better = args.monitor == "miou"
    if args.scheduler == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if higher_is_better else "min", factor=0.5, patience=10)
    elif args.scheduler == "poly":
        total = args.epochs * len(train_loader)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / total) ** 0.9)
    else:
        scheduler = None
    autocast, scaler = make_autocast(device, args.amp)

    # Resume: model, optimizer, schedule, early stopping, epoch, RNG states, history.
    os.makedirs(args.save_dir, exist_ok=True)
    last_path = os.path.join(args.save_dir, f"{run}_last.pth")
    best_path = os.path.join(args.save_dir, f"{run}_best.pth")
    resume = last_path if args.resume == "auto" and os.path.isfile(last_path) else (
        args.resume if args.resume not in ("", "auto") else None)
    # best: the best --monitor value so far, as a score where higher is better (minus the loss for "loss")
    start_epoch, best, best_miou, bad_epochs, history = 0, -math.inf, -1.0, 0, []
    rng_to_restore = None
    if not resume and os.path.isfile(last_path) and main_proc:
        print(f"note: starting afresh; {last_path} of an earlier run will be replaced after the first epoch "
              "(stop now and add --resume auto to continue it instead)")
    if resume:
        ckpt = utils.load_checkpoint(resume)
        check_compatible(ckpt, args, info, resume)
        check_same_recipe(ckpt, args, resume)
        model.load_state_dict(ckpt["model"])
        if extra is not None:
            try:
                extra.load_state_dict(ckpt.get("criterion") or {})
            except RuntimeError:
                raise utils.CheckpointError(
                    f"{resume} holds no state for this loss's trainable parts (written by another loss or an older "
                    "version of this repo); start afresh without --resume") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("lr_scheduler"):
            scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"] + 1
        stopping = ckpt["early_stopping"]
        if stopping.get("monitor", "miou") != args.monitor:
            raise utils.CheckpointError(
                f"{resume} was trained with --monitor {stopping.get('monitor', 'miou')}; resume it with the same "
                f"--monitor (this run has {args.monitor})")
        best, bad_epochs, best_miou = stopping["best"], stopping["bad_epochs"], ckpt["best_miou"]
        history = ckpt["history"]
        rng_to_restore = ckpt["rng"]
        if main_proc:
            print(f"resumed from {resume}: epoch {ckpt['epoch']} done, best val mIoU {best_miou:.4f}")
        if ckpt.get("finished"):
            if main_proc:
                print(f"{run}: training already finished ({resume}); nothing to do")
            return {"best_miou": best_miou, "history": history, "best_path": best_path, "skipped": True,
                    "model": model, "criterion": criterion}

    train_model = model
    if utils.is_dist():
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if extra is not None:  # the loss's trainable parts: their gradients are averaged too
            criterion.wrap_trainable(lambda m: nn.parallel.DistributedDataParallel(
                m, device_ids=[device.index] if device.type == "cuda" else None))
    if args.compile:
        train_model = torch.compile(train_model)
    scheduler_step = scheduler.step if args.scheduler == "poly" else None
    if rng_to_restore is not None:
        utils.set_rng_state(rng_to_restore)

    if main_proc:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{run}: {args.model_name} ({n_params / 1e6:.2f}M params) on {info.name} "
              f"({len(train_set)} train / {len(val_set)} val at {parse_size(args.img_size)}), device {device}, "
              f"{utils.get_world_size()} process(es), epochs {start_epoch}..{args.epochs - 1}")

    def state(epoch, finished):
        return {
            **checkpoint_meta(args, mode, info, extra_meta),
            "model": model.state_dict(),
            "criterion": extra.state_dict() if extra is not None else None,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "early_stopping": {"best": best, "bad_epochs": bad_epochs, "monitor": args.monitor},
            "epoch": epoch, "best_miou": best_miou, "history": history,
            "rng": utils.rng_state(), "finished": finished,
        }

    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, args.epochs):
            t0 = time.time()
            train_loader.sampler.set_epoch(epoch)
            parts = train_one_epoch(train_model, criterion, optimizer, train_loader, device, epoch,
                                    autocast=autocast, scaler=scaler, scheduler_step=scheduler_step,
                                    channels_last=args.channels_last, log_interval=args.log_interval,
                                    progress=not args.no_progress)
            utils.average_buffers(model)
            cm, val_loss, _ = evaluate(model, val_loader, device, info.num_classes, info.ignore_index,
                                       autocast=autocast, channels_last=args.channels_last,
                                       progress=not args.no_progress)
            res = cm.compute()
            miou = res["miou"]
            watched = miou if higher_is_better else val_loss
            if args.scheduler == "plateau":
                scheduler.step(watched)
            score = watched if higher_is_better else -watched
            improved = score > best + args.delta
            if improved:
                best, best_miou, bad_epochs = score, miou, 0
            else:
                bad_epochs += 1
            stop = args.patience > 0 and bad_epochs >= args.patience
            record = {"epoch": epoch, **{f"train_{k}": v for k, v in parts.items()}, "val_loss": val_loss,
                      "val_miou": miou,
                      "val_pixel_acc": res["pixel_acc"], "lr": optimizer.param_groups[0]["lr"],
                      "epoch_time_s": round(time.time() - t0, 3)}
            history.append(record)
            finished = stop or epoch == args.epochs - 1
            if main_proc:
                if improved:
                    utils.save_checkpoint({**checkpoint_meta(args, mode, info, extra_meta), "model": model.state_dict(),
                                           "epoch": epoch, "best_miou": best_miou}, best_path)
                utils.save_checkpoint(state(epoch, finished), last_path)
                utils.append_jsonl(os.path.join(args.save_dir, f"{run}_log.jsonl"), record)
                utils.plot_curves(history, os.path.join(args.save_dir, f"{run}_curves.png"),
                                  title=f"{run}: {args.model_name} on {info.name}")
                print(f"{run} epoch {epoch}: loss {parts['loss']:.4f}, val loss {val_loss:.4f}, val mIoU {miou:.4f} "
                      f"(best {args.monitor}: {abs(best):.4f}), "
                      f"lr {record['lr']:.2e}, {record['epoch_time_s']:.1f}s" + (" *" if improved else ""))
            if stop:
                if main_proc:
                    print(f"early stopping: no val {args.monitor} improvement above {args.delta} for "
                          f"{args.patience} epochs")
                break
    except KeyboardInterrupt:
        if main_proc:
            path = os.path.join(args.save_dir, f"{run}_interrupted.pth")
            utils.save_checkpoint({**checkpoint_meta(args, mode, info, extra_meta), "model": model.state_dict(),
                                   "epoch": epoch, "best_miou": best_miou}, path)
            print(f"\ninterrupted: weights of the unfinished epoch saved to {path}; {last_path} (last complete "
                  f"epoch) is intact: re-run the same command with --resume auto to continue", file=sys.stderr)
        raise
    if main_proc:
        save_predictions(model, val_set, device, info, os.path.join(args.save_dir, f"{run}_predictions.png"),
                         range(min(args.num_vis, len(val_set))), args.channels_last, title=f"{run}: {args.model_name}, last epoch")
        print(f"{run}: best epoch by val {args.monitor}: val mIoU {best_miou:.4f}; weights in {best_path}")
    return {"best_miou": best_miou, "history": history, "best_path": best_path, "skipped": False, "model": model,
            "criterion": criterion}


def run_cli(main_fn, parser, rules=(), errors=()):
    """Errors the user can fix print one message, not a stack trace. errors: the script's own such exception types."""
    args = parser.parse_args()
    check_args(args, parser, rules)
    try:
        main_fn(args)
    except (DatasetError, utils.CheckpointError, NonFiniteLoss, *errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
