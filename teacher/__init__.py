"""The teacher: any network of model.py's registry (a torchvision segmentation network by default), frozen, and
where its weights come from.

Weights are looked for in this order (the first that exists wins):
  1. --teacher_weights PATH  (a torchvision state dict, or a checkpoint written by this repo)
  2. a teacher trained by this repo: `python train.py --model_name teacher` -> SAVE_DIR/teacher_best.pth
  3. torchvision's COCO_WITH_VOC_LABELS_V1 weights in the torch hub cache, downloaded if the network allows
     (21 VOC classes only; the six torchvision networks of VOC_WEIGHTS).
"""
import os

import torch
import torch.nn as nn
from torchvision.models.segmentation import (
    DeepLabV3_MobileNet_V3_Large_Weights,
    DeepLabV3_ResNet50_Weights,
    DeepLabV3_ResNet101_Weights,
    FCN_ResNet50_Weights,
    FCN_ResNet101_Weights,
    LRASPP_MobileNet_V3_Large_Weights,
)

from fast import use_winograd
from model import build_model, check_needs, feature_channels
from utils import UserError, load_checkpoint

# Construction runs one way: this package builds its networks with model.py's registry; model.py never imports it.
VOC_WEIGHTS = {  # torchvision's COCO_WITH_VOC_LABELS_V1 weights (21 VOC classes), by architecture
    "fcn_resnet50": FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
    "deeplabv3_resnet50": DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
    "deeplabv3_resnet101": DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
    "fcn_resnet101": FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1,
    "lraspp_mobilenet_v3_large": LRASPP_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
    "deeplabv3_mobilenet_v3_large": DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1,
}
ARCHS = tuple(VOC_WEIGHTS)


class TeacherError(UserError):
    pass


class FrozenTeacher(nn.Module):
    """The teacher kept out of everything trainable: eval mode that `.train()` cannot undo (its BatchNorm statistics
    never move), requires_grad off, run under no_grad; never in the optimizer, never saved, never wrapped in DDP."""

    def __init__(self, net, winograd=True):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        if winograd:  # the wide 3x3 convs: the same function, 4x fewer multiplications (CPU only; fast.py)
            use_winograd(self.net)

    def feature_channels(self):
        """The widths of the three feature maps the feature methods read (a forward probe, model.feature_channels)."""
        return feature_channels(self.net)[:3]

    def train(self, mode=True):  # noqa: ARG002 - a frozen teacher's BatchNorm statistics never move
        return super().train(False)

    @torch.no_grad()  # not inference_mode: a loss may save the teacher's outputs for its backward (MSE does)
    def forward(self, x, needs=None):
        """The networks' convention (model.py): logits for needs=None, else {name: output} for the names asked, from
        one forward pass (a loss that combines methods asks once per step). Asked for features alone, the light net
        and the ResNets stop after their third feature map, before the head."""
        return self.net(x) if check_needs(needs) is None else self.net(x, needs=needs)


def _strip_state_dict(sd):
    sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}


def hub_weights_path(arch):
    weights = VOC_WEIGHTS[arch]
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def resolve_teacher_weights(arch, num_classes, teacher_weights=None, save_dir="weights"):
    """Returns (state_dict, description). Raises TeacherError naming every way out when none is found."""
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
        sd = VOC_WEIGHTS[arch].get_state_dict(progress=True)
        return _strip_state_dict(sd), cached
    except Exception as e:  # noqa: BLE001 - offline or blocked: every failure leads to the same advice
        raise TeacherError(
            f"no teacher weights found and the download failed ({type(e).__name__}: {e}).\n"
            f"Three ways out:\n"
            f"  1. --teacher_weights PATH   (a torchvision state dict or a checkpoint of this repo)\n"
            f"  2. train one: python train.py --model_name teacher --save_dir {save_dir}   (writes {own})\n"
            f"  3. put torchvision's weights file {os.path.basename(cached)} at {cached}\n"
            f"     (from {VOC_WEIGHTS[arch].url}, on a machine with internet)"
        ) from None


def load_teacher(arch="fcn_resnet50", num_classes=21, teacher_weights=None, save_dir="weights", device="cpu",
                 winograd=True):
    """Build the teacher (model.py's registry), load its weights and freeze it. Returns (FrozenTeacher,
    description of the weights). winograd=False for a teacher whose weights will move (semi.py's EMA teacher)."""
    sd, source = resolve_teacher_weights(arch, num_classes, teacher_weights, save_dir)
    net = build_model("teacher", num_classes, teacher_arch=arch)
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise TeacherError(
            f"teacher weights {source} do not fit --teacher_arch {arch} with {num_classes} classes "
            f"({str(e).splitlines()[0][:160]}...). Pass the matching --teacher_arch, or weights trained for "
            "this dataset."
        ) from None
    return FrozenTeacher(net, winograd).to(device), source
