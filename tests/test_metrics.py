import numpy as np
import torch

from utils import ConfusionMatrix


def numpy_ious(pred, target, n, ignore=255):
    """Independent reference: per-class IoU from a NumPy confusion matrix over non-ignored pixels."""
    keep = target != ignore
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (target[keep], pred[keep]), 1)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return iou, inter.sum() / cm.sum()


def make_batch(rng, n, shape, p_ignore=0.2):
    target = rng.integers(0, n, size=shape)
    target[rng.random(shape) < p_ignore] = 255
    pred = np.where(rng.random(shape) < 0.6, np.where(target == 255, 0, target), rng.integers(0, n, size=shape))
    return pred, target


def test_miou_ignores_255_and_matches_numpy():
    rng = np.random.default_rng(0)
    n = 6
    cm = ConfusionMatrix(n)
    preds, targets = [], []
    for _ in range(3):  # accumulated over batches, not a mean of per-batch scores
        pred, target = make_batch(rng, n, (2, 17, 19))
        cm.update(torch.from_numpy(pred), torch.from_numpy(target))
        preds.append(pred.ravel()), targets.append(target.ravel())
    pred, target = np.concatenate(preds), np.concatenate(targets)
    iou, acc = numpy_ious(pred, target, n)
    res = cm.compute()
    np.testing.assert_allclose(res["iou"], iou, rtol=1e-12)
    assert abs(res["miou"] - np.nanmean(iou)) < 1e-12
    assert abs(res["pixel_acc"] - acc) < 1e-12
    # 255 really is excluded: counting it as a class would change the score.
    iou_with, _ = numpy_ious(pred, np.where(target == 255, n - 1, target), n)
    assert abs(np.nanmean(iou_with) - res["miou"]) > 1e-3


def test_original_clamped_miou():
    rng = np.random.default_rng(1)
    n = 5
    pred, target = make_batch(rng, n, (4, 11, 13))
    cm = ConfusionMatrix(n)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    clamped = np.minimum(target, n - 1)  # the original: 255 clamped into the last class
    iou, _ = numpy_ious(pred, clamped, n)
    assert abs(cm.compute()["miou_clamped"] - np.nanmean(iou)) < 1e-12


def test_absent_class_left_out_of_mean():
    cm = ConfusionMatrix(4)
    target = torch.tensor([0, 0, 1, 1, 255])
    pred = torch.tensor([0, 1, 1, 1, 3])  # class 2 absent everywhere; class 3 predicted only on an ignored pixel
    cm.update(pred, target)
    res = cm.compute()
    assert np.isnan(res["iou"][2]) and np.isnan(res["iou"][3])
    assert abs(res["miou"] - np.mean([1 / 2, 2 / 3])) < 1e-12


def test_agrees_with_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(2)
    n = 7
    pred, target = make_batch(rng, n, (3, 21, 23), p_ignore=0.1)
    cm = ConfusionMatrix(n)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    tm = MulticlassJaccardIndex(num_classes=n, ignore_index=255, average="none")
    ref = tm(torch.from_numpy(pred), torch.from_numpy(target)).numpy()
    np.testing.assert_allclose(cm.compute()["iou"], ref, rtol=1e-5)
