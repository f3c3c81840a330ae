"""Distil the frozen teacher into a student: response (logit) or feature distillation.

    python train_kd.py --kd_method response --temperature 4 --alpha 0.3
    python train_kd.py --kd_method feature --model_name light
    python train_kd.py --kd_method feature --root_dir data/synthetic --epochs 2 --img_size 64 --batch_size 8
    torchrun --nproc_per_node=4 train_kd.py --kd_method feature --amp        # 1 machine x 4 GPUs

The teacher's weights come from --teacher_weights, else SAVE_DIR/teacher_best.pth (python train.py
--model_name teacher), else torchvision's COCO_WITH_VOC_LABELS_V1 file (see teacher/).
Distillation is a loss (DeiT): engine.py's loop runs unchanged; the losses (losses.py) hold the teacher and,
for feature KD, the 1x1 alignment convs, which train with the student but are not part of it. A method is one
entry of METHODS below and one class in losses.py.
Writes SAVE_DIR/{response,feature}_{best,last}.pth and the same logs and pictures as train.py.
"""
import torch

import engine
import utils
from losses import REDUCTIONS, FeatureKDLoss, ResponseKDLoss
from model import add_model_args, build_model
from teacher import TeacherError, load_teacher


def response(teacher, student, info, args):
    return ResponseKDLoss(teacher, args.alpha, args.temperature, info.ignore_index, args.kd_reduction)


def feature(teacher, student, info, args):
    channels = getattr(student, "feature_channels", None)
    if channels is None:
        raise SystemExit(f"--model_name {args.model_name} exposes no feature maps for --kd_method feature")
    return FeatureKDLoss(teacher, channels, args.alpha, info.ignore_index, args.kd_reduction)


METHODS = {"response": response, "feature": feature}  # --kd_method NAME -> the loss it builds
RULES = [("alpha", lambda v: 0.0 <= v <= 1.0, "must be in [0, 1] (the weight of the distillation term)"),
         ("temperature", lambda v: v > 0, "must be > 0")]


def get_args_parser():
    p = engine.get_args_parser("Distil the teacher into a student")
    add_model_args(p)
    p.add_argument("--kd_method", default="response", choices=sorted(METHODS))
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


def main(args):
    def build_criterion(student, info, device):
        teacher, source = load_teacher(args.teacher_arch, info.num_classes, args.teacher_weights, args.save_dir,
                                       device)
        if args.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
        if utils.is_main():
            print(f"teacher: {args.teacher_arch} from {source}")
        return METHODS[args.kd_method](teacher, student, info, args)

    return engine.fit(args, args.kd_method,
                      lambda num_classes: build_model(args.model_name, num_classes,
                                                      pretrained_backbone=args.pretrained_backbone,
                                                      teacher_arch=args.teacher_arch),
                      build_criterion, extra_meta={"teacher_arch": args.teacher_arch})


if __name__ == "__main__":
    engine.run_cli(main, get_args_parser(), rules=RULES, errors=(TeacherError,))
