"""Student networks and the model registry.

    python model.py --m light          # torchsummary table, parameter counts and FLOPs at 3x256x256
    python model.py --m best
    python model.py --m teacher

Every model's forward(x) returns logits (N, C, H, W) at input resolution; forward(x, return_features=True)
returns (logits, [features...]) for feature distillation, with `feature_channels` naming their widths.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import MobileNet_V2_Weights, mobilenet_v2
from torchvision.models.segmentation.deeplabv3 import ASPP

from teacher import ARCHS, TappedSegNet


class CenterTapConv2d(nn.Conv2d):
    """A dilated 3x3 convolution that skips its off-centre taps when they can only read the zero padding.

    With dilation >= the feature map's height and width, every off-centre tap of every output pixel falls outside
    the map, so the convolution is exactly the 1x1 convolution with the centre weights (and the off-centre weights
    get exactly zero gradient either way). The student's ASPP runs rates 12 and 18 on an 8x8 map at 256x256 input:
    this skips 8/9 of their work, forward and backward. Same parameters, same state dict."""

    def forward(self, x):
        if x.shape[-2] <= self.dilation[0] and x.shape[-1] <= self.dilation[1]:
            return F.conv2d(x, self.weight[:, :, 1:2, 1:2], self.bias)
        return super().forward(x)


def skip_padding_taps(module):
    """Make every dilated 3x3 'same' convolution of `module` a CenterTapConv2d (in place, no new parameters)."""
    for m in module.modules():
        if (type(m) is nn.Conv2d and m.kernel_size == (3, 3) and m.stride == (1, 1) and m.padding == m.dilation
                and m.padding_mode == "zeros" and m.dilation != (1, 1)):
            m.__class__ = CenterTapConv2d  # the class only: parameters, RNG use and state dict stay as they were
    return module


class LightSegNet(nn.Module):
    """The original's "light" student: MobileNetV2 trunk, ASPP(256) at stride 32, a decoder joined with the
    stride-8 features, a 1x1 classifier.

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
        self.aspp = skip_padding_taps(ASPP(1280, [6, 12, 18], 256))
        self.decoder = nn.Sequential(
            nn.Conv2d(256 + 32, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Dropout(0.1),
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.upsample_first = upsample_first

    def forward(self, x, return_features=False, upto=None):
        """upto=3: return (None, [f4, f8, f32]) without running the head (a frozen light teacher's feature path)."""
        size = x.shape[-2:]
        f4 = self.stage1(x)
        f8 = self.stage2(f4)
        f32 = self.stage3(f8)
        if upto is not None and upto <= 3:
            return None, [f4, f8, f32][:upto]
        a = F.interpolate(self.aspp(f32), size=f8.shape[-2:], mode="bilinear", align_corners=False)
        d = self.decoder(torch.cat([a, f8], dim=1))
        if self.upsample_first:
            logits = self.classifier(F.interpolate(d, size=size, mode="bilinear", align_corners=False))
        else:
            logits = F.interpolate(self.classifier(d), size=size, mode="bilinear", align_corners=False)
        return (logits, [f4, f8, f32]) if return_features else logits


def light(num_classes=21, pretrained_backbone=False, **kw):
    return LightSegNet(num_classes, pretrained_backbone, upsample_first=kw.get("upsample_first", False))


def best(num_classes=21, pretrained_backbone=False, **kw):
    """The original's second choice: torchvision fcn_resnet50 trained from scratch as a student."""
    return TappedSegNet("fcn_resnet50", num_classes, pretrained_backbone)


def teacher(num_classes=21, pretrained_backbone=False, teacher_arch="fcn_resnet50", **kw):
    """The teacher network, trainable: `python train.py --model_name teacher [--teacher_arch A]` trains it.
    A is a torchvision ResNet segmentation net of teacher/ (the default, whose VOC weights torchvision
    publishes) or "light": the student's own architecture, trained with a larger budget (born-again
    distillation; the from-scratch teacher that pays on small data sets, see the README)."""
    if teacher_arch == "light":
        return light(num_classes, pretrained_backbone)
    if teacher_arch not in ARCHS:
        raise ValueError(f"--teacher_arch {teacher_arch}: unknown; choose one of {', '.join(TEACHER_ARCHS)}")
    return TappedSegNet(teacher_arch, num_classes, pretrained_backbone)


MODELS = {"light": light, "best": best, "teacher": teacher}
TEACHER_ARCHS = (*ARCHS, "light")


def build_model(name, num_classes=21, **kwargs):
    if name not in MODELS:
        raise ValueError(f"--model_name {name}: unknown; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes, **kwargs)


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
    p = argparse.ArgumentParser(description="Summarise a registered model", add_help=True)
    p.add_argument("-m", "--m", "--model_name", dest="model_name", default="light", choices=sorted(MODELS))
    p.add_argument("--num_classes", type=int, default=21)
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--teacher_arch", default="fcn_resnet50", choices=TEACHER_ARCHS)
    p.add_argument("--no_table", action="store_true", help="skip the torchsummary table")
    return p


def main(args):
    model = build_model(args.model_name, args.num_classes, teacher_arch=args.teacher_arch).eval()
    size = (3, args.img_size, args.img_size)
    if not args.no_table:
        from torchsummary import summary

        summary(model, size, device="cpu")
    total, trainable = count_parameters(model)
    flops = count_flops(model, size)
    print(f"model: {args.model_name}")
    print(f"total parameters: {total:,}")
    print(f"trainable parameters: {trainable:,}")
    print(f"FLOPs at {'x'.join(map(str, size))}: {flops / 1e9:.2f} GFLOP ({flops / 2e9:.2f} GMAC)")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
