"""Faithfulness: the repo's student, checkpoint mapping and default losses against original.py, an independent
re-expression of the original project's LightweightResNet and loss formulas (not model.py, not losses.py)."""
import csv
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import ROOT, run_cli

import original
from model import build_model, load_original_state_dict
from losses import FeatureKD, ResponseKD, build_loss


def random_original(num_classes=21, seed=0):
    """An OriginalLight with random weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = original.OriginalLight(num_classes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_student_is_the_original_module_for_module():
    """Same parameter shapes under the mapped names, the original's count with its alignment convs, and exactly the
    original's two dropouts (the decoder's 0.5 and 0.1) in train mode."""
    ours, theirs = build_model("light", 21).train(), original.OriginalLight(21).train()
    mapped, notes = load_original_state_dict(theirs.state_dict())
    own = ours.state_dict()
    assert mapped.keys() == own.keys()
    assert all(mapped[k].shape == own[k].shape for k in own)
    assert notes and "align_layers" in notes[0]
    n_theirs = sum(p.numel() for p in theirs.parameters())  # shared trunk parameters counted once
    assert n_theirs == 14_652_181
    align = sum(p.numel() for p in theirs.align_layers.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_theirs - align
    dropouts = lambda net: sorted(m.p for m in net.modules() if isinstance(m, nn.modules.dropout._DropoutNd))  # noqa: E731
    assert dropouts(ours) == dropouts(theirs) == [0.1, 0.5]


@pytest.mark.parametrize("size", [64, 224])  # 224: a 7x7 map at stride 32, where rate 6 reads real pixels
def test_original_state_dict_gives_the_original_logits(size):
    theirs = random_original()
    ours = build_model("light", 21)
    ours.load_state_dict(load_original_state_dict(theirs.state_dict())[0])
    ours.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want, want_feats = theirs(x)
        got = ours(x, needs={"logits", "features"})
        got, got_feats = got["logits"], got["features"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert len(got_feats) == len(want_feats) == 3
    for a, b in zip(got_feats, want_feats):
        torch.testing.assert_close(a, b)


def test_original_state_dict_with_dataparallel_prefix_and_a_bad_one():
    sd = {"module." + k: v for k, v in random_original().state_dict().items()}
    mapped, _ = load_original_state_dict(sd)
    build_model("light", 21).load_state_dict(mapped)
    bad = dict(random_original().state_dict())
    bad["backbone.8.conv.0.0.weight"] = bad["backbone.8.conv.0.0.weight"] + 1  # the trunk's two copies disagree
    with pytest.raises(ValueError, match="differs"):
        load_original_state_dict(bad)


def test_default_losses_are_the_original_formulas():
    """Response: nn.KLDivLoss(reduction="batchmean") on 4-D logits times T^2; feature: the three pair terms added.
    Compared to 1e-6 relative (a batchmean value is of the order of H*W)."""
    torch.manual_seed(0)
    s, t = torch.randn(3, 21, 24, 20) * 2, torch.randn(3, 21, 24, 20) * 3
    for T in (1.0, 2.0, 4.0):
        got = ResponseKD(1.0, T).term(s, t)
        want = original.response_kd(s.double(), t.double(), T)
        assert abs(got.item() - want.item()) / want.item() < 1e-6
        pixel = ResponseKD(1.0, T, "pixel").term(s, t)
        assert abs(pixel.item() - want.item() / (24 * 20)) / pixel.item() < 1e-6

    t_feats = [torch.randn(2, 256, 16, 16), torch.randn(2, 512, 8, 8), torch.randn(2, 1024, 8, 8)]
    s_feats = [torch.randn(2, 24, 16, 16), torch.randn(2, 32, 8, 8), torch.randn(2, 1280, 2, 2)]
    ours = FeatureKD((24, 32, 1280), (256, 512, 1024), 1.0)
    theirs = original.OriginalLight().align_layers
    ours.align.convs.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        got = ours.term(s_feats, t_feats)
        want = original.feature_kd(s_feats, t_feats, theirs)
    assert abs(got.item() - want.item()) / want.item() < 1e-6
    ours.reduction = "pixel"
    with torch.no_grad():
        assert abs(ours.term(s_feats, t_feats).item() - want.item() / 3) / (want.item() / 3) < 1e-6


def test_total_loss_is_the_originals_blend():
    torch.manual_seed(1)
    s, t = torch.randn(2, 21, 8, 8), torch.randn(2, 21, 8, 8)
    y = torch.randint(0, 21, (2, 8, 8))

    class Fixed(nn.Module):
        def forward(self, x, needs=None):
            return {"logits": t}

    import train_kd

    # the mission's command: train_kd.py --kd_method response --temperature 4 --alpha 0.3
    args = train_kd.get_args_parser().parse_args(["--kd_method", "response", "--temperature", "4", "--alpha", "0.3"])
    out = build_loss(["response"], Fixed(), None, args)(None, {"logits": s}, y)
    want = 0.3 * original.response_kd(s, t, 4.0) + 0.7 * F.cross_entropy(s, y, ignore_index=255)
    assert abs(out["loss"].item() - want.item()) / want.item() < 1e-6


def independent_miou(net, root, size):
    """The original network on the val split, scored with a NumPy confusion matrix (255 excluded)."""
    from dataset import build_dataset

    val = build_dataset("voc", root, "val", size, train=False)
    hist = np.zeros((21, 21), dtype=np.int64)
    with torch.no_grad():
        for image, mask in val:
            pred = net(image[None])[0].argmax(1)[0].numpy()
            m = mask.numpy()
            keep = m != 255
            hist += np.bincount(21 * m[keep] + pred[keep], minlength=441).reshape(21, 21)
    inter = np.diag(hist)
    union = hist.sum(0) + hist.sum(1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmean(inter / union))


def test_test_py_scores_an_original_checkpoint(synthetic_root, tmp_path):
    net = random_original(seed=3)
    path = tmp_path / "feature_kd_best.pth"
    torch.save(net.state_dict(), path)  # exactly what the original's train_kd.py wrote
    csv_path = tmp_path / "results.csv"
    proc = run_cli(["test.py", "--training_mode", "feature", "--weights", str(path), "--root_dir", synthetic_root,
                    "--img_size", "40", "48", "--device", "cpu", "--results_csv", str(csv_path), "--num_vis", "0",
                    "--no_progress"], cwd=ROOT)
    assert "dropped 3 align_layers" not in proc.stdout  # counted in tensors, not layers
    assert "align_layers" in proc.stdout and "dropped" in proc.stdout
    row = list(csv.DictReader(open(csv_path)))[-1]
    assert abs(float(row["mIoU_with_ignore"]) - independent_miou(net, synthetic_root, (40, 48))) < 1e-4

    neither = tmp_path / "neither.pth"
    torch.save({"conv.weight": torch.zeros(1)}, neither)
    proc = run_cli(["test.py", "--training_mode", "feature", "--weights", str(neither), "--root_dir", synthetic_root,
                    "--img_size", "40", "48", "--device", "cpu", "--results_csv", str(csv_path), "--num_vis", "0",
                    "--no_progress"], cwd=ROOT, check=False)
    assert proc.returncode == 2
    assert "neither a checkpoint of this repo" in proc.stderr and "Traceback" not in proc.stderr
    assert os.path.exists(csv_path) and len(list(csv.DictReader(open(csv_path)))) == 1  # nothing appended
