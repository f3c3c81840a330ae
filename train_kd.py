"""Distil the frozen teacher into a student: response (logit) or feature distillation.

    python train_kd.py --kd_method response --temperature 4 --alpha 0.3
    python train_kd.py --kd_method feature --model_name light
    python train_kd.py --kd_method feature --root_dir data/synthetic --epochs 2 --img_size 64 --batch_size 8
    torchrun --nproc_per_node=4 train_kd.py --kd_method feature --amp        # 1 machine x 4 GPUs

The teacher's weights come from --teacher_weights, else SAVE_DIR/teacher_best.pth (python train.py
--model_name teacher), else torchvision's COCO_WITH_VOC_LABELS_V1 file (see teacher/).
Distillation is a loss (DeiT): the loop of train.py runs unchanged; the losses here hold the teacher and,
for feature KD, the 1x1 alignment convs, which train with the student but are not part of it.
Writes SAVE_DIR/{response,feature}_{best,last}.pth and the same logs and pictures as train.py.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils
from model import build_model
from teacher import load_teacher
from train import SegmentationLoss, fit, get_args_parser as train_args_parser, run_cli


class PixelKL(torch.autograd.Function):
    """T^2 * mean over pixels of KL(softmax(t/T) || softmax(s/T)), summed over classes (dim 1), and its gradient
    T * (softmax(s/T) - softmax(t/T)) / pixels written out: the formula of F.kl_div(...).sum(1).mean() * T^2 in
    fewer passes over the (N, C, H, W) logits (this term, forward and backward: ~280 -> ~180 ms per batch of 8 at
    256x256 on 2 CPU cores).
    The teacher's logits get no gradient (they come from a frozen teacher)."""

    @staticmethod
    def forward(ctx, student_logits, teacher_logits, T):
        log_q = torch.log_softmax(student_logits / T, dim=1)
        log_p = torch.log_softmax(teacher_logits / T, dim=1)
        p = log_p.exp()
        pixels = student_logits.numel() // student_logits.shape[1]
        # torch's sum (cascade summation), not a BLAS dot: over 10^7 terms in float32 the dot drifted by 5e-5
        kl_sum = (p * log_p.sub_(log_q)).sum()
        ctx.save_for_backward(log_q, p)
        ctx.grad_scale = T / pixels
        return kl_sum * (T * T / pixels)

    @staticmethod
    def backward(ctx, grad):
        log_q, p = ctx.saved_tensors
        return log_q.exp().sub_(p).mul_(grad * ctx.grad_scale), None, None


class ResponseKDLoss(nn.Module):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE  (Hinton et al., 2015), per pixel.

    The KL divergence is summed over classes and averaged over all pixels (ignored ones too, as the original and
    CIRKD do: the teacher has an opinion there). The original's batchmean on 4-D logits summed over pixels, so its
    term grew with image size (65,536x the per-pixel mean at 256x256); here alpha weighs a per-pixel term.
    """

    needs_features = False

    def __init__(self, teacher, alpha=0.5, temperature=2.0, ignore_index=255):
        super().__init__()
        self.teacher, self.alpha, self.T = teacher, alpha, temperature
        self.ce = SegmentationLoss(ignore_index)

    def kd_term(self, student_logits, teacher_logits):
        return PixelKL.apply(student_logits.float(), teacher_logits.float(), self.T)

    def forward(self, images, outputs, targets):
        ce = self.ce(images, outputs, targets)["loss"]
        if self.alpha == 0:  # the scratch recipe exactly: the teacher is not even run
            return {"loss": ce, "ce": ce.detach(), "kd": torch.zeros_like(ce)}
        kd = self.kd_term(outputs, self.teacher(images, need="logits"))
        return {"loss": self.alpha * kd + (1 - self.alpha) * ce, "ce": ce.detach(), "kd": kd.detach()}


class FeatureKDLoss(nn.Module):
    """alpha * mean_k (1 - cos(align_k(s_k), t_k)) + (1 - alpha) * CE, the original's feature distillation.

    Pairs: student stride-4, stride-8 and last-trunk features with teacher layer1, layer2, layer3. Student
    features are resized (bilinear) to the teacher's size, projected by a 1x1 conv to the teacher's width, and
    compared by cosine similarity over channels at every pixel, averaged over pixels and pairs.
    """

    needs_features = True

    def __init__(self, teacher, student_channels, alpha=0.5, ignore_index=255):
        super().__init__()
        self.teacher, self.alpha = teacher, alpha
        self.ce = SegmentationLoss(ignore_index)
        t_channels = teacher.feature_channels[:3]
        if len(student_channels) != 3:
            raise ValueError(f"feature KD needs 3 student feature maps, the student gives {len(student_channels)}")
        self.align = Align(student_channels, t_channels)
        # What forward calls: the DDP wrapper once wrap_ddp has run. Set past nn.Module's registry so that the
        # wrapper adds no second copy of the weights to state_dict().
        object.__setattr__(self, "_align", self.align)

    def wrap_ddp(self, device):
        object.__setattr__(self, "_align", nn.parallel.DistributedDataParallel(
            self.align, device_ids=[device.index] if device.type == "cuda" else None))

    def feature_term(self, student_feats, teacher_feats):
        aligned = self._align_all(student_feats, teacher_feats)
        terms = [(1 - F.cosine_similarity(a.float(), t.float(), dim=1)).mean() for a, t in zip(aligned, teacher_feats)]
        return torch.stack(terms).mean()

    def _align_all(self, student_feats, teacher_feats):
        # Project, then resize: a 1x1 conv commutes with bilinear interpolation, and projecting the stride-32 map
        # before enlarging it to stride 8 costs 16x fewer multiply-adds for the same result.
        aligned = self._align(student_feats)
        return [F.interpolate(a, size=t.shape[-2:], mode="bilinear", align_corners=False)
                if a.shape[-2:] != t.shape[-2:] else a for a, t in zip(aligned, teacher_feats)]

    def forward(self, images, outputs, targets):
        logits, feats = outputs
        ce = self.ce(images, logits, targets)["loss"]
        if self.alpha == 0:
            return {"loss": ce, "ce": ce.detach(), "feat": torch.zeros_like(ce)}
        feat = self.feature_term(feats, self.teacher(images, need="features"))
        return {"loss": self.alpha * feat + (1 - self.alpha) * ce, "ce": ce.detach(), "feat": feat.detach()}


class Align(nn.Module):
    """1x1 convs that map each student feature map to the width of its teacher feature map."""

    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(student_channels, teacher_channels))

    def forward(self, feats):
        return [conv(f) for conv, f in zip(self.convs, feats)]


def get_args_parser():
    p = train_args_parser(description="Distil the teacher into a student")
    p.add_argument("--kd_method", default="response", choices=["response", "feature"])
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term, in [0, 1]")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of response KD")
    p.add_argument("--teacher_weights", default=None, help="teacher weights file (see teacher/)")
    # The original train_kd.py: AdamW and a stronger photometric augmentation.
    p.set_defaults(optimizer="adamw", augment="kd")
    return p


def make_criterion(args, info, model, device):
    teacher, source = load_teacher(args.teacher_arch, info.num_classes, args.teacher_weights, args.save_dir, device,
                                   build=lambda: build_model("teacher", info.num_classes, teacher_arch=args.teacher_arch))
    if args.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    if utils.is_main():
        print(f"teacher: {args.teacher_arch} from {source}")
    if args.kd_method == "response":
        return ResponseKDLoss(teacher, args.alpha, args.temperature, info.ignore_index)
    channels = getattr(model, "feature_channels", None)
    if channels is None:
        raise SystemExit(f"--model_name {args.model_name} exposes no feature maps for --kd_method feature")
    return FeatureKDLoss(teacher, channels, args.alpha, info.ignore_index)


def main(args):
    return fit(args, args.kd_method, make_criterion)


if __name__ == "__main__":
    parser = get_args_parser()
    run_cli(main, parser)
