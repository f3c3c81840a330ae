"""Export a trained network for deployment (ONNX or TorchScript) and check the file against PyTorch.

    python export.py --weights weights/feature_best.pth --format onnx --img_size 256 --dynamic
    python export.py --weights weights/feature_best.pth --format torchscript --img_size 256 256
    python export.py --weights weights/feature_best.pth --check_only weights/feature_best.onnx --img_size 256 --dynamic

Writes --out (default: the weights' path with .onnx or .pt): the network alone, in eval mode, float32, input
`image` (N, 3, H, W) normalised with dataset.MEAN/STD, output `logits` (N, C, H, W). The file also records the
dataset, class names, palette, mean, std and size (ONNX: metadata_props key "segkd"; TorchScript: extra file
"segkd.json"). Without --dynamic an ONNX file takes exactly 1x3xHxW; with --dynamic any size (a TorchScript
module runs at any size whatever its trace: the network has no Python branch on the input's shape).

Then the check, on the CPU (and --check_only re-runs it on an exported file): --num_inputs random inputs at
HxW (with --dynamic also a batch of 2 at (2H+1)x(2W+3)) through the file (ONNX Runtime, or torch.jit.load) and
through the checkpoint's network in PyTorch; prints the largest absolute difference of the logits and the share
of pixels whose class agrees, and exits 1 when that difference is above --tolerance x the largest |logit| (or x 1
for logits below 1). Last, the latency per image at HxW, batch 1: the file against PyTorch running the network
as predict.py does.
"""
import argparse
import copy
import io
import json
import os
import statistics
import time
import warnings

import torch

import utils
from dataset import MEAN, STD, parse_size, recorded_info
from model import load_trained

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportError(utils.UserError):
    """A bad flag or an exported file that cannot be used: the message says which and what to do."""


def get_args_parser():
    p = argparse.ArgumentParser(description="Export a trained network (ONNX / TorchScript) and check it")
    p.add_argument("--weights", required=True, help="a checkpoint (RUN_best.pth) or the original project's state dict")
    p.add_argument("--format", choices=sorted(FORMATS), default=None,
                   help="default: from the suffix of --out or --check_only (.onnx, else TorchScript)")
    p.add_argument("--img_size", nargs="+", type=int, required=True, help="H [W] of the example input")
    p.add_argument("--dynamic", action="store_true", help="any batch and size (checked at a second size too)")
    p.add_argument("--out", default=None, help="the exported file; default: --weights with .onnx / .pt")
    p.add_argument("--check_only", metavar="PATH", default=None,
                   help="export nothing: check an exported file against --weights")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest |exported - PyTorch| accepted, as a fraction of the largest |logit| (at least 1)")
    p.add_argument("--num_inputs", type=int, default=3, help="random inputs at HxW in the check")
    p.add_argument("--runs", type=int, default=20, help="timed runs per latency figure (after 3 warm-up runs)")
    return p


def network_to_export(model):
    """The checkpoint's network alone, in eval mode: its forward has no Python branch on the input's shape, so a
    trace or torch.export recorded at HxW computes the same function at any size."""
    return copy.deepcopy(model).eval()


def describe(info, size):
    """What a deployment needs besides the network, stored inside the exported file (info: the checkpoint's
    dataset, dataset.recorded_info)."""
    return json.dumps({"dataset": info.name, "class_names": list(info.class_names),
                       "palette": [list(c) for c in info.palette], "mean": list(MEAN), "std": list(STD),
                       "img_size": list(size), "input": "image: float32 N,3,H,W, RGB in [0,1] then (x-mean)/std",
                       "output": "logits: float32 N,C,H,W; the class is the argmax over C"})


def export_onnx(net, size, dynamic, path, info):
    try:
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it; say so before a long trace, not after
    except ImportError:
        raise ExportError("ONNX export needs onnxscript (and onnx): pip install -r requirements.txt") from None
    example = torch.zeros(1, 3, *size)
    shapes = None
    if dynamic:
        shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024), 2: torch.export.Dim("height", min=32),
                        3: torch.export.Dim("width", min=32)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(net, (example,), dynamo=True, input_names=["image"], output_names=["logits"],
                                    dynamic_shapes=shapes, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "segkd", describe(info, size)
    utils.atomic_write_bytes(path, proto.SerializeToString())  # one file: a student is far below protobuf's 2 GB


def export_torchscript(net, size, path, info):
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated (three FutureWarnings per trace); the docstring says ONNX is preferred
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(net, torch.zeros(1, 3, *size), check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={"segkd.json": describe(info, size)})
    utils.atomic_write_bytes(path, buf.getvalue())


def load_exported(path, fmt, size, dynamic):
    """-> a function NCHW float32 tensor -> logits numpy array, running the file as a deployment would."""
    if not os.path.isfile(path):
        raise ExportError(f"{path}: no such file")
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("checking an ONNX file needs onnxruntime: pip install -r requirements.txt") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # the same cores as PyTorch, for the latency figures
        try:
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for every kind of bad file
            raise ExportError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:200]})") from None
        shape = session.get_inputs()[0].shape
        fixed = all(isinstance(d, int) for d in shape)
        if dynamic and fixed:
            raise ExportError(f"{path} takes only {'x'.join(map(str, shape))}: it was exported without --dynamic")
        if not dynamic and fixed and tuple(shape[2:]) != tuple(size):
            raise ExportError(f"{path} takes {shape[2]}x{shape[3]} images, not --img_size {size[0]} {size[1]}")
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(path, map_location="cpu").eval()
    except Exception as e:  # noqa: BLE001 - TorchScript raises RuntimeError/ValueError/... for bad files
        raise ExportError(f"{path}: torch.jit.load cannot load it ({str(e).splitlines()[0][:200]})") from None

    def run(x):
        with torch.inference_mode():
            return module(x).numpy()
    return run


def check(exported, reference, size, dynamic, num_inputs, tolerance):
    """Largest |exported - PyTorch| over random inputs, printed one line per input size; the check compares it with
    tolerance x the largest |logit| (at least 1), since float32 rounding grows with the logits. -> (ok, relative)."""
    g = torch.Generator().manual_seed(0)
    cases = [(1, *size)] * num_inputs
    if dynamic:
        cases.append((2, 2 * size[0] + 1, 2 * size[1] + 3))  # odd sizes: not multiples of the network's stride
    worst = 0.0
    for n, h, w in sorted(set(cases), key=cases.index):
        diff, agree, scale = 0.0, 0, 0.0
        for _ in range(cases.count((n, h, w))):
            x = torch.randn(n, 3, h, w, generator=g)
            with torch.inference_mode():
                ref = reference(x)
            out = torch.from_numpy(exported(x))
            if out.shape != ref.shape:
                raise ExportError(f"the exported network returned {tuple(out.shape)} for {tuple(x.shape)}, "
                                  f"PyTorch {tuple(ref.shape)}")
            diff = max(diff, float((out - ref).abs().max()))
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            scale = max(scale, float(ref.abs().max()))
        total = cases.count((n, h, w)) * n * h * w
        relative = diff / max(1.0, scale)
        print(f"  {cases.count((n, h, w))} x {n}x3x{h}x{w}: max |exported - pytorch| = {diff:.3g}, logits up to "
              f"{scale:.3g} ({relative:.3g} relative); classes agree on {agree / total:.2%} of pixels")
        worst = max(worst, relative)
    return worst <= tolerance, worst


def latency_ms(fn, x, runs):
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main(args):
    """Returns {"ok": bool, "max_rel_diff": float, "path": str, "latency_ms": {...}}."""
    size = parse_size(args.img_size)
    if args.num_inputs < 1 or args.runs < 1 or not args.tolerance >= 0:
        raise ExportError("--num_inputs and --runs must be at least 1, --tolerance at least 0")
    path = args.check_only or args.out
    fmt = args.format or (None if path is None else "onnx" if path.endswith(".onnx") else "torchscript")
    if fmt is None:
        raise ExportError("pass --format onnx or --format torchscript (or an --out ending in .onnx or .pt)")
    path = path or os.path.splitext(args.weights)[0] + FORMATS[fmt]
    if os.path.abspath(path) == os.path.abspath(args.weights):
        raise ExportError(f"--out {path} is the checkpoint itself; pass another --out")

    torch.manual_seed(0)
    model, meta = load_trained(args.weights)
    for note in meta["notes"]:
        print(f"note: {note}")
    if not args.check_only:
        t = time.perf_counter()
        net = network_to_export(model)
        info = recorded_info(utils.load_checkpoint(args.weights), meta["dataset"])
        if fmt == "onnx":
            export_onnx(net, size, args.dynamic, path, info)
        else:
            export_torchscript(net, size, path, info)
        takes = "any size" if args.dynamic else "x".join(map(str, (1, 3, *size)))
        print(f"exported {meta['description']} to {path} ({fmt}, input {takes}, {os.path.getsize(path) / 2**20:.1f} "
              f"MiB) in {time.perf_counter() - t:.1f} s")

    # PyTorch as predict.py runs it: channels_last, on a copy (the parity check below runs `model` as loaded). Timed
    # before the exported file is loaded: ONNX Runtime's idle threads spin for a while and would take PyTorch's cores.
    channels_last_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, *size)

    def pytorch(inp):
        with torch.inference_mode():
            return channels_last_model(inp.contiguous(memory_format=torch.channels_last))

    ms = {"pytorch": latency_ms(pytorch, x, args.runs)}

    exported = load_exported(path, fmt, size, args.dynamic)
    print(f"check of {path} against {meta['description']} in PyTorch (CPU, float32):")
    ok, worst = check(exported, model, size, args.dynamic, args.num_inputs, args.tolerance)
    print(f"parity: {'OK' if ok else 'FAILED'}, largest difference {worst:.3g} of the largest logit "
          f"{'<=' if ok else '>'} --tolerance {args.tolerance:g}")
    ms[fmt] = latency_ms(exported, x, args.runs)
    runtime = "ONNX Runtime" if fmt == "onnx" else "TorchScript"
    print(f"latency at 1x3x{size[0]}x{size[1]}, CPU, {torch.get_num_threads()} threads, median of {args.runs}: "
          f"PyTorch {ms['pytorch']:.1f} ms/image, {runtime} {ms[fmt]:.1f} ms/image")
    return {"ok": ok, "max_rel_diff": worst, "path": path, "latency_ms": ms}


if __name__ == "__main__":
    utils.run_cli(main, get_args_parser().parse_args(), exit_code=lambda result: 0 if result["ok"] else 1)
