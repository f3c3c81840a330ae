"""Cityscapes in torchvision's layout: ROOT/leftImg8bit/SPLIT/CITY/*_leftImg8bit.png and
ROOT/gtFine/SPLIT/CITY/*_gtFine_labelTrainIds.png (used when every image has one) or *_gtFine_labelIds.png (mapped to
train ids)."""
import os

from segdata.common import IGNORE_INDEX, DatasetError, DatasetInfo, Listing, Source

# Cityscapes' 19 evaluated classes (cityscapesscripts' labels.py: trainId order, names and colours).
CITYSCAPES = DatasetInfo(
    "cityscapes", 19,
    ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
     "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"),
    ((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
     (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
     (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)))
# labelIds -> trainIds (labels.py); every id not listed (void, ground, parking, rail track, guard rail, bridge,
# tunnel, polegroup, caravan, trailer, license plate ...) is not evaluated: 255.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
_LAYOUT = ("leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and gtFine/{train,val}/CITY/"
           "*_gtFine_labelTrainIds.png or *_gtFine_labelIds.png")


def list_split(root, request):
    """labelTrainIds masks when every image of the split has one (cityscapesscripts' createTrainIdLabelImgs writes
    them), else labelIds, remapped to train ids by CITYSCAPES_TRAIN_IDS."""
    base = os.path.abspath(root)
    name = request.list_name()
    img_dir, gt_dir = os.path.join(base, "leftImg8bit", name), os.path.join(base, "gtFine", name)
    for needed in (img_dir, gt_dir):
        if not os.path.isdir(needed):
            raise DatasetError(
                f"Cityscapes folder {needed} is missing: --root_dir must hold {_LAYOUT} (unzip "
                "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from cityscapes-dataset.com there)"
                + (" ; --download does not fetch Cityscapes (it needs a login)" if request.download else ""))
    stems = []
    for city in sorted(d for d in os.listdir(img_dir) if os.path.isdir(os.path.join(img_dir, d))):
        for f in sorted(os.listdir(os.path.join(img_dir, city))):
            if f.endswith("_leftImg8bit.png"):
                stems.append((city, f[:-len("_leftImg8bit.png")]))
    if not stems:
        raise DatasetError(f"{img_dir} holds no CITY/*_leftImg8bit.png; --root_dir must hold {_LAYOUT}")
    have = {city: set(os.listdir(os.path.join(gt_dir, city))) if os.path.isdir(os.path.join(gt_dir, city)) else set()
            for city in {c for c, _ in stems}}
    kind = "labelTrainIds" if all(f"{s}_gtFine_labelTrainIds.png" in have[c] for c, s in stems) else "labelIds"
    pairs = [(os.path.join(img_dir, c, f"{s}_leftImg8bit.png"), os.path.join(gt_dir, c, f"{s}_gtFine_{kind}.png"))
             for c, s in stems]
    remap = None if kind == "labelTrainIds" else {v: CITYSCAPES_TRAIN_IDS.get(v, IGNORE_INDEX) for v in range(256)}
    return Listing(pairs, f"{name}, {kind}", remap=remap)


SOURCE = Source("cityscapes", list_split, info=CITYSCAPES)
