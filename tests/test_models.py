import inspect
import os

import pytest
import torch

from model import MODELS, LightSegNet, TappedSegNet, build_model, count_parameters, feature_channels
from teacher import FrozenTeacher, TeacherError, hub_weights_path, load_teacher


def test_classify_then_upsample_equals_original_order():
    """The optimised head (1x1 conv at stride 8, then upsample) gives the original's logits (upsample, then conv)."""
    torch.manual_seed(0)
    fast = build_model("light", 21).eval()
    ref = build_model("light", 21, upsample_first=True).eval()
    ref.load_state_dict(fast.state_dict())
    fast_cl = build_model("light", 21).eval().to(memory_format=torch.channels_last)
    fast_cl.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        a, b = ref(x), fast(x)
        c = fast_cl(x.contiguous(memory_format=torch.channels_last))
    assert a.shape == (2, 21, 64, 80)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-5)


# The widths each network's taps give, written out from the architectures (MobileNetV2 / V3-Large blocks, ResNet
# layer1..3), to check the forward probe against.
WIDTHS = {"light": (24, 32, 1280), "best": (256, 512, 1024), "teacher": (256, 512, 1024),
          "fcn_resnet50": (256, 512, 1024), "fcn_resnet101": (256, 512, 1024),
          "deeplabv3_resnet50": (256, 512, 1024), "deeplabv3_resnet101": (256, 512, 1024),
          "lraspp_mobilenet_v3_large": (24, 40, 960), "deeplabv3_mobilenet_v3_large": (24, 40, 960)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_shapes_and_feature_taps(name):
    model = build_model(name, 5).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        plain = model(x)
        got = model(x, needs={"logits", "logits8", "features"})
        logits, feats, logits8 = got["logits"], got["features"], got["logits8"]
    assert logits.shape == (2, 5, 48, 64) and torch.equal(logits, plain)
    assert tuple(f.shape[1] for f in feats) == WIDTHS[name] == feature_channels(model)
    assert logits8.shape[:2] == (2, 5) and logits8.shape[-1] < 64
    total, trainable = count_parameters(model)
    assert total == trainable > 0


@pytest.mark.parametrize("name", ["light", "fcn_resnet50", "lraspp_mobilenet_v3_large"])
def test_forward_answers_exactly_the_names_asked(name):
    """forward(x) is the logits; forward(x, needs=S) a dict of the names in S, no more (model.py's docstring)."""
    model = build_model(name, 5).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert isinstance(model(x), torch.Tensor)
        for needs in ({"logits"}, {"features"}, {"logits8"}, {"logits8", "features"}, set()):
            assert set(model(x, needs=needs)) == needs
        with pytest.raises(ValueError, match="attention"):
            model(x, needs={"attention"})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_refuses_a_misspelt_keyword(name):
    """A keyword a builder does not take fails, named, instead of vanishing."""
    with pytest.raises(TypeError, match=rf"{name}\(\): unknown argument\(s\) pretrianed_backbone; it takes "
                                        r"num_classes, pretrained_backbone"):
        build_model(name, 5, pretrianed_backbone=True)


def test_teacher_arch_reaches_the_teacher_builder_alone():
    """Builders take only what they use: teacher_arch is a parameter of `teacher` alone, and build_model hands the
    scripts' --teacher_arch to that builder only, whatever name it builds."""
    takes = {name: inspect.signature(builder).parameters for name, builder in MODELS.items()}
    assert [name for name, params in takes.items() if "teacher_arch" in params] == ["teacher"]
    assert isinstance(build_model("teacher", 5, teacher_arch="light"), LightSegNet)
    assert isinstance(build_model("light", 5, teacher_arch="fcn_resnet50"), LightSegNet)
    with pytest.raises(TypeError, match="teacher_arch"):
        MODELS["light"](5, teacher_arch="fcn_resnet50")


def test_teacher_feature_path_stops_early_with_same_features():
    """The frozen teacher's feature path gives torchvision's own layer1..3 outputs (read by hooks on torchvision's
    network) and never runs layer4 or the head."""
    from torchvision.models.segmentation import fcn_resnet50

    torch.manual_seed(0)
    ref = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=False).eval()
    net = TappedSegNet("fcn_resnet50", 21).eval()
    net.load_state_dict(ref.state_dict())
    teacher = FrozenTeacher(net)
    want = {}
    for name in ("layer1", "layer2", "layer3"):
        getattr(ref.backbone, name).register_forward_hook(lambda m, i, o, n=name: want.__setitem__(n, o))
    ran = []
    teacher.net.backbone.layer4.register_forward_hook(lambda *a: ran.append("layer4"))
    teacher.net.classifier.register_forward_hook(lambda *a: ran.append("head"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref(x)
    early = teacher(x, needs={"features"})
    assert set(early) == {"features"} and len(early["features"]) == 3 and ran == []
    early = early["features"]
    for a, name in zip(early, ("layer1", "layer2", "layer3")):
        torch.testing.assert_close(a, want[name], rtol=1e-4, atol=1e-4 * want[name].abs().max().item())
    teacher(x)  # the logits path does run them: the hooks can see it
    assert ran == ["layer4", "head"]


def test_teacher_loads_torchvision_weights_from_hub_cache(torch_home, monkeypatch, tmp_path):
    """A file with torchvision's name and keys (aux head included) loads, and gives torchvision's own output."""
    from torchvision.models.segmentation import fcn_resnet50

    monkeypatch.setenv("TORCH_HOME", torch_home)
    teacher, source = load_teacher("fcn_resnet50", 21, save_dir=str(tmp_path))
    assert source == hub_weights_path("fcn_resnet50")
    ref = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()
    ref.load_state_dict(torch.load(source, weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the frozen teacher's wide 3x3 convs run as Winograd (fast.py): equal up to float rounding
        torch.testing.assert_close(teacher(x), ref(x)["out"], rtol=1e-4, atol=1e-4)


def test_teacher_weight_order_and_offline_error(torch_home, monkeypatch, tmp_path):
    # 1. --teacher_weights wins over everything.
    own = TappedSegNet("fcn_resnet50", 21)
    path = tmp_path / "mine.pth"
    torch.save({"model": own.state_dict(), "model_name": "teacher"}, path)
    monkeypatch.setenv("TORCH_HOME", torch_home)
    _, source = load_teacher("fcn_resnet50", 21, teacher_weights=str(path), save_dir=str(tmp_path))
    assert source == str(path)
    # 2. a teacher trained by this repo in --save_dir beats the hub cache.
    torch.save({"model": own.state_dict()}, tmp_path / "teacher_best.pth")
    _, source = load_teacher("fcn_resnet50", 21, save_dir=str(tmp_path))
    assert source.endswith("teacher_best.pth")
    # 3. nothing anywhere, offline: one message naming the three ways out, the cache path and the file name.
    empty = tmp_path / "empty_home"
    monkeypatch.setenv("TORCH_HOME", str(empty))
    with pytest.raises(TeacherError) as err:
        load_teacher("fcn_resnet50", 21, save_dir=str(tmp_path / "nothing"))
    msg = str(err.value)
    assert "--teacher_weights" in msg and "--model_name teacher" in msg
    path = hub_weights_path("fcn_resnet50")
    assert path.startswith(str(empty)) and path in msg and f"weights file {os.path.basename(path)} at" in msg


def test_teacher_weights_of_wrong_arch_fail_clearly(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save(TappedSegNet("fcn_resnet50", 5).state_dict(), path)
    with pytest.raises(TeacherError, match="do not fit"):
        load_teacher("fcn_resnet50", 21, teacher_weights=str(path))
