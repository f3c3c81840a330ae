"""The presets of experiments.py, one file each, plain values (nanoGPT's config/*.py): a new preset is a new file
here and a line below.

A preset holds the data (`dataset`, `root_dir`, `img_size`, and for the demo the `synthetic` recipe it writes), the
teacher's and the students' recipes as flag mappings (`{"epochs": 12, "geometric": True}` is `--epochs 12
--geometric`), one mapping per KD method (a combination 'a+b' takes both parts' flags), `unlabeled` (the flags of a
'@u' row), `methods` (the rows after scratch), `chosen_on` (which split chose each value, printed under the seeded
table) and `note` (printed under the demo's table). The few-label presets add `few_labels` (--split -> the
labelled split and the '@u' pool) and `unlabeled_batch`; camvid_few also `scratch_rows`, `images_per_step` (its
teacher then learns the labelled split only; experiments.honest_splits) and `table_columns` (the csv's extra
columns). experiments.py merges them, once per run, in one stated order.
"""
from . import camvid, camvid_few, camvid_few_full_teacher, demo

PRESETS = {"demo": demo.PRESET, "camvid": camvid.PRESET, "camvid_few": camvid_few.PRESET,
           "camvid_few_full_teacher": camvid_few_full_teacher.PRESET}

UNLABELED = "@u"  # a method name's suffix: the run also takes the preset's `unlabeled` images
