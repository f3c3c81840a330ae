"""CamVid with few labels and "a teacher trained on every label" (issue 22's table, named for what it is in issue
36): the camvid preset's teacher, which learned the masks of every train frame, including the frames the '@u' rows
are then offered without their masks; and its student recipe. The students have the masks of the first quarter of
each train sequence (dataset.py's SPLIT_quarter) and, in the '@u' rows, every train frame without its mask, 8
appended to each step's 8 labelled ones; scratch_all has every label and the same steps (steps_per_epoch). Every
student runs the camvid table's scratch budget in optimizer steps (30 epochs of all train = 1350 steps), so fewer
labels never mean fewer steps: 123 epochs of the labelled quarter (experiments.py's few_label_epochs). On the
development split the held-out sequence is in neither the labels nor the pool. It measures distillation from a
stronger, fully supervised teacher, not what a user without the masks gets: that is camvid_few (docs/unlabeled.md).
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
