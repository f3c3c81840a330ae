import os

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import CAMVID, MEAN, STD, VOC, DatasetError, SegmentationDataset, build_dataset, make_synthetic_voc

SIZE = (48, 64)


def blocks_pair(tmp_path, h=60, w=80):
    """An image whose colour encodes the class of every pixel: after any geometric transform, the mask must still
    say what the image shows."""
    rng = np.random.default_rng(0)
    label = np.zeros((h, w), np.uint8)
    for k in range(1, 6):  # rectangles of classes 1..5 at random places
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        label[y:y + 20, x:x + 20] = k
    label[:3] = 255
    colours = np.array([VOC.palette[i] for i in range(21)], np.uint8)
    image = colours[np.where(label == 255, 0, label)]
    Image.fromarray(image).save(tmp_path / "img.png")
    Image.fromarray(label).save(tmp_path / "mask.png")
    return str(tmp_path / "img.png"), str(tmp_path / "mask.png"), colours


def unnormalize(image):
    """A dataset sample back to RGB in [0, 1]."""
    return image * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]


def decode_classes(image, colours):
    rgb = (unnormalize(image).permute(1, 2, 0).numpy() * 255)
    d = ((rgb[:, :, None, :] - colours[None, None].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(-1)


def interior(mask, r=3):
    """Pixels whose (2r+1)^2 neighbourhood holds one label: bilinear resampling (antialiased when shrinking, then
    up to 2x enlarged by the random scale) blurs colours within about 3 px of a region edge, nowhere else."""
    m = np.pad(mask, r, mode="edge")
    same = np.ones_like(mask, bool)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            same &= m[r + dy:r + dy + mask.shape[0], r + dx:r + dx + mask.shape[1]] == mask
    return same


def test_geometric_augmentation_moves_image_and_mask_together(tmp_path):
    img, msk, colours = blocks_pair(tmp_path)
    ds = SegmentationDataset(VOC, [(img, msk)], SIZE, train=True, augment="none", geometric=True)
    for seed in range(12):
        image, mask = ds[(0, seed)]
        mask = mask.numpy()
        keep = interior(mask) & (mask != 255)
        assert keep.sum() > 100
        shown = decode_classes(image, colours)
        agree = (shown[keep] == mask[keep]).mean()
        assert agree == 1.0, f"seed {seed}: image and mask disagree on {1 - agree:.1%} of interior pixels"
        flipped = mask[:, ::-1]  # the check can fail: a mask flipped without its image is caught
        keep_f = interior(flipped) & (flipped != 255)
        assert (shown[keep_f] == flipped[keep_f]).mean() < 0.9


def test_colour_augmentation_never_touches_the_mask_and_keeps_255(tmp_path):
    img, msk, _ = blocks_pair(tmp_path)
    plain = SegmentationDataset(VOC, [(img, msk)], SIZE, train=False)[0][1]
    assert (plain == 255).any()
    for augment in ("train", "kd", "strong"):
        ds = SegmentationDataset(VOC, [(img, msk)], SIZE, train=True, augment=augment)
        for seed in range(5):
            assert torch.equal(ds[(0, seed)][1], plain)
    geo = SegmentationDataset(VOC, [(img, msk)], SIZE, train=True, augment="kd", geometric=True)
    values = set(torch.unique(torch.stack([geo[(0, s)][1] for s in range(8)])).tolist())
    assert 255 in values and values <= set(range(6)) | {255}


def test_strong_augmentation_spans_dusk_to_noon(tmp_path):
    """'strong' scales brightness by 0.4-1.6 (CamVid's dusk sequence is about half as bright as the others); 'train'
    by 0.8-1.2. Measured on a mid-grey image (no clipping), in pixels, independently of the transform's parameters."""
    Image.fromarray(np.full((60, 80, 3), 100, np.uint8)).save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((60, 80), np.uint8)).save(tmp_path / "m.png")
    pair = [(str(tmp_path / "grey.png"), str(tmp_path / "m.png"))]

    def ratios(augment):
        ds = SegmentationDataset(VOC, pair, SIZE, train=True, augment=augment)
        return np.array([float(unnormalize(ds[(0, s)][0]).mean()) * 255 / 100 for s in range(200)])

    strong, train = ratios("strong"), ratios("train")
    assert strong.min() < 0.5 and strong.max() > 1.5, (strong.min(), strong.max())
    assert train.min() > 0.75 and train.max() < 1.25, (train.min(), train.max())


def test_seeded_samples_are_reproducible(synthetic_root):
    ds = build_dataset("voc", synthetic_root, "train", SIZE, train=True, augment="kd", geometric=True)
    a, b, c = ds[(1, 7)], ds[(1, 7)], ds[(1, 8)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    image, mask = a
    assert image.dtype == torch.float32 and image.shape == (3, *SIZE)
    assert mask.dtype == torch.int64 and mask.shape == SIZE


def test_synthetic_set_has_voc_layout_and_borders(synthetic_root):
    base = os.path.join(synthetic_root, "VOCdevkit", "VOC2012")
    ids = open(os.path.join(base, "ImageSets", "Segmentation", "train.txt")).read().split()
    assert len(ids) == 8
    mask = Image.open(os.path.join(base, "SegmentationClass", ids[0] + ".png"))
    assert mask.mode == "P"
    values = np.unique(np.asarray(mask))
    assert 255 in values and 0 in values and len(values) >= 3
    with Image.open(os.path.join(base, "JPEGImages", ids[0] + ".jpg")) as im:
        assert im.format == "JPEG"


def test_missing_voc_names_path_and_ways_out(tmp_path):
    with pytest.raises(DatasetError) as err:
        build_dataset("voc", str(tmp_path / "nowhere"), "train", SIZE, train=True)
    msg = str(err.value)
    assert os.path.join("nowhere", "VOCdevkit", "VOC2012") in msg
    assert "--download" in msg and "--make_synthetic" in msg


def copy_voc(src_root, dst):
    import shutil

    shutil.copytree(src_root, dst)
    return os.path.join(dst, "VOCdevkit", "VOC2012")


def test_bad_files_are_named(synthetic_root, tmp_path):
    base = copy_voc(synthetic_root, tmp_path / "voc")
    lst = os.path.join(base, "ImageSets", "Segmentation", "val.txt")
    ids = open(lst).read().split()
    # a split list naming an image that does not exist
    with open(lst, "a") as f:
        f.write("not_there\n")
    with pytest.raises(DatasetError, match="not_there"):
        build_dataset("voc", str(tmp_path / "voc"), "val", SIZE, train=False)
    open(lst, "w").write("\n".join(ids) + "\n")
    # truncated image: cut inside its header, the pre-flight names it when the split is built; cut in its pixel
    # data (the header whole), it is named when it is decoded
    jpg = os.path.join(base, "JPEGImages", ids[0] + ".jpg")
    data = open(jpg, "rb").read()
    open(jpg, "wb").write(data[: len(data) // 3])
    with pytest.raises(DatasetError, match=f"pre-flight .*{ids[0]}"):
        build_dataset("voc", str(tmp_path / "voc"), "val", SIZE, train=False)
    open(jpg, "wb").write(data[: data.index(b"\xff\xda") + 40])  # 40 bytes past the start-of-scan marker
    ds = build_dataset("voc", str(tmp_path / "voc"), "val", SIZE, train=False)
    with pytest.raises(DatasetError, match=ids[0]):
        ds[0]
    # mask with a value that is neither a class nor 255
    png = os.path.join(base, "SegmentationClass", ids[1] + ".png")
    m = np.asarray(Image.open(png)).copy()
    m[0, 0] = 77
    Image.fromarray(m).save(png)
    with pytest.raises(DatasetError, match="77"):
        ds[1]
    # mask whose size differs from its image
    png = os.path.join(base, "SegmentationClass", ids[2] + ".png")
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(png)
    with pytest.raises(DatasetError, match="does not match"):
        ds[2]


def test_camvid_layout_resolved_by_file_name(tmp_path):
    root = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            name = f"f{split}{i}.png"
            Image.fromarray(rng.integers(0, 255, (18, 24, 3), dtype=np.uint8)).save(root / split / name)
            Image.fromarray(rng.integers(0, 12, (18, 24), dtype=np.uint8)).save(root / f"{split}annot" / name)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")  # another machine's paths
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    ds = build_dataset("camvid", str(root), "train", (12, 16), train=True, augment="train", geometric=True)
    assert len(ds) == 3 and ds.info is CAMVID and ds.info.num_classes == 11
    values = set()
    for i in range(3):
        image, mask = ds[(i, 0)]
        assert image.shape == (3, 12, 16) and mask.shape == (12, 16)
        values |= set(mask.unique().tolist())
    assert 11 not in values and 255 in values  # Unlabelled mapped to the ignore index
    assert len(build_dataset("camvid", str(root), "val", (12, 16), train=False)) == 2


def test_camvid_development_split_holds_out_one_sequence(tmp_path):
    root = tmp_path / "camvid"
    rng = np.random.default_rng(0)
    frames = {"train": ["0001TP_006690.png", "0001TP_006720.png", "0006R0_f00930.png", "0016E5_00390.png",
                        "0016E5_00420.png"], "val": ["0016E5_07959.png"]}
    for split, names in frames.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for name in names:
            Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).save(root / split / name)
            Image.fromarray(rng.integers(0, 12, (6, 8), dtype=np.uint8)).save(root / f"{split}annot" / name)

    def names(ds):
        return sorted(os.path.basename(img) for img, _ in ds.files)

    dev = build_dataset("camvid", str(root), "val", (6, 8), train=False, val_split="dev")
    rest = build_dataset("camvid", str(root), "train", (6, 8), train=True, train_split="train_no_dev")
    assert names(dev) == ["0001TP_006690.png", "0001TP_006720.png"]
    assert names(rest) == ["0006R0_f00930.png", "0016E5_00390.png", "0016E5_00420.png"]
    assert names(build_dataset("camvid", str(root), "val", (6, 8), train=False)) == ["0016E5_07959.png"]
    for name in ("0001TP_006690.png", "0001TP_006720.png"):  # a train folder without the held-out sequence
        os.remove(root / "train" / name)
    with pytest.raises(DatasetError, match="0001TP"):
        build_dataset("camvid", str(root), "val", (6, 8), train=False, val_split="dev")


def test_synthetic_extra_images_form_a_larger_teacher_split(tmp_path):
    plain = make_synthetic_voc(str(tmp_path / "plain"), num_train=4, num_val=2, size=(16, 16), seed=3)
    large = make_synthetic_voc(str(tmp_path / "large"), num_train=4, num_val=2, size=(16, 16), seed=3, num_extra=5)
    lists = lambda root: os.path.join(root, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation")  # noqa: E731
    for name in ("train", "val"):  # the extras leave the students' train and val exactly as without them
        ids = open(os.path.join(lists(plain), f"{name}.txt")).read().split()
        assert ids == open(os.path.join(lists(large), f"{name}.txt")).read().split()
        for i in ids:
            for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png")):
                a, b = (os.path.join(r, "VOCdevkit", "VOC2012", sub, f"{i}.{ext}") for r in (plain, large))
                assert open(a, "rb").read() == open(b, "rb").read()
    assert not os.path.exists(os.path.join(lists(plain), "train_large.txt"))
    train = open(os.path.join(lists(large), "train.txt")).read().split()
    val = open(os.path.join(lists(large), "val.txt")).read().split()
    big = open(os.path.join(lists(large), "train_large.txt")).read().split()
    assert big[:4] == train and len(big) == 9 and not set(big) & set(val)
    assert len(build_dataset("voc", large, "train", (16, 16), train=True, train_split="train_large")) == 9
    assert len(build_dataset("voc", large, "train", (16, 16), train=True)) == 4


def test_every_dataset_choice_is_a_registered_source_and_back():
    """--dataset's choices are segdata.SOURCES: a source added there is a choice without another edit."""
    import argparse

    import segdata
    from dataset import add_data_args

    choices = next(a.choices for a in add_data_args(argparse.ArgumentParser())._actions if a.dest == "dataset")
    assert sorted(choices) == sorted(segdata.SOURCES) == ["camvid", "cityscapes", "folder", "voc"]


def test_a_lister_returns_the_pairs_of_the_split_asked_for(synthetic_root):
    from dataset import list_split
    from segdata.common import Listing

    info, listing = list_split("voc", synthetic_root, "val")
    ids = open(os.path.join(synthetic_root, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation", "val.txt")).read()
    assert info is VOC and isinstance(listing, Listing) and listing.used == "val"
    assert [os.path.basename(m)[:-4] for _, m in listing.pairs] == ids.split()


def test_synthetic_unlabeled_images_are_new_and_leave_the_other_splits_as_they_were(tmp_path):
    lists = lambda root: os.path.join(root, "VOCdevkit", "VOC2012", "ImageSets", "Segmentation")  # noqa: E731
    read = lambda root, name: open(os.path.join(lists(root), f"{name}.txt")).read().split()  # noqa: E731
    large = make_synthetic_voc(str(tmp_path / "large"), num_train=4, num_val=2, size=(16, 16), seed=3, num_extra=5)
    both = make_synthetic_voc(str(tmp_path / "both"), num_train=4, num_val=2, size=(16, 16), seed=3, num_extra=5,
                              num_unlabeled=3)
    for name in ("train", "val", "train_large"):  # drawn last: every earlier split is byte for byte as before
        assert read(both, name) == read(large, name)
        for i in read(large, name):
            a, b = (os.path.join(r, "VOCdevkit", "VOC2012", "JPEGImages", f"{i}.jpg") for r in (large, both))
            assert open(a, "rb").read() == open(b, "rb").read()
    pool = read(both, "unlabeled")
    assert len(pool) == 3 and not set(pool) & set(read(both, "train_large") + read(both, "val"))
    jpeg = lambda i: open(os.path.join(both, "VOCdevkit", "VOC2012", "JPEGImages", f"{i}.jpg"), "rb").read()  # noqa
    seen = {jpeg(i) for i in read(both, "train_large")}
    assert not any(jpeg(i) in seen for i in pool)  # new pictures, not copies of the teacher's
    assert not os.path.exists(os.path.join(lists(large), "unlabeled.txt"))
