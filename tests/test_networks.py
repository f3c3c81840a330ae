"""Any network as student or teacher (issue 23): torchvision's segmentation networks by name, a user's module as
MODULE:CALLABLE (with and without feature taps), rebuilt from its checkpoint by test.py, predict.py and export.py;
the feature widths by a forward probe; offline ImageNet weights as one message; the README's Python snippet."""
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import model
import train_kd
import utils
from conftest import ROOT, run_cli

USER_NET = '''
import torch.nn as nn
import torch.nn.functional as F


class TinyNet(nn.Module):
    """A user's network: three stride-2 blocks and a 1x1 classifier; forward(x) gives logits at input size."""

    feature_taps = ("stem", "mid", "deep")
    logits_tap = "head"

    def __init__(self, num_classes):
        super().__init__()
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())
        self.stem, self.mid, self.deep = block(3, 8), block(8, 16), block(16, 32)
        self.head = nn.Conv2d(32, num_classes, 1)

    def forward(self, x):
        logits = self.head(self.deep(self.mid(self.stem(x))))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build(num_classes):
    return TinyNet(num_classes)


def build_untapped(num_classes, **kwargs):
    net = TinyNet(num_classes)
    net.feature_taps, net.logits_tap = (), None
    return net
'''
SMALL = ["--img_size", "32", "--batch_size", "4", "--epochs", "1", "--num_workers", "0", "--no_progress",
         "--num_vis", "0"]


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A working folder holding the user's mynet.py and a light teacher's weights."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "mynet.py").write_text(USER_NET)
    torch.manual_seed(0)
    torch.save(model.build_model("light", 21).state_dict(), folder / "teacher.pth")
    return folder


@pytest.fixture
def in_user_dir(user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)
    yield user_dir
    sys.modules.pop("mynet", None)


def kd_args(root, save_dir, *extra):
    return train_kd.get_args_parser().parse_args(["--root_dir", root, *SMALL, "--teacher_arch", "light",
                                                  "--teacher_weights", "teacher.pth", "--save_dir", str(save_dir),
                                                  *extra])


def test_user_module_is_wrapped_with_its_taps_and_probed(in_user_dir):
    net = model.build_model("mynet:build", 5).eval()
    assert isinstance(net, model.HookedSegNet) and model.feature_channels(net) == (8, 16, 32)
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        got = net(x, needs={"logits", "logits8", "features"})
        logits, feats, logits8 = got["logits"], got["features"], got["logits8"]
        assert torch.equal(logits, net(x)) and logits8.shape == (2, 5, 4, 5)
        assert torch.equal(logits8, net.net.head(net.net.deep(feats[1])))  # the classifier's own output
    plain = model.build_model("mynet:build_untapped", 5).eval()
    with torch.no_grad():
        got = plain(x, needs={"logits", "logits8", "features"})
        logits, feats, logits8 = got["logits"], got["features"], got["logits8"]
    # no logits tap: CWD and DIST compare the logits area-averaged to 1/8 of the input
    assert feats == [] and torch.equal(logits8, F.adaptive_avg_pool2d(logits, (4, 5)))
    with pytest.raises(model.ModelError, match="nosuch:build: cannot import build from nosuch"):
        model.build_model("nosuch:build", 5)
    with pytest.raises(model.ModelError, match="unknown; choose one of light, best, teacher"):
        model.build_model("lite", 5)


def test_a_forward_on_the_old_return_features_convention_is_refused_by_name():
    """Its tuples would be read as logits: the build stops, saying what changed (docs/networks.md)."""
    class Old(torch.nn.Module):
        def forward(self, x, return_features=False):
            return x

    with pytest.raises(model.ModelError, match="old:build: its forward takes return_features, the convention"):
        model.speaks_convention(Old(), "old:build")


def test_user_module_trains_with_response_and_feature_kd(synthetic_root, in_user_dir, tmp_path):
    """--model_name mynet:build: response KD and feature KD train; without taps, response KD trains and the feature
    methods stop before training with a message saying how to declare taps."""
    result = train_kd.main(kd_args(synthetic_root, tmp_path / "w", "--model_name", "mynet:build", "--kd_method",
                                   "response,feature"))
    log = json.loads((tmp_path / "w" / "response_feature_log.jsonl").read_text())
    assert log["train_kd"] > 0 and log["train_feat"] > 0
    assert result["criterion"].methods["feature"].align.convs[2].in_channels == 32
    ckpt = torch.load(tmp_path / "w" / "response_feature_best.pth", weights_only=True)
    assert ckpt["model_name"] == "mynet:build" and {k.split(".")[0] for k in ckpt["model"]} == {"net"}

    train_kd.main(kd_args(synthetic_root, tmp_path / "u", "--model_name", "mynet:build_untapped", "--kd_method",
                          "response,cwd"))
    assert (tmp_path / "u" / "response_cwd_last.pth").is_file()
    with pytest.raises(utils.UserError, match="needs three feature maps .* exposes 0: give its module a feature_taps"):
        train_kd.main(kd_args(synthetic_root, tmp_path / "v", "--model_name", "mynet:build_untapped",
                              "--kd_method", "feature"))


def test_user_checkpoint_rebuilt_by_test_predict_export(synthetic_root, user_dir, tmp_path):
    """The checkpoint names mynet:build; the three scripts rebuild it, each in its own process in the user's folder."""
    save = tmp_path / "w"
    run_cli([os.path.join(ROOT, "train.py"), "--model_name", "mynet:build", "--root_dir", synthetic_root, *SMALL,
             "--save_dir", str(save)], user_dir)
    best = str(save / "regular_best.pth")
    proc = run_cli([os.path.join(ROOT, "test.py"), "--weights", best, "--root_dir", synthetic_root, "--img_size",
                    "32", "--num_workers", "0", "--no_progress", "--num_vis", "0", "--results_csv",
                    str(tmp_path / "r.csv")], user_dir)
    assert "mynet:build" in proc.stdout
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    run_cli([os.path.join(ROOT, "predict.py"), str(tmp_path / "a.png"), "--weights", best, "--out",
             str(tmp_path / "pred"), "--no_progress"], user_dir)
    assert (tmp_path / "pred" / "masks" / "a.png").is_file()
    proc = run_cli([os.path.join(ROOT, "export.py"), "--weights", best, "--format", "torchscript", "--img_size",
                    "32", "--out", str(tmp_path / "net.pt"), "--num_inputs", "1", "--runs", "1"], user_dir)
    assert "parity: OK" in proc.stdout
    other = run_cli([os.path.join(ROOT, "test.py"), "--weights", best, "--root_dir", synthetic_root], tmp_path,
                    check=False)  # outside the user's folder the module is not found: one message
    assert other.returncode == 2 and "put mynet.py in the working folder or on PYTHONPATH" in other.stderr


def test_torchvision_student_trains_with_response_kd(synthetic_root, tmp_path, monkeypatch):
    """--model_name lraspp_mobilenet_v3_large, distilled from a light teacher with response KD and CWD (its stride-8
    classifier output tapped)."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(model.build_model("light", 21).state_dict(), tmp_path / "teacher.pth")
    train_kd.main(kd_args(synthetic_root, tmp_path / "w", "--model_name", "lraspp_mobilenet_v3_large",
                          "--kd_method", "response,cwd"))
    log = json.loads((tmp_path / "w" / "response_cwd_log.jsonl").read_text())
    assert log["train_kd"] > 0 and log["train_cwd"] > 0
    net, meta = model.load_trained(str(tmp_path / "w" / "response_cwd_best.pth"))
    assert meta["model_name"] == "lraspp_mobilenet_v3_large" and isinstance(net, model.HookedSegNet)


def test_torchvision_teacher_loads_its_voc_file_by_name(tmp_path, monkeypatch):
    """--teacher_arch lraspp_mobilenet_v3_large finds torchvision's VOC file in the hub cache (its keys as
    torchvision writes them, aux head none) and answers every output the methods ask for."""
    from teacher import hub_weights_path, load_teacher
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = hub_weights_path("lraspp_mobilenet_v3_large")
    os.makedirs(os.path.dirname(path))
    torch.manual_seed(1)
    reference = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).eval()
    torch.save(reference.state_dict(), path)
    teacher, source = load_teacher("lraspp_mobilenet_v3_large", 21, save_dir=str(tmp_path / "none"))
    assert source == path and teacher.feature_channels() == (24, 40, 960)
    x = torch.randn(1, 3, 64, 64)
    got = teacher(x, needs=("logits", "logits8", "features"))
    logits, logits8, feats = got["logits"], got["logits8"], got["features"]
    torch.testing.assert_close(logits, reference(x)["out"])
    assert logits8.shape == (1, 21, 8, 8) and [f.shape[1] for f in feats] == [24, 40, 960]


def test_pretrained_backbone_offline_is_one_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for name in ("light", "lraspp_mobilenet_v3_large"):
        with pytest.raises(model.ModelError, match=rf"--pretrained_backbone: the ImageNet weights for {name} could "
                                                   "not be fetched .*Run once with internet"):
            model.build_model(name, 5, pretrained_backbone=True)


def test_model_summary_of_any_name(in_user_dir, capsys):
    for name in ("mynet:build", "lraspp_mobilenet_v3_large"):
        model.main(model.get_args_parser().parse_args(["--m", name, "--no_table", "--img_size", "64"]))
        out = capsys.readouterr().out
        want = sum(p.numel() for p in model.build_model(name, 21).parameters())
        assert f"model: {name}" in out and f"total parameters: {want:,}" in out


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    """The README's 'Python face' block, run as written: one optimizer step of a loop of the reader's own."""
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"<!-- python-face -->\n```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the documented snippet is the test
    student, parts = scope["student"], scope["parts"]
    assert {"loss", "ce", "kd", "cwd"} <= set(parts) and torch.isfinite(parts["loss"])
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
