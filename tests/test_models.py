import pytest
import torch

from model import MODELS, build_model, count_parameters
from teacher import FrozenTeacher, TappedSegNet, TeacherError, hub_weights_path, load_teacher


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


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_shapes_and_feature_taps(name):
    model = build_model(name, 5).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 5, 48, 64)
    assert [f.shape[1] for f in feats][: len(model.feature_channels)] == list(model.feature_channels)[: len(feats)]
    total, trainable = count_parameters(model)
    assert total == trainable > 0


def test_teacher_feature_path_stops_early_with_same_features():
    torch.manual_seed(0)
    net = TappedSegNet("fcn_resnet50", 21).eval()
    teacher = FrozenTeacher(net)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, full = net(x, return_features=True)
    early = teacher(x, need="features")
    assert len(early) == 3
    for a, b in zip(early, full[:3]):
        torch.testing.assert_close(a, b)


def test_teacher_loads_torchvision_weights_from_hub_cache(torch_home, monkeypatch, tmp_path):
    """A file with torchvision's name and keys (aux head included) loads, and gives torchvision's own output."""
    from torchvision.models.segmentation import fcn_resnet50

    monkeypatch.setenv("TORCH_HOME", torch_home)
    monkeypatch.setenv("SEGKD_OFFLINE", "1")
    teacher, source = load_teacher("fcn_resnet50", 21, save_dir=str(tmp_path))
    assert source == hub_weights_path("fcn_resnet50")
    ref = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True).eval()
    ref.load_state_dict(torch.load(source, weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # BatchNorm is folded into the convs: equal up to float rounding
        torch.testing.assert_close(teacher(x), ref(x)["out"], rtol=1e-4, atol=1e-4)


def test_teacher_weight_order_and_offline_error(torch_home, monkeypatch, tmp_path):
    monkeypatch.setenv("SEGKD_OFFLINE", "1")
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
    assert hub_weights_path("fcn_resnet50") in msg and "fcn_resnet50_coco-1167a1af.pth" in msg


def test_teacher_weights_of_wrong_arch_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGKD_OFFLINE", "1")
    path = tmp_path / "w.pth"
    torch.save(TappedSegNet("fcn_resnet50", 5).state_dict(), path)
    with pytest.raises(TeacherError, match="do not fit"):
        load_teacher("fcn_resnet50", 21, teacher_weights=str(path))


@pytest.mark.parametrize("name", ["light", "teacher"])
def test_folding_batchnorm_keeps_the_logits(name):
    import copy

    from utils import fuse_conv_bn

    torch.manual_seed(0)
    model = build_model(name, 7)
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        model(torch.randn(4, 3, 64, 64))
    model.eval()
    fused = fuse_conv_bn(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dilation,size,bias", [(1, (13, 9), True), (2, (16, 16), False), (4, (11, 21), True),
                                                (6, (8, 8), False)])
def test_winograd_convolution_equals_direct_convolution(dilation, size, bias):
    """F(4x4, 3x3) Winograd against torch's direct convolution in float64 (the independent reference): borders,
    sizes that are no multiple of 4 or of the dilation, dilation wider than the image."""
    from teacher.winograd import filter_transform, winograd_conv2d

    torch.manual_seed(0)
    x, w = torch.randn(2, 16, *size), torch.randn(24, 16, 3, 3) / 12
    b = torch.randn(24) if bias else None
    ref = torch.nn.functional.conv2d(x.double(), w.double(), None if b is None else b.double(),
                                     padding=dilation, dilation=dilation)
    got = winograd_conv2d(x, filter_transform(w), b, dilation)
    assert got.shape == ref.shape
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=2e-5 * ref.abs().max().item())
    wrong = winograd_conv2d(x, filter_transform(w.flip(-1)), b, dilation)  # the test can fail
    assert (wrong.double() - ref).abs().max() > 1e-2


def test_frozen_teacher_with_winograd_keeps_the_logits():
    """The frozen teacher (BN folded, Winograd on its wide 3x3 convs) against the plain network: same logits and
    features to float tolerance, same state dict keys."""
    import copy

    from teacher.winograd import WinogradConv2d

    torch.manual_seed(0)
    net = TappedSegNet("fcn_resnet50", 21).eval()
    plain = copy.deepcopy(net)
    teacher = FrozenTeacher(net)
    swapped = [m for m in teacher.modules() if isinstance(m, WinogradConv2d)]
    assert len(swapped) == 3 + 6 + 1  # layer4's and layer3's 3x3 convs and the FCN head; layer1/2 stay direct
    assert set(teacher.net.state_dict()) == set(FrozenTeacher(copy.deepcopy(plain), winograd=False).net.state_dict())
    x = torch.randn(2, 3, 64, 72).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref_logits, ref_feats = plain(x, return_features=True)
    logits = teacher(x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-3, atol=1e-4 * ref_logits.abs().max().item())
    for a, b in zip(teacher(x, need="features"), ref_feats[:3]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("size", [(5, 7), (6, 6), (7, 9)])
def test_centre_tap_convolution_is_exact(size):
    """A dilated conv whose off-centre taps read only padding: same output and gradients as torch's conv when the
    map is no larger than the dilation (the fast path), and torch's own result when it is larger."""
    from model import CenterTapConv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 4, 3, padding=6, dilation=6)
    fast = CenterTapConv2d(8, 4, 3, padding=6, dilation=6)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, *size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    a, b = conv(x), fast(x2)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(a)
    a.backward(g), b.backward(g)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-6)
    off = torch.ones(3, 3, dtype=torch.bool)
    off[1, 1] = False
    if max(size) <= 6:  # fast path: the off-centre weights get exactly zero gradient, as in torch's conv
        assert fast.weight.grad[:, :, off].abs().max() == 0 == conv.weight.grad[:, :, off].abs().max()
    else:  # larger than the dilation: some off-centre taps read real pixels, and the conv must have used them
        assert conv.weight.grad[:, :, off].abs().max() > 0


def test_student_state_dict_and_init_unchanged_by_centre_taps():
    """The student's ASPP convs are CenterTapConv2d, with torchvision's parameter names and initial values."""
    from torchvision.models import mobilenet_v2
    from torchvision.models.segmentation.deeplabv3 import ASPP

    from model import CenterTapConv2d

    torch.manual_seed(0)
    student = build_model("light", 21)
    swapped = [m for m in student.aspp.modules() if isinstance(m, CenterTapConv2d)]
    assert len(swapped) == 3
    torch.manual_seed(0)
    mobilenet_v2().features  # the same RNG draws as the student's constructor before its ASPP
    plain = ASPP(1280, [6, 12, 18], 256)
    for (k1, v1), (k2, v2) in zip(student.aspp.state_dict().items(), plain.state_dict().items()):
        assert k1 == k2
        torch.testing.assert_close(v1, v2)


def test_winograd_conv_recomputes_its_transform_when_weights_are_loaded():
    from teacher.winograd import WinogradConv2d

    torch.manual_seed(0)
    a, b = torch.nn.Conv2d(256, 256, 3, padding=2, dilation=2), torch.nn.Conv2d(256, 256, 3, padding=2, dilation=2)
    fast = WinogradConv2d(a)
    fast.load_state_dict(b.state_dict())
    x = torch.randn(1, 256, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), b(x), rtol=1e-4, atol=1e-4)


def test_winograd_leaves_small_maps_and_centre_taps_to_torch():
    """A dilation wider than a quarter of the map runs torch's conv (bit for bit), and a light teacher keeps its
    ASPP's CenterTapConv2d (Winograd on a 3x4 map at dilation 18 would multiply mostly padding)."""
    from model import CenterTapConv2d
    from teacher.winograd import WinogradConv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=4, dilation=4)
    fast = WinogradConv2d(conv)
    x = torch.randn(2, 256, 12, 12)  # 3x3 per phase: below one tile
    with torch.no_grad():
        assert torch.equal(fast(x), conv(x))
    light = FrozenTeacher(build_model("light", 11).eval())
    assert sum(isinstance(m, CenterTapConv2d) for m in light.modules()) == 3
    assert sum(isinstance(m, WinogradConv2d) for m in light.modules()) == 2  # the decoder's two 3x3 convs
