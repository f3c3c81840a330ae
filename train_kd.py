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


REDUCTIONS = ("original", "pixel")


class ResponseKDLoss(nn.Module):
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE  (Hinton et al., 2015).

    reduction "original" (the default, the original project's): nn.KLDivLoss(reduction="batchmean") on the
    (N, C, H, W) logits, i.e. the KL summed over classes and pixels and divided by N, so the term grows with the
    image size (H*W times the per-pixel mean). "pixel": summed over classes and averaged over all pixels (ignored
    ones too, as CIRKD and MMRazor do: the teacher has an opinion there), a scale independent of the image size.
    """

    needs_features = False

    def __init__(self, teacher, alpha=0.5, temperature=2.0, ignore_index=255, reduction="original"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"--kd_reduction {reduction}: choose one of {', '.join(REDUCTIONS)}")
        self.teacher, self.alpha, self.T, self.reduction = teacher, alpha, temperature, reduction
        self.ce = SegmentationLoss(ignore_index)

    def kd_term(self, student_logits, teacher_logits):
        s, t = student_logits.float(), teacher_logits.float()
        kl = F.kl_div(F.log_softmax(s / self.T, dim=1), F.log_softmax(t / self.T, dim=1), reduction="sum",
                      log_target=True)
        per = s.shape[0] if self.reduction == "original" else s.numel() // s.shape[1]
        return kl * (self.T * self.T / per)

    def forward(self, images, outputs, targets):
        ce = self.ce(images, outputs, targets)["loss"]
        if self.alpha == 0:  # the scratch recipe exactly: the teacher is not even run
            return {"loss": ce, "ce": ce.detach(), "kd": torch.zeros_like(ce)}
        kd = self.kd_term(outputs, self.teacher(images, need="logits"))
        return {"loss": self.alpha * kd + (1 - self.alpha) * ce, "ce": ce.detach(), "kd": kd.detach()}


class FeatureKDLoss(nn.Module):
    """alpha * sum_k (1 - cos(align_k(s_k), t_k)) + (1 - alpha) * CE, the original's feature distillation.

    Pairs: student stride-4, stride-8 and last-trunk features with teacher layer1, layer2, layer3. Student
    features are resized (bilinear) to the teacher's size, projected by a 1x1 conv to the teacher's width, and
    compared by cosine similarity over channels at every pixel, averaged over pixels. reduction "original" (the
    default) adds the three pair terms, as the original did; "pixel" averages them (CIRKD's and MMRazor's habit).
    """

    needs_features = True

    def __init__(self, teacher, student_channels, alpha=0.5, ignore_index=255, reduction="original"):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"--kd_reduction {reduction}: choose one of {', '.join(REDUCTIONS)}")
        self.teacher, self.alpha, self.reduction = teacher, alpha, reduction
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
        terms = torch.stack(terms)
        return terms.sum() if self.reduction == "original" else terms.mean()

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
    p.add_argument("--kd_reduction", default="original", choices=REDUCTIONS,
                   help="original: the original's scale (response: KL summed over classes and pixels, divided by "
                        "the batch size, times T^2; feature: the three pair terms added); pixel: response KL "
                        "averaged over pixels, feature pair terms averaged (CIRKD/MMRazor; no image-size dependence)")
    p.add_argument("--teacher_weights", default=None, help="teacher weights file (see teacher/)")
    # The original train_kd.py: AdamW, a stronger photometric augmentation, and schedule/early stopping/best
    # checkpoint on val mIoU (its train.py watched val loss).
    p.set_defaults(optimizer="adamw", augment="kd", monitor="miou")
    return p


def make_criterion(args, info, model, device):
    teacher, source = load_teacher(args.teacher_arch, info.num_classes, args.teacher_weights, args.save_dir, device,
                                   build=lambda: build_model("teacher", info.num_classes, teacher_arch=args.teacher_arch))
    if args.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    if utils.is_main():
        print(f"teacher: {args.teacher_arch} from {source}")
    if args.kd_method == "response":
        return ResponseKDLoss(teacher, args.alpha, args.temperature, info.ignore_index, args.kd_reduction)
    channels = getattr(model, "feature_channels", None)
    if channels is None:
        raise SystemExit(f"--model_name {args.model_name} exposes no feature maps for --kd_method feature")
    return FeatureKDLoss(teacher, channels, args.alpha, info.ignore_index, args.kd_reduction)


def main(args):
    return fit(args, args.kd_method, make_criterion)


if __name__ == "__main__":
    parser = get_args_parser()
    run_cli(main, parser)
