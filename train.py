"""Train a segmentation network from scratch with cross-entropy.

    python train.py --model_name light                        # the original's defaults (VOC in ./data)
    python train.py --model_name teacher --epochs 100         # train the teacher network of teacher/
    python train.py --root_dir data/synthetic --epochs 2 --img_size 64 --batch_size 8   # CPU smoke run
    torchrun --nproc_per_node=4 train.py --model_name light --amp            # 1 machine x 4 GPUs
    python train.py --model_name light --resume auto                         # continue an interrupted run

Writes under --save_dir (default weights/): RUN_best.pth (best val --monitor), RUN_last.pth (every epoch: the
resume point and the final weights), RUN_log.jsonl (one JSON line per epoch), RUN_curves.png and
RUN_predictions.png, where RUN is --run_name (default: "regular", or "teacher" for --model_name teacher).
The loop, evaluation, checkpoints and resume live in engine.py; this script builds the network and the loss.
"""
import engine
from losses import SegmentationLoss
from model import MODELS, add_model_args, build_model, user_builder


def get_args_parser():
    p = engine.get_args_parser("Train a segmentation network from scratch")
    add_model_args(p)
    return p


def check_names(args):
    """An unknown --model_name / --teacher_arch (or a user's module that does not import) fails before any data."""
    for name in (args.model_name, args.teacher_arch):
        if name not in MODELS:
            user_builder(name)


def build_network(args, num_classes):
    """The network of --model_name (and --teacher_arch for the teacher), and what a checkpoint records of it."""
    model = build_model(args.model_name, num_classes, pretrained_backbone=args.pretrained_backbone,
                        teacher_arch=args.teacher_arch)
    return model, {"teacher_arch": args.teacher_arch}


def main(args):
    mode = "teacher" if args.model_name == "teacher" else "regular"
    check_names(args)
    with engine.session(args) as device:
        data = engine.build_data(args, device)
        model, meta = build_network(args, data.info.num_classes)
        criterion = SegmentationLoss(data.info.ignore_index)
        return engine.fit(args, mode, model, criterion, data, device, meta)


if __name__ == "__main__":
    engine.run_cli(main, get_args_parser())
