"""The teacher: a torchvision ResNet segmentation network with feature taps, and where its weights come from.

Weights are looked for in this order (the first that exists wins):
  1. --teacher_weights PATH  (a torchvision state dict, or a checkpoint written by this repo)
  2. a teacher trained by this repo: `python train.py --model_name teacher` -> SAVE_DIR/teacher_best.pth
  3. torchvision's COCO_WITH_VOC_LABELS_V1 weights in the torch hub cache, downloaded if the network allows
     (21 VOC classes only).
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import ResNet50_Weights, ResNet101_Weights
from torchvision.models.segmentation import (
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
    FCN_ResNet50_Weights,
    deeplabv3_resnet50,
    deeplabv3_resnet101,
    fcn_resnet50,
)

from .winograd import use_winograd

ARCHS = {
    # name: (builder, COCO_WITH_VOC_LABELS weights, ImageNet backbone weights)
    "fcn_resnet50": (fcn_resnet50, FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1, ResNet50_Weights.IMAGENET1K_V1),
    "deeplabv3_resnet50": (deeplabv3_resnet50, DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1, ResNet50_Weights.IMAGENET1K_V1),
    "deeplabv3_resnet101": (deeplabv3_resnet101, DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1, ResNet101_Weights.IMAGENET1K_V1),
}
FEATURE_CHANNELS = (256, 512, 1024, 2048)  # layer1..layer4 of a ResNet50/101


class TeacherError(RuntimeError):
    pass


class TappedSegNet(nn.Module):
    """A torchvision ResNet segmentation net that also returns its layer1..layer4 features.

    Attribute names match torchvision's (backbone.*, classifier.*), so torchvision state dicts load as they are.
    `forward(x, return_features=True, upto=k)` stops after layer k when the logits are not needed:
    feature distillation reads only layer1..layer3, and layer4 + head are most of the teacher's cost.
    """

    feature_channels = FEATURE_CHANNELS

    def __init__(self, arch="fcn_resnet50", num_classes=21, pretrained_backbone=False):
        super().__init__()
        if arch not in ARCHS:
            raise TeacherError(f"--teacher_arch {arch}: unknown; choose one of {', '.join(ARCHS)}")
        builder, _, backbone_weights = ARCHS[arch]
        net = builder(weights=None, weights_backbone=backbone_weights if pretrained_backbone else None,
                      num_classes=num_classes, aux_loss=False)
        self.arch = arch
        self.backbone = net.backbone  # IntermediateLayerGetter: conv1, bn1, relu, maxpool, layer1..layer4
        self.classifier = net.classifier

    def forward(self, x, return_features=False, upto=4):
        size = x.shape[-2:]
        feats = []
        h = x
        for name, module in self.backbone.items():
            h = module(h)
            if name.startswith("layer"):
                feats.append(h)
                if len(feats) == upto and upto < 4:
                    return None, feats
        logits = F.interpolate(self.classifier(h), size=size, mode="bilinear", align_corners=False)
        return (logits, feats) if return_features else logits


class FrozenTeacher(nn.Module):
    """Eval mode that `.train()` cannot undo, no gradients, run under inference_mode (STYLE rule 4)."""

    def __init__(self, net, winograd=True):
        super().__init__()
        from utils import fuse_conv_bn  # local import: utils sits beside teacher/ on floor 1

        # BatchNorm folded into the convs: the same function, ~9% faster on CPU, and no statistics left to move.
        self.net = fuse_conv_bn(net.eval()).requires_grad_(False)
        if winograd:  # the wide 3x3 convs: the same function, 4x fewer multiplications (CPU only; teacher/winograd.py)
            use_winograd(self.net)
        self.feature_channels = net.feature_channels

    def train(self, mode=True):  # noqa: ARG002 - a frozen teacher's BatchNorm statistics never move
        return super().train(False)

    @torch.inference_mode()
    def forward(self, x, need="logits"):
        """need: 'logits' -> logits; 'features' -> the first three feature maps only (for a ResNet: layer1..layer3,
        no layer4, no head)."""
        if need == "features":
            return self.net(x, return_features=True, upto=3)[1]
        return self.net(x)


def _strip_state_dict(sd):
    sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}


def hub_weights_path(arch):
    weights = ARCHS[arch][1]
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def resolve_teacher_weights(arch, num_classes, teacher_weights=None, save_dir="weights"):
    """Returns (state_dict, description). Raises TeacherError naming every way out when none is found."""
    from utils import load_checkpoint  # local import: teacher/ sits beside utils.py on floor 1

    if teacher_weights:
        if not os.path.isfile(teacher_weights):
            raise TeacherError(f"--teacher_weights {teacher_weights}: no such file")
        ckpt = load_checkpoint(teacher_weights)
        return _strip_state_dict(ckpt), teacher_weights
    own = os.path.join(save_dir, "teacher_best.pth")
    if os.path.isfile(own):
        ckpt = load_checkpoint(own)
        return _strip_state_dict(ckpt), own
    if arch not in ARCHS:
        raise TeacherError(
            f"no weights for a {arch} teacher: train one first (`python train.py --model_name teacher "
            f"--teacher_arch {arch} --save_dir {save_dir} ...`, writes {own}) or pass --teacher_weights PATH")
    cached = hub_weights_path(arch)
    if num_classes != 21:
        raise TeacherError(
            f"no teacher weights for {num_classes} classes: torchvision's COCO_WITH_VOC_LABELS_V1 weights have 21 "
            f"(VOC) classes. Train one first: `python train.py --model_name teacher --save_dir {save_dir} ...` "
            f"(writes {own}), or pass --teacher_weights PATH."
        )
    if os.path.isfile(cached):
        return _strip_state_dict(load_checkpoint(cached)), cached
    try:
        if os.environ.get("SEGKD_OFFLINE") == "1":  # the tests: never reach for the network
            raise ConnectionError("SEGKD_OFFLINE=1")
        sd = ARCHS[arch][1].get_state_dict(progress=True)
        return _strip_state_dict(sd), cached
    except Exception as e:  # noqa: BLE001 - offline or blocked: every failure leads to the same advice
        raise TeacherError(
            f"no teacher weights found and the download failed ({type(e).__name__}: {e}).\n"
            f"Three ways out:\n"
            f"  1. --teacher_weights PATH   (a torchvision state dict or a checkpoint of this repo)\n"
            f"  2. train one: python train.py --model_name teacher --save_dir {save_dir}   (writes {own})\n"
            f"  3. put torchvision's weights file {os.path.basename(cached)} at {cached}\n"
            f"     (from {ARCHS[arch][1].url}, on a machine with internet)"
        ) from None


def load_teacher(arch="fcn_resnet50", num_classes=21, teacher_weights=None, save_dir="weights", device="cpu",
                 build=None):
    """Build the teacher, load its weights and freeze it. Returns (FrozenTeacher, description of the weights).
    build() makes the network for archs this package does not define (model.py's registry passes it)."""
    sd, source = resolve_teacher_weights(arch, num_classes, teacher_weights, save_dir)
    net = build() if build is not None else TappedSegNet(arch, num_classes)
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise TeacherError(
            f"teacher weights {source} do not fit --teacher_arch {arch} with {num_classes} classes "
            f"({str(e).splitlines()[0][:160]}...). Pass the matching --teacher_arch, or weights trained for "
            "this dataset."
        ) from None
    return FrozenTeacher(net).to(device), source
