"""Run by test_distributed.py under torchrun: trains (train.py, or train_kd.py when --kd_method is given), then
each rank saves the weights it ended with, the loss's trainable parts included (alignment convs, MGD's generator)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
import train_kd  # noqa: E402

if __name__ == "__main__":
    script = train_kd if "--kd_method" in sys.argv else train
    parser = script.get_args_parser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    result = script.main(args)
    trainable = {k: v for k, v in result["criterion"].state_dict().items() if not k.startswith("teacher.")}
    torch.save({"model": result["model"].state_dict(), "criterion": trainable, "history": result["history"]},
               os.path.join(args.out, f"rank{rank}.pt"))
