"""PASCAL VOC 2012: ROOT/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt},
optionally the SBD set (SegmentationClassAug/ + ImageSets/Segmentation/train_aug.txt). The synthetic set
(segdata.synthetic) is written in this layout and read by this lister."""
import os

from segdata.common import DatasetError, DatasetInfo, Listing, Source, check_files, voc_colormap

VOC = DatasetInfo(
    "voc", 21,
    ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
     "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
     "train", "tvmonitor"),
    voc_colormap(21))


def _missing_message(base):
    return (f"PASCAL VOC 2012 not found at {base}. Either\n"
            f"  - add --download (needs internet, ~2 GB) to fetch it there, or\n"
            f"  - place VOCdevkit/VOC2012 under --root_dir yourself, or\n"
            f"  - without internet: python dataset.py --make_synthetic DIR, then pass --root_dir DIR")


def download_voc(root):
    from torchvision.datasets import VOCSegmentation

    try:
        VOCSegmentation(root, year="2012", image_set="trainval", download=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad checksum a RuntimeError
        base = os.path.abspath(os.path.join(root, "VOCdevkit", "VOC2012"))
        raise DatasetError(f"downloading VOC 2012 failed ({err}); the network or the VOC server is "
                           f"unreachable. Place VOC at {base} yourself, or use the synthetic set: "
                           "python dataset.py --make_synthetic DIR, then --root_dir DIR") from err


def list_split(root, request):
    base = os.path.abspath(os.path.join(root, "VOCdevkit", "VOC2012"))
    if not os.path.isdir(base):
        if not request.download:
            raise DatasetError(_missing_message(base))
        download_voc(root)
    lists = os.path.join(base, "ImageSets", "Segmentation")
    has_aug = (os.path.isdir(os.path.join(base, "SegmentationClassAug"))
               and os.path.isfile(os.path.join(lists, "train_aug.txt")))
    name = request.list_name(auto="train_aug" if has_aug else "train")
    # The SBD-augmented masks live in their own folder; every other list uses the official masks.
    mask_dir = os.path.join(base, "SegmentationClassAug" if name == "train_aug" else "SegmentationClass")
    list_file = os.path.join(lists, f"{name}.txt")
    for needed in (os.path.join(base, "JPEGImages"), mask_dir, list_file):
        if not os.path.exists(needed):
            raise DatasetError(f"VOC folder {base} is incomplete: {needed} is missing ({request.flag} "
                               f"{request.name!r}); restore it or pick another split")
    with open(list_file) as f:
        # Some train_aug.txt copies hold "/JPEGImages/ID.jpg /SegmentationClassAug/ID.png" lines.
        ids = [os.path.splitext(os.path.basename(line.split()[0]))[0] for line in f if line.strip()]
    pairs = [(os.path.join(base, "JPEGImages", f"{i}.jpg"), os.path.join(mask_dir, f"{i}.png")) for i in ids]
    check_files(ids, pairs, f"list {list_file}")
    return Listing(pairs, name)


SOURCE = Source("voc", list_split, info=VOC)
