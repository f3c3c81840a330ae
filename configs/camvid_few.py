"""CamVid with few labels (issue 22): the camvid preset's teacher (every label) and student recipe; the students have
the masks of the first quarter of each train sequence (dataset.py's SPLIT_quarter) and, in the '@u' rows, every train
frame without its mask, 8 appended to each step's 8 labelled ones; scratch_all has every label and the same steps
(steps_per_epoch). Every student runs the camvid table's scratch budget in optimizer steps (30 epochs of all train =
1350 steps), so fewer labels never mean fewer steps: 123 epochs of the labelled quarter (experiments.py's
few_label_epochs). On the development split the held-out sequence is in neither the labels nor the pool.
"""
from .camvid import PRESET as CAMVID

PRESET = {
    **CAMVID,
    # --split -> (the students' labelled split, the '@u' rows' unlabelled pool)
    "few_labels": {"val": ("train_quarter", "split:train"), "dev": ("train_no_dev_quarter", "split:train_no_dev")},
    "unlabeled_batch": 8,
    "methods": ["response", "response@u", "feature", "feature@u", "dist", "dist@u", "feature+cwd", "feature+cwd@u"],
    "chosen_on": {**CAMVID["chosen_on"],
                  "unlabelled images per step 8 (1:1)": "none (the default; not compared)",
                  "student steps: the camvid table's scratch budget (1350)": "none (that table's; not compared)"},
}
