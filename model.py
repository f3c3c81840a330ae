"""The networks and the model registry: the only place that knows network names.

    python model.py --m light          # torchsummary table, parameter counts and FLOPs at 3x256x256
    python model.py --m lraspp_mobilenet_v3_large
    python model.py --m mynet:build    # a user's own network: build(num_classes, **kwargs) in mynet.py

Names: the original's "light" student and "best" (an FCN-ResNet50 student), "teacher" (the network of
--teacher_arch, trainable), torchvision's six segmentation networks (TORCHVISION), and MODULE:CALLABLE, a user's
builder imported from the working folder or PYTHONPATH, called as CALLABLE(num_classes, **kwargs). A builder takes
only what it uses: num_classes and pretrained_backbone, and `teacher` alone its teacher_arch (build_model hands it
over for that name only).

The forward convention, one for every network here (students, teachers, a user's network once built):
    forward(x)               -> logits (N, C, H, W) at input resolution
    forward(x, needs=NAMES)  -> {name: output} for exactly the names asked, drawn from OUTPUTS:
        "logits"    the logits above
        "logits8"   the classifier's output before upsampling (stride 8 for the light net and the ResNets: what CWD
                    and DIST compare)
        "features"  the feature maps, shallow to deep, as a list: three for this repo's networks (light: stride 4,
                    stride 8, end of trunk; ResNets: layer1..layer3), a user's `feature_taps` in their order
A loss declares the names it reads as its `needs` (losses.py), and the engine calls model(images, needs=loss.needs).
A network skips what is not asked where it can: asked for features alone (the frozen teacher of a feature method),
the light net and the ResNets stop after their third feature map, before the head (layer4 and the head are most of a
ResNet teacher's cost). A network that does not speak this convention (torchvision's MobileNetV3 networks, a user's
module whose forward takes no `needs`) is wrapped by HookedSegNet, which reads its features from the submodules it
names (`feature_taps`) with forward hooks and always runs whole. The feature widths are found by a forward probe
(feature_channels below), never from a table.
"""
import argparse
import contextlib
import importlib
import inspect
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import (MobileNet_V2_Weights, MobileNet_V3_Large_Weights, ResNet50_Weights,
                                ResNet101_Weights, mobilenet_v2)
from torchvision.models import segmentation as tvseg
from torchvision.models.segmentation.deeplabv3 import ASPP

from utils import UserError

# torchvision's segmentation networks: name -> (ImageNet backbone weights, feature taps, logits tap). The ResNets run
# as TappedSegNet (their layer1..layer3, and a forward that stops after layer3 when only features are asked); the
# MobileNetV3 ones through HookedSegNet's hooks: the trunk's stride-4, stride-8 and last blocks, and the classifier.
TORCHVISION = {
    "fcn_resnet50": (ResNet50_Weights.IMAGENET1K_V1, None, None),
    "fcn_resnet101": (ResNet101_Weights.IMAGENET1K_V1, None, None),
    "deeplabv3_resnet50": (ResNet50_Weights.IMAGENET1K_V1, None, None),
    "deeplabv3_resnet101": (ResNet101_Weights.IMAGENET1K_V1, None, None),
    "lraspp_mobilenet_v3_large": (MobileNet_V3_Large_Weights.IMAGENET1K_V1,
                                  ("backbone.3", "backbone.6", "backbone.16"), "classifier"),
    "deeplabv3_mobilenet_v3_large": (MobileNet_V3_Large_Weights.IMAGENET1K_V1,
                                     ("backbone.3", "backbone.6", "backbone.16"), "classifier"),
}
OUTPUTS = ("logits", "logits8", "features")  # what forward(x, needs=...) can be asked for (the module docstring)
HEADS = frozenset({"logits", "logits8"})  # the outputs that need a network's head


class ModelError(UserError):
    """An unknown network name, a user's module that cannot be imported, or weights that cannot be fetched."""


def check_needs(needs):
    """None (logits alone) or a set of OUTPUTS names; anything else fails here, named."""
    if needs is not None and not set(needs) <= set(OUTPUTS):
        raise ValueError(f"needs {sorted(set(needs) - set(OUTPUTS))}: unknown; ask for names of {OUTPUTS}")
    return needs


def answer(needs, logits=None, logits8=None, features=None):
    """What forward(x, needs) returns: the logits alone for needs=None, else {name: output} for the names asked."""
    got = {"logits": logits, "logits8": logits8, "features": features}
    return logits if needs is None else {name: got[name] for name in needs}


def _torchvision_net(arch, num_classes, pretrained_backbone):
    weights = TORCHVISION[arch][0] if pretrained_backbone else None
    return getattr(tvseg, arch)(weights=None, weights_backbone=weights, num_classes=num_classes, aux_loss=False)


class TappedSegNet(nn.Module):
    """A torchvision ResNet segmentation net that also answers its layer1..layer3 features (the module docstring).

    Attribute names match torchvision's (backbone.*, classifier.*), so torchvision state dicts load as they are.
    Asked for features alone, it stops after layer3: layer4 and the head are most of a teacher's cost.
    """

    def __init__(self, arch="fcn_resnet50", num_classes=21, pretrained_backbone=False):
        super().__init__()
        if "resnet" not in arch or arch not in TORCHVISION:
            raise ModelError(f"{arch}: not one of torchvision's ResNet segmentation networks")
        net = _torchvision_net(arch, num_classes, pretrained_backbone)
        self.arch = arch
        self.backbone = net.backbone  # IntermediateLayerGetter: conv1, bn1, relu, maxpool, layer1..layer4
        self.classifier = net.classifier

    def forward(self, x, needs=None):
        heads = check_needs(needs) is None or bool(HEADS & set(needs))
        feats = []
        h = x
        for name, module in self.backbone.items():
            h = module(h)
            if name in ("layer1", "layer2", "layer3"):
                feats.append(h)
                if name == "layer3" and not heads:
                    return answer(needs, features=feats)
        logits8 = self.classifier(h)  # stride 8: the backbone is dilated after layer2
        logits = F.interpolate(logits8, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return answer(needs, logits, logits8, feats)


class LightSegNet(nn.Module):
    """The original's "light" student: MobileNetV2 trunk, ASPP(256) at stride 32, a decoder joined with the
    stride-8 features, a 1x1 classifier.

    Module for module the original's LightweightResNet (the only dropouts: the decoder's 0.5 and 0.1); its
    checkpoints load through `load_original_state_dict`.

    upsample_first=True keeps the original's order (upsample the 256-channel decoder output to input size, then
    classify). The default classifies at stride 8 and upsamples the C-channel logits: a 1x1 conv and bilinear
    interpolation commute (interpolation weights sum to 1, so the bias passes through), so the logits are the
    same up to float rounding while the classifier and the upsampling touch 256/C times fewer values.
    """

    feature_channels = (24, 32, 1280)  # stride 4, stride 8, end of trunk (stride 32)

    def __init__(self, num_classes=21, pretrained_backbone=False, upsample_first=False):
        super().__init__()
        trunk = mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1 if pretrained_backbone else None).features
        self.stage1 = trunk[:4]   # -> 24 ch, stride 4
        self.stage2 = trunk[4:7]  # -> 32 ch, stride 8
        self.stage3 = trunk[7:]   # -> 1280 ch, stride 32
        aspp = ASPP(1280, [6, 12, 18], 256)
        # The original's ASPP (atrous_block1/6/12/18, global_pooling, conv1) ends in conv-BN-ReLU: torchvision's
        # projection adds a Dropout(0.5) that the original does not have. Same parameters, same state dict keys.
        aspp.project = aspp.project[:3]
        self.aspp = aspp
        self.decoder = nn.Sequential(
            nn.Conv2d(256 + 32, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.upsample_first = upsample_first

    def forward(self, x, needs=None):
        """Asked for features alone, it stops at the end of the trunk (a frozen light teacher's feature path)."""
        size = x.shape[-2:]
        f4 = self.stage1(x)
        f8 = self.stage2(f4)
        f32 = self.stage3(f8)
        if check_needs(needs) is not None and not HEADS & set(needs):
            return answer(needs, features=[f4, f8, f32])
        a = F.interpolate(self.aspp(f32), size=f8.shape[-2:], mode="bilinear", align_corners=False)
        d = self.decoder(torch.cat([a, f8], dim=1))
        if self.upsample_first:
            logits = self.classifier(F.interpolate(d, size=size, mode="bilinear", align_corners=False))
            logits8 = self.classifier(d) if needs is not None and "logits8" in needs else None
        else:
            logits8 = self.classifier(d)
            logits = F.interpolate(logits8, size=size, mode="bilinear", align_corners=False)
        return answer(needs, logits, logits8, [f4, f8, f32])


class HookedSegNet(nn.Module):
    """A segmentation network that does not speak this repo's forward convention, made to: its forward(x) (a tensor,
    or torchvision's {"out": tensor}) gives the logits; forward hooks read the outputs of the submodules named in
    `taps` (the feature maps, in order) and `logits_tap` (the classifier's output before upsampling).

    torchvision networks keep their own attribute names (backbone.*, classifier.*), so torchvision's state dicts
    load as they are; a user's module sits under `net`. Without a logits tap, "logits8" is the logits
    area-averaged to 1/8 of the input size (what CWD and DIST then compare)."""

    def __init__(self, net, taps=(), logits_tap=None, torchvision=False):
        super().__init__()
        if torchvision:  # the torchvision forward runs over this module's own backbone / classifier / aux_classifier
            for name in ("backbone", "classifier", "aux_classifier"):
                setattr(self, name, getattr(net, name, None))
            self._run = type(net).forward.__get__(self)
        else:
            self.net = net
            self._run = None  # the user's module runs as self.net: a second attribute would register it twice
        names = dict(net.named_modules())
        missing = [t for t in (*taps, *([logits_tap] if logits_tap else [])) if t not in names]
        if missing:
            raise ModelError(f"{type(net).__name__}: feature tap(s) {', '.join(missing)} name no submodule; "
                             "use names from net.named_modules()")
        prefix = "" if torchvision else "net."  # the hooks are looked up from this module
        self.taps = tuple(prefix + t for t in taps)
        self.logits_tap = prefix + logits_tap if logits_tap else None

    def _logits(self, x):
        out = self._run(x) if self._run is not None else self.net(x)
        return out["out"] if isinstance(out, dict) else out

    def forward(self, x, needs=None):
        if check_needs(needs) is None or set(needs) <= {"logits"}:
            return answer(needs, logits=self._logits(x))
        seen, handles = {}, []
        for name in (*self.taps, *([self.logits_tap] if self.logits_tap else [])):
            hook = lambda m, i, o, name=name: seen.__setitem__(name, o)  # noqa: E731
            handles.append(self.get_submodule(name).register_forward_hook(hook))
        try:
            logits = self._logits(x)
        finally:
            for h in handles:
                h.remove()
        feats = [seen[t] for t in self.taps]
        if "logits8" not in needs:
            return answer(needs, logits, features=feats)
        logits8 = seen[self.logits_tap] if self.logits_tap else F.adaptive_avg_pool2d(
            logits, (math.ceil(x.shape[-2] / 8), math.ceil(x.shape[-1] / 8)))
        return answer(needs, logits, logits8, feats)


def light(num_classes=21, pretrained_backbone=False, upsample_first=False, fast=True):
    """fast=False: the original's order of operations (upsample, then classify), the same function."""
    return LightSegNet(num_classes, pretrained_backbone, upsample_first=upsample_first or not fast)


def best(num_classes=21, pretrained_backbone=False):
    """The original's second choice: torchvision fcn_resnet50 trained from scratch as a student."""
    return TappedSegNet("fcn_resnet50", num_classes, pretrained_backbone)


def teacher(num_classes=21, pretrained_backbone=False, teacher_arch="fcn_resnet50"):
    """The teacher network, trainable: `python train.py --model_name teacher [--teacher_arch A]` trains it.
    A is any name of this registry but "teacher": a torchvision network (the default fcn_resnet50, whose VOC weights
    torchvision publishes, as for the five others), "light" (the student's own architecture trained with a larger
    budget: born-again distillation, the from-scratch teacher that pays on small data sets), or MODULE:CALLABLE."""
    if teacher_arch == "teacher":
        raise ModelError("--teacher_arch teacher: name a network (fcn_resnet50, light, mynet:build ...)")
    return build_model(teacher_arch, num_classes, pretrained_backbone=pretrained_backbone)


def _torchvision_builder(arch):
    def build(num_classes=21, pretrained_backbone=False):
        if TORCHVISION[arch][1] is None:
            return TappedSegNet(arch, num_classes, pretrained_backbone)
        _, taps, logits_tap = TORCHVISION[arch]
        return HookedSegNet(_torchvision_net(arch, num_classes, pretrained_backbone), taps, logits_tap,
                            torchvision=True)
    build.__doc__ = f"torchvision's {arch}, with feature taps."
    return build


ORIGINAL_ALIGN_CHANNELS = (256, 512, 1024)  # the original's alignment convs map the student to ResNet50 layer1..3
ORIGINAL_TRUNK_PARAMS = 2_223_872  # MobileNetV2's `features`, counted twice by the original's summary table

# Every builder takes num_classes and pretrained_backbone; `teacher` also its teacher_arch, which build_model hands it
# (and no other builder), so that the scripts build any --model_name with one call. A keyword a builder does not take
# is refused (build_model).
MODELS = {"light": light, "best": best, "teacher": teacher, **{a: _torchvision_builder(a) for a in TORCHVISION}}


def add_model_args(p):
    """The network flags of the training scripts (names checked by build_model, the registry's one gate)."""
    names = ", ".join(MODELS)
    p.add_argument("--model_name", default="light",
                   help=f"the student: {names}, or MODULE:CALLABLE (a user's builder, see model.py)")
    p.add_argument("--pretrained_backbone", action="store_true",
                   help="ImageNet weights for the trunk (torchvision weights API; needs them cached or internet)")
    p.add_argument("--teacher_arch", default="fcn_resnet50",
                   help="the teacher network (--model_name teacher in train.py; the frozen teacher in train_kd.py): "
                        "any --model_name but teacher")
    return p


def user_builder(spec):
    """'mynet:build' -> the callable `build` of module mynet, imported from the working folder or PYTHONPATH."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ModelError(f"{spec}: give a registered name ({', '.join(MODELS)}) or MODULE:CALLABLE")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # the working folder, as `python -m` would have it
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"{spec}: cannot import {attr} from {module} ({e}); put {module}.py in the working "
                         "folder or on PYTHONPATH") from None
    if not callable(found):
        raise ModelError(f"{spec}: {attr} is not callable; it must be a builder CALLABLE(num_classes, **kwargs)")
    return found


def speaks_convention(net, spec="a network"):
    """True when net's forward takes `needs` (the module docstring). A forward that takes the old return_features
    instead is refused, named: its tuples would be read as logits."""
    params = inspect.signature(net.forward).parameters
    if "return_features" in params and "needs" not in params:
        raise ModelError(f"{spec}: its forward takes return_features, the convention this repo used before: take "
                         "needs=None and return logits, or a dict of the outputs asked (model.py's docstring, "
                         "docs/networks.md); or drop it and name feature_taps")
    return "needs" in params


def _build_user(spec, num_classes, **kwargs):
    """A user's builder, called with the keywords it takes (it may take none of ours); its network wrapped by
    HookedSegNet unless its forward already takes needs."""
    builder = user_builder(spec)
    params = inspect.signature(builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    net = builder(num_classes, **kwargs)
    if not isinstance(net, nn.Module):
        raise ModelError(f"{spec} returned a {type(net).__name__}, not an nn.Module")
    if speaks_convention(net, spec):
        return net
    return HookedSegNet(net, getattr(net, "feature_taps", ()), getattr(net, "logits_tap", None))


def _fetch_backbone_weights(name, build):
    """Run a builder that asks torchvision for ImageNet weights: offline, one message instead of a trace."""
    try:
        return build()
    except (OSError, RuntimeError) as e:  # URLError and ConnectionError are OSErrors
        raise ModelError(
            f"--pretrained_backbone: the ImageNet weights for {name} could not be fetched ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}). Run once with internet (torchvision caches them under "
            f"{torch.hub.get_dir()}), or train without --pretrained_backbone.") from None


def build_model(name, num_classes=21, teacher_arch=None, **kwargs):
    """MODELS[name](num_classes=num_classes, **kwargs), or a user's MODULE:CALLABLE; a misspelt keyword to one of
    this repo's builders fails here, named, not silently. teacher_arch: the network that the name "teacher" stands for
    (None: the teacher builder's default), handed to that builder alone, so that a script passes its --teacher_arch
    whatever --model_name it builds."""
    if name == "teacher" and teacher_arch is not None:
        kwargs["teacher_arch"] = teacher_arch
    if name not in MODELS:
        if ":" not in name:
            raise ModelError(f"--model_name {name}: unknown; choose one of {', '.join(MODELS)}, or MODULE:CALLABLE")
        build = lambda: _build_user(name, num_classes, **kwargs)  # noqa: E731
    else:
        takes = list(inspect.signature(MODELS[name]).parameters)
        unknown = sorted(set(kwargs) - set(takes))
        if unknown:
            raise TypeError(f"{name}(): unknown argument(s) {', '.join(unknown)}; it takes {', '.join(takes)}")
        build = lambda: MODELS[name](num_classes=num_classes, **kwargs)  # noqa: E731
    return _fetch_backbone_weights(name, build) if kwargs.get("pretrained_backbone") else build()


# --------------------------------------------------------------------------- the original project's checkpoints
# The original saved `model.state_dict()` of its LightweightResNet. Its trunk is registered twice (`backbone.*`, and
# the slices `low_level_features.*`, `mid_level_features.*`, `high_level_features.*` holding the same tensors), its
# ASPP names its branches, and feature KD's 1x1 alignment convs (`align_layers.*`) sit inside the student.
_ORIGINAL_ASPP = {"atrous_block1.": "convs.0.", "atrous_block6.": "convs.1.", "atrous_block12.": "convs.2.",
                  "atrous_block18.": "convs.3.", "global_pooling.": "convs.4.", "conv1.": "project."}
# Slicing an nn.Sequential keeps the indices: low_level_features.0-3, mid_level_features.4-6, high_level_features.7-18
# name the same layers as backbone.N, and as this repo's stage1/2/3.N.
_ORIGINAL_TRUNK = {"low_level_features": "stage1", "mid_level_features": "stage2", "high_level_features": "stage3"}


def is_original_state_dict(sd):
    return isinstance(sd, dict) and any(isinstance(k, str) and k.split(".", 1)[0] in (
        "low_level_features", "mid_level_features", "high_level_features") for k in sd)


def _trunk_key(index, rest):
    return f"{'stage1' if index < 4 else 'stage2' if index < 7 else 'stage3'}.{index}.{rest}"


def load_original_state_dict(sd):
    """The original's LightweightResNet state dict -> (this repo's light state dict, notes on what was dropped).

    Raises ValueError when a key is not the original's or the trunk's two copies disagree."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    out, notes, aligned = {}, [], []
    for key, value in sd.items():
        head, rest = key.split(".", 1) if "." in key else (key, "")
        if head == "align_layers":
            aligned.append(key)
            continue
        if head == "backbone":  # the whole trunk, the same tensors as the three slices
            index, tail = rest.split(".", 1)
            new = _trunk_key(int(index), tail)
        elif head in _ORIGINAL_TRUNK:
            new = f"{_ORIGINAL_TRUNK[head]}.{rest}"
        elif head == "aspp":
            branch = next((b for b in _ORIGINAL_ASPP if rest.startswith(b)), None)
            if branch is None:
                raise ValueError(f"unexpected key {key!r} in the original's ASPP")
            new = "aspp." + _ORIGINAL_ASPP[branch] + rest[len(branch):]
        elif head in ("decoder", "classifier"):
            new = key
        else:
            raise ValueError(f"unexpected key {key!r}: not a key of the original's LightweightResNet")
        if new in out and not torch.equal(out[new], value):
            raise ValueError(f"{key} differs from the trunk slice that holds the same layer ({new})")
        out[new] = value
    if aligned:
        notes.append(f"dropped {len(aligned)} align_layers.* tensors: the original kept feature KD's 1x1 alignment "
                     "convs inside its student; they are not part of the network that predicts")
    return out, notes


def load_trained(path):
    """Any checkpoint test.py, predict.py and export.py accept -> (network in eval mode, meta).

    Accepted: a checkpoint written by this repo ({"model", "model_name", "num_classes", "dataset", ...}), or a
    state dict saved by the original project (its LightweightResNet, recognised by its keys; VOC classes).
    meta: model_name, num_classes, dataset, teacher_arch, epoch, notes (what loading dropped), description."""
    from utils import CheckpointError, load_checkpoint  # local: utils sits beside model.py on floor 1

    ckpt = load_checkpoint(path)
    if isinstance(ckpt, dict) and "model" in ckpt and "model_name" in ckpt:
        meta = {"model_name": ckpt["model_name"], "num_classes": ckpt.get("num_classes"),
                "dataset": ckpt.get("dataset", "voc"), "teacher_arch": ckpt.get("teacher_arch", "fcn_resnet50"),
                "epoch": ckpt.get("epoch"), "notes": [], "source": "this repo"}
        sd = ckpt["model"]
    elif is_original_state_dict(ckpt):
        try:
            sd, notes = load_original_state_dict(ckpt)
        except ValueError as e:
            raise CheckpointError(f"{path}: looks like the original project's state dict, but {e}") from None
        if "classifier.weight" not in sd:
            raise CheckpointError(f"{path}: the original project's state dict has no classifier.weight")
        meta = {"model_name": "light", "num_classes": int(sd["classifier.weight"].shape[0]), "dataset": "voc",
                "teacher_arch": "fcn_resnet50", "epoch": None, "notes": notes,
                "source": "the original project's state dict"}
    else:
        keys = list(ckpt)[:4] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{path} is neither a checkpoint of this repo (keys model, model_name, ...) nor a state dict of the "
            f"original project's LightweightResNet (keys low_level_features.*, aspp.atrous_block1.*, ...); it "
            f"holds {keys}. Pass a *_best.pth written by train.py / train_kd.py, or the original's checkpoint.")
    model = build_model(meta["model_name"], meta["num_classes"], teacher_arch=meta["teacher_arch"])
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {meta['model_name']} with {meta['num_classes']} classes: "
                              f"{str(e)[:200]}") from None
    epoch = f", epoch {meta['epoch']}" if meta["epoch"] is not None else ""
    origin = "" if meta["source"] == "this repo" else f"; {meta['source']}"
    meta["description"] = f"{meta['model_name']} ({path}{epoch}{origin})"
    return model.eval(), meta


_PROBES = None  # {(id(net), size): widths} while probe_cache() is open


@contextlib.contextmanager
def probe_cache():
    """Within it, feature_channels probes each network once (losses.build_loss: every feature method asks)."""
    global _PROBES
    outer, _PROBES = _PROBES, {} if _PROBES is None else _PROBES
    try:
        yield
    finally:
        _PROBES = outer


def feature_channels(net, size=64):
    """The widths of a network's feature maps, found by one forward pass of a blank size x size image (eval mode, no
    gradient, the network's mode restored after): () when it exposes none."""
    if _PROBES is not None:
        key = (id(net), size)
        if key not in _PROBES:
            _PROBES[key] = _probe(net, size)
        return _PROBES[key]
    return _probe(net, size)


def _probe(net, size):
    was = net.training
    first = next(net.parameters(), None)
    x = torch.zeros(1, 3, size, size, device=first.device if first is not None else "cpu")
    net.eval()
    try:
        with torch.no_grad():
            feats = net(x, needs={"features"})["features"]
    finally:
        net.train(was)
    return tuple(f.shape[1] for f in feats)


def count_parameters(model):
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def count_flops(model, input_size=(3, 256, 256)):
    """Forward FLOPs for one image (a multiply-add counts as 2), by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_size))
    return counter.get_total_flops()


def get_args_parser():
    p = argparse.ArgumentParser(description="Summarise a network of the registry", add_help=True)
    p.add_argument("-m", "--m", "--model_name", dest="model_name", default="light",
                   help=f"{', '.join(MODELS)}, or MODULE:CALLABLE")
    p.add_argument("--num_classes", type=int, default=21)
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--teacher_arch", default="fcn_resnet50", help="the network of --m teacher")
    p.add_argument("--no_table", action="store_true", help="skip the torchsummary table")
    return p


def main(args):
    model = build_model(args.model_name, args.num_classes, teacher_arch=args.teacher_arch).eval()
    size = (3, args.img_size, args.img_size)
    if not args.no_table:
        from torchsummary import summary

        summary(model, size, device="cpu")
    total, trainable = count_parameters(model)
    print(f"model: {args.model_name}")
    print(f"total parameters: {total:,}")
    print(f"trainable parameters: {trainable:,}")
    at = "x".join(map(str, size))
    if args.model_name == "light":
        # The original's count: its LightweightResNet held feature KD's 1x1 alignment convs (24->256, 32->512,
        # 1280->1024) inside the student. Here they belong to the feature-KD loss, not to the network.
        align = sum(s * t + t for s, t in zip(LightSegNet.feature_channels, ORIGINAL_ALIGN_CHANNELS))
        print(f"Total parameters in light (the original's count, its alignment convs included): {total + align:,} "
              f"= {total:,} + {align:,}")
        print(f"  (the original's torchsummary table said {total + ORIGINAL_TRUNK_PARAMS:,}: the alignment convs are "
              f"not in its forward, and it counts the MobileNetV2 trunk's {ORIGINAL_TRUNK_PARAMS:,} parameters twice, "
              "once per name the original registers it under)")
        flops = count_flops(build_model("light", args.num_classes, fast=False), size)
        fast = count_flops(model, size)
        print(f"FLOPs at {at}: {flops / 1e9:.2f} GFLOP ({flops / 2e9:.2f} GMAC), the architecture as defined")
        print(f"  this repo's forward computes the same function in {fast / 1e9:.2f} GFLOP (it classifies before "
              "upsampling)")
    else:
        flops = count_flops(model, size)
        print(f"FLOPs at {at}: {flops / 1e9:.2f} GFLOP ({flops / 2e9:.2f} GMAC)")


if __name__ == "__main__":
    from utils import run_cli

    run_cli(main, get_args_parser().parse_args())
