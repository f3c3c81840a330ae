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
    if os.environ.get("SEGKD_TEST_FULL_DISK") and rank == 0:
        # test_full_disk.py: rank 0's disk fills up once RUN_last.pth exists (the second epoch's write fails)
        import errno

        import utils

        real = utils._atomic_write

        def full(path, folder, data):
            if path.endswith("_last.pth") and os.path.exists(path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return real(path, folder, data)

        utils._atomic_write = full
    if os.environ.get("SEGKD_TEST_FULL_DISK"):
        import utils

        utils.run_cli(script.main, args)  # exits 2 on a UserError, as the scripts' own entry point
    result = script.main(args)
    trainable = {k: v for k, v in result["criterion"].state_dict().items() if not k.startswith("teacher.")}
    torch.save({"model": result["model"].state_dict(), "criterion": trainable, "history": result["history"]},
               os.path.join(args.out, f"rank{rank}.pt"))
