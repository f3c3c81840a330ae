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
    code = ("import fast, model, teacher, torch; "
            "t = teacher.FrozenTeacher(model.TappedSegNet('fcn_resnet50', 5).eval()); "
            "print(sum(isinstance(m, fast.WinogradConv2d) for m in t.modules()), fast.tune_cpu_allocator(), "
            "fast.adam_kwargs([torch.zeros(1)]).get('fused', False))")

    def counts(disable):
        env = dict(os.environ, SEGKD_DISABLE=disable)
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=True).stdout.split()
    assert counts("") == ["10", "True", "True"]
    assert counts("winograd,cpu_allocator,fused_adam") == ["0", "False", "False"]
    bad = subprocess.run([sys.executable, "-c", "import fast"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, SEGKD_DISABLE="centre_taps"))  # a removed trick is unknown now
    assert bad.returncode != 0 and "unknown trick" in bad.stderr


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
    """The frozen teacher (Winograd on its wide 3x3 convs) against the plain network: same logits and
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
        ref = plain(x, needs={"logits", "features"})
        ref_logits, ref_feats = ref["logits"], ref["features"]
    logits = teacher(x)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-3, atol=1e-4 * ref_logits.abs().max().item())
    for a, b in zip(teacher(x, needs={"features"})["features"], ref_feats, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * b.abs().max().item())


def test_winograd_conv_recomputes_its_transform_when_weights_are_loaded():
    from fast import WinogradConv2d

    torch.manual_seed(0)
    a, b = torch.nn.Conv2d(256, 256, 3, padding=2, dilation=2), torch.nn.Conv2d(256, 256, 3, padding=2, dilation=2)
    fast = WinogradConv2d(a)
    fast.load_state_dict(b.state_dict())
    x = torch.randn(1, 256, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), b(x), rtol=1e-4, atol=1e-4)


def test_winograd_leaves_small_maps_to_torch():
    """A dilation wider than a quarter of the map runs torch's conv, bit for bit: the light teacher's ASPP convs at
    dilation 6-18 on a 3x4 map (CamVid at 90x120) would otherwise multiply mostly padding."""
    from fast import WinogradConv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=4, dilation=4)
    fast = WinogradConv2d(conv)
    x = torch.randn(2, 256, 12, 12)  # 3x3 per phase: below one tile
    with torch.no_grad():
        assert torch.equal(fast(x), conv(x))
    plain = build_model("light", 11).eval()
    light = FrozenTeacher(build_model("light", 11).eval())
    light.net.load_state_dict(plain.state_dict())
    assert sum(isinstance(m, WinogradConv2d) for m in light.modules()) == 5  # 3 ASPP + the decoder's two 3x3 convs
    x = torch.randn(1, 3, 90, 120)
    with torch.no_grad():
        assert torch.equal(light.net.aspp(plain.stage3(plain.stage2(plain.stage1(x)))),
                           plain.aspp(plain.stage3(plain.stage2(plain.stage1(x)))))




@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_fused_adam_follows_torch_for_loop_adam(optimizer):
    """engine.build_optimizer's fused CPU update against torch's for-loop Adam/AdamW: 5 steps from the same weights
    with the same gradients give the same weights, float rounding apart. (Gradients are given, not computed: through
    a network, Adam's step of size lr on near-zero gradients turns any rounding into a different trajectory.)"""
    from types import SimpleNamespace

    import engine

    args = SimpleNamespace(optimizer=optimizer, learning_rate=1e-2, weight_decay=1e-1)
    torch.manual_seed(0)
    nets = [build_model("light", num_classes=5) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    fused = engine.build_optimizer(args, nets[0].parameters())
    assert fused.defaults["fused"] is True
    cls = torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW
    plain = cls(nets[1].parameters(), lr=1e-2, weight_decay=1e-1, foreach=False, fused=False)
    for _ in range(5):
        grads = [torch.randn_like(p) * 10 ** torch.randint(-4, 1, ()).item() for p in nets[0].parameters()]
        for net, opt in zip(nets, (fused, plain)):
            for p, g in zip(net.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert max((a - s).abs().max().item() for a, s in zip(nets[0].parameters(), start)) > 1e-2  # it moved
