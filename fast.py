"""Every speed trick of this repo, in one place. Each computes the same function as plain torch up to float rounding
(tests/test_fast.py checks each against plain torch), and each stays only where bench.py showed that it pays at
least 10% of its workload's step on the development machine (README, "Speed"). `python bench.py --disable NAME`
times a workload without one of them.

  NAME          what                                                        where it is applied
  winograd      Winograd F(4x4, 3x3) for wide frozen 3x3 convs on the CPU   the frozen teacher (teacher/)
  cpu_allocator glibc keeps freed memory instead of unmapping it per tensor engine.py at start-up (CPU)
  fused_adam    Adam/AdamW's update as one fused kernel per tensor          engine.build_optimizer (CPU)

Measured on the development machine (2 cores, AMD EPYC without AVX-512, 256x256, batch 8), the step without the
trick against with it: winograd 4.85 vs 3.95-4.14 s per response-KD step (15-19% of it); cpu_allocator 4.91 vs
3.95-4.14 s per response step, 1.48 vs 1.35-1.41 s per scratch step; fused_adam (another 2-core AMD EPYC, with
AVX-512, at the demo's 64x64) 0.160 vs 0.140 s per scratch step at 2 threads, 0.240 vs 0.189 s at 1 thread. Two
earlier tricks were measured the same way and removed for paying less than 10%: the student's centre-tap ASPP convs
(scratch 1.39 s without vs 1.35-1.41 s with; inference faster without) and BatchNorm folding (response 4.14 vs
3.95-4.14 s, feature and inference no faster with it).
Device settings that are torch's own switches (cudnn.benchmark, channels_last, autocast) are set by engine.py.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

TRICKS = ("winograd", "cpu_allocator", "fused_adam")
# bench.py's --disable: a comma list in this variable switches tricks off in the process that reads it
DISABLED = {t for t in os.environ.get("SEGKD_DISABLE", "").split(",") if t}
if DISABLED - set(TRICKS):
    raise ValueError(f"SEGKD_DISABLE={os.environ['SEGKD_DISABLE']}: unknown trick(s) {sorted(DISABLED - set(TRICKS))}; "
                     f"choose from {', '.join(TRICKS)}")


def enabled(name):
    return name not in DISABLED


# --------------------------------------------------------------------------- winograd
# Winograd F(4x4, 3x3) convolution for the frozen teacher's wide 3x3 convolutions on the CPU.
# 
# The same convolution, computed with 4x fewer multiplications (Lavin & Gray, "Fast Algorithms for Convolutional
# Neural Networks", CVPR 2016): each 4x4 block of outputs is A^T [(G g G^T) * (B^T d B)] A for a 6x6 input tile d
# and the 3x3 filter g. The 36 products per tile become 36 matrix products over channels, so the bulk of the work
# is one batched GEMM. Dilation is handled by splitting the input into its dilation x dilation phases
# (space-to-batch, as DeepLab's first atrous convolutions did): a dilated convolution is an ordinary one on each
# phase. The results equal torch's convolution up to float rounding (relative error ~1e-5 in float32, tested).
# 
# Where it runs: maps whose dilation phases hold at least one 4x4 tile (measured on 2 cores: 1.3x-3.2x faster than
# the direct conv from 8x8 maps up for 256+ channels; about even at 12x15 with 256); elsewhere torch's conv.
# Why only the teacher: it is frozen (the filter transform G g G^T is computed once) and needs no backward, and
# its fcn_resnet50 head (3x3, 2048 -> 512) alone is a quarter of its FLOPs. Measured on a 2-core AVX-512 CPU at
# 256x256, batch 8: head 1.9x, layer4's 3x3 (512, dilation 4) 1.4x, layer3's (256, dilation 2) 1.4x faster than
# oneDNN's direct convolution; narrower layers (64 and 128 channels) were slower, so they keep torch's kernel, and
# so does every other device (cuDNN picks Winograd itself when it pays).
_BT = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
_G = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
      [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
_AT = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
MIN_CHANNEL_PRODUCT = 256 * 256  # in_channels * out_channels below which oneDNN's direct kernel was faster


def filter_transform(weight):
    """(K, C, 3, 3) -> (36, C, K): G g G^T for every filter, computed in float64."""
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    u = torch.einsum("ia,kcab,jb->ijck", g, weight.detach().double(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def winograd_conv2d(x, u, bias=None, dilation=1):
    """conv2d(x, weight, bias, padding=dilation, dilation=dilation) for a 3x3 weight, u = filter_transform(weight).

    x: (N, C, H, W) in any memory format. Returns (N, K, H, W) in channels_last memory format."""
    n, c, h, w = x.shape
    k, d = u.shape[2], dilation
    # Per phase the output is ceil(h/d) x ceil(w/d), in 4x4 tiles; zero padding covers the border and the rounding.
    th, tw = -(-(-(-h // d)) // 4), -(-(-(-w // d)) // 4)
    hp, wp = d * (4 * th + 2), d * (4 * tw + 2)
    xp = x.new_zeros(n, hp, wp, c)  # NHWC, so that the channels are each tile point's contiguous GEMM row
    xp[:, d:d + h, d:d + w] = x.permute(0, 2, 3, 1)
    s_n, s_h, s_w, _ = xp.stride()
    # Tile point (s, t) of tile (ti, tj) in phase (a, b) reads padded row a + d*(4*ti + s), column b + d*(4*tj + t).
    tiles = xp.as_strided((6, 6, n, d, th, d, tw, c),
                          (d * s_h, d * s_w, s_n, s_h, 4 * d * s_h, s_w, 4 * d * s_w, 1))
    p = n * d * th * d * tw
    bt = torch.tensor(_BT, dtype=x.dtype, device=x.device)
    at = torch.tensor(_AT, dtype=x.dtype, device=x.device)
    v = (torch.kron(bt, bt) @ tiles.reshape(36, p * c)).view(36, p, c)  # B^T d B for every tile and channel
    m = torch.bmm(v, u)  # (36, tiles, K): the 36 elementwise products, summed over channels
    y = (torch.kron(at, at) @ m.view(36, p * k)).view(4, 4, n, d, th, d, tw, k)  # A^T m A
    # Output row a + d*(4*ti + r): order the axes (n, ti, r, a, tj, q, b, k), then crop the rounding.
    y = y.permute(2, 4, 0, 3, 6, 1, 5, 7).reshape(n, 4 * th * d, 4 * tw * d, k)[:, :h, :w]
    if bias is not None:
        y = y + bias
    return y.permute(0, 3, 1, 2)


def qualifies(conv):
    """A 3x3, stride-1, ungrouped, 'same'-padded convolution wide enough for Winograd to pay on the CPU."""
    # type() is, not isinstance: a subclass of nn.Conv2d may have a forward of its own, which a swap would drop
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros" and conv.dilation[0] == conv.dilation[1]
            and conv.padding == conv.dilation and conv.in_channels * conv.out_channels >= MIN_CHANNEL_PRODUCT)


class WinogradConv2d(nn.Module):
    """A frozen 3x3 convolution: Winograd on the CPU in float32, torch's convolution elsewhere.

    Keeps the conv's weight and bias under their names (state dicts are unchanged) and its transform as a buffer.
    """

    def __init__(self, conv):
        super().__init__()
        assert qualifies(conv), conv
        self.weight, self.bias, self.dilation = conv.weight, conv.bias, conv.dilation[0]
        self.register_buffer("u", filter_transform(conv.weight), persistent=False)

    def _load_from_state_dict(self, *args, **kwargs):  # new weights: a new transform (never a stale one)
        super()._load_from_state_dict(*args, **kwargs)
        self.u = filter_transform(self.weight)

    def forward(self, x):
        d = self.dilation
        # Each dilation phase must hold a 4x4 tile or more: on smaller maps the padded tiles are mostly zeros (a
        # dilation-18 conv on a 3x4 map would multiply 300x more numbers than the direct conv).
        if (x.device.type == "cpu" and x.dtype == self.u.dtype == torch.float32
                and -(-x.shape[-2] // d) >= 4 and -(-x.shape[-1] // d) >= 4):
            return winograd_conv2d(x, self.u, self.bias, d)
        return F.conv2d(x, self.weight, self.bias, padding=d, dilation=d)


def use_winograd(model):
    """Swap every qualifying nn.Conv2d of a frozen model for a WinogradConv2d (in place; returns the model)."""
    if not enabled("winograd"):
        return model
    for m in list(model.modules()):
        for name, child in m._modules.items():
            if qualifies(child):
                m._modules[name] = WinogradConv2d(child)
    return model


# --------------------------------------------------------------------------- cpu_allocator
def tune_cpu_allocator():
    """glibc only: keep freed memory in the heap instead of returning each large tensor's pages to the OS.

    By default glibc serves every allocation above 32 MB with a fresh mmap and unmaps it on free, so a CPU
    training step pays page faults (zeroed pages) for each of its large activations, every step. Measured on 2
    cores, one response-KD epoch at 256x256: 34.5 s -> 27.9 s of wall time (system time 12.6 s -> 2.8 s), for
    ~15% more peak RSS. Does nothing elsewhere (macOS, Windows, musl)."""
    import ctypes
    import platform

    if not enabled("cpu_allocator"):
        return False

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def setup_backends(device):
    """The per-device speed settings, once at start-up: cuDNN autotuning on CUDA, the allocator setting elsewhere."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        tune_cpu_allocator()


# --------------------------------------------------------------------------- fused_adam
def adam_kwargs(params):
    """{"fused": True} for torch's Adam/AdamW when every parameter is a float32 CPU tensor, else {}.

    torch's default Adam on the CPU is its for-loop implementation: a dozen small ops per parameter tensor per
    step (the light student has 158), which on a 64x64 step costs as much as a fifth of the step. fused=True does
    the same update (the same formulas, bias correction and decoupled weight decay) in one kernel per tensor.
    Measured on 2 cores with AVX-512, 64x64, batch 8 (docs/speed.md): the scratch step 0.160 -> 0.140 s at 2
    threads (12% less), 0.240 -> 0.189 s at 1 thread (22% less); feature KD 11% / 25% less. On CUDA torch already
    picks its multi-tensor path, so nothing is changed there. The result equals the for-loop update up to float rounding
    (tests/test_fast.py), not bit for bit: switching it changes a run's draw, as a thread count does."""
    params = list(params)
    if not enabled("fused_adam") or not params:
        return {}
    if all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params):
        return {"fused": True}
    return {}
