"""Distillation on data a small network learns in minutes: 64x64 synthetic shapes, 5 object classes that differ in
both shape and texture, large objects. As torchvision's VOC teacher was trained on COCO (far more images than VOC's
train), the teacher here is trained on a larger set than the students: 512 images (train_large: the students' 128
plus 384 more) for 12 epochs, as much compute as 48 epochs on 128. A ResNet50 from scratch learns nothing here in the
time, so the teacher has the student's own architecture. The students' budget is short on purpose (12 epochs on the
128, where the scratch student is still far from the teacher); both KD terms at the per-pixel scale
(kd_reduction pixel), response KD at the README's T 4. The '@u' rows' unlabelled images are 512 more drawn after
every other split (split:unlabeled): neither the teacher nor any student learned from them, with or without masks.
What was tried and what each gave: docs/demo_notes.md.
"""

PRESET = {
    "dataset": "voc", "root_dir": "data/synthetic",
    "synthetic": {"num_train": 128, "num_val": 32, "size": (64, 64), "classes": (1, 6, 11, 16, 17),
                  "radius": (0.2, 0.35), "num_extra": 384, "num_unlabeled": 512},
    "img_size": ["64"],
    "teacher": {"teacher_arch": "light", "train_split": "train_large", "epochs": 12, "batch_size": 8,
                "learning_rate": "2e-3", "optimizer": "adamw", "scheduler": "poly", "geometric": True,
                "monitor": "miou"},
    "student": {"epochs": 12, "batch_size": 8, "learning_rate": "2e-3", "optimizer": "adamw", "scheduler": "poly",
                "augment": "train", "geometric": True, "monitor": "miou"},
    "response": {"kd_reduction": "pixel", "alpha": 0.9, "temperature": 4},
    "feature": {"kd_reduction": "pixel", "alpha": 0.9},
    # "@u" rows: the same student with 512 new images offered without masks (train_kd.py --unlabeled), drawn from the
    # same generator after every other split, so that neither the teacher nor any student has seen them, with or
    # without masks; 8 of them appended to every step's 8 labelled ones: the same steps, twice the images
    "unlabeled": {"unlabeled": "split:unlabeled", "unlabeled_batch": 8},
    "methods": ["response", "feature", "response@u", "feature@u"],
    "note": ("What this demo shows: the pipeline runs end to end (data, teacher, five students, test, table), "
             "and whether, on this data, the distillation terms carry the teacher's knowledge: the students "
             "share one budget (steps, lr, batch, seed, augmentation, threads) and differ only by the distillation "
             "term (and, in the last two, 512 new images that no network has seen, offered without masks), so a KD "
             "row above the scratch row is what that term brought.\n"
             "What it does not show: anything about PASCAL VOC. The data are synthetic textured shapes (5 "
             "classes, 64x64, made in this run); the teacher is the student's own architecture trained on 4x "
             "the students' images (as the real teacher saw COCO), not a ResNet50; one seed, so read a margin "
             "of a few points as such (docs/demo_notes.md has three student seeds of every row)."),
}
