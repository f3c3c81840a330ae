"""fast.py's speed tricks, each against plain torch (float64 where rounding matters), and each one's switch."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from model import TappedSegNet, build_model
from teacher import FrozenTeacher


def test_every_trick_can_be_switched_off():
    """SEGKD_DISABLE (bench.py --disable) leaves plain torch modules behind: what bench.py's ablation times."""
    code = ("import fast, model, teacher, torch; s = model.build_model('light', 5); "
            "t = teacher.FrozenTeacher(model.TappedSegNet('fcn_resnet50', 5).eval()); "
            "print(sum(isinstance(m, fast.CenterTapConv2d) for m in s.modules()), "
            "sum(isinstance(m, fast.WinogradConv2d) for m in t.modules()), "
            "sum(isinstance(m, torch.nn.BatchNorm2d) for m in t.modules()), fast.tune_cpu_allocator())")
    def counts(disable):
        env = dict(os.environ, SEGKD_DISABLE=disable)
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True).stdout.split()
    on = counts("")
    assert on[:3] == ["3", "10", "0"]
    off = counts("centre_taps,winograd,fold_bn,cpu_allocator")
    assert off[0] == "0" and off[1] == "0" and int(off[2]) > 0 and off[3] == "False"
    bad = subprocess.run([sys.executable, "-c", "import fast"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, SEGKD_DISABLE="nonsense"))
    assert bad.returncode != 0 and "unknown trick" in bad.stderr


@pytest.mark.parametrize("name", ["light", "teacher"])
def test_folding_batchnorm_keeps_the_logits(name):
    import copy

    from fast import fuse_conv_bn

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
    from fast import filter_transform, winograd_conv2d

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

    from fast import WinogradConv2d

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
    from fast import CenterTapConv2d

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

    from fast import CenterTapConv2d

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
    from fast import WinogradConv2d

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
    from fast import CenterTapConv2d
    from fast import WinogradConv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=4, dilation=4)
    fast = WinogradConv2d(conv)
    x = torch.randn(2, 256, 12, 12)  # 3x3 per phase: below one tile
    with torch.no_grad():
        assert torch.equal(fast(x), conv(x))
    light = FrozenTeacher(build_model("light", 11).eval())
    assert sum(isinstance(m, CenterTapConv2d) for m in light.modules()) == 3
    assert sum(isinstance(m, WinogradConv2d) for m in light.modules()) == 2  # the decoder's two 3x3 convs
