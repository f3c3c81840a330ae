"""The original project's student, losses and training epoch, re-expressed independently of model.py and train_kd.py.

This file is the yardstick, not the repo's code path: the tests check the repo's student, checkpoint mapping and
default losses against it, and bench.py's reference path trains with it. It keeps the original's module names
(so that its state dicts are the original's), its order of operations (upsample the decoder output, then classify;
every ASPP branch run in full), its loss formulas (nn.KLDivLoss(reduction="batchmean") on 4-D logits times T^2; the
three feature-pair terms added) and its per-step habits (NCHW float32, .item() every step, the whole torchvision
teacher under no_grad read through hooks).

    python original.py feature data/synthetic 64 8 teacher.pth cpu OUT   # one original-style epoch (bench.py)
"""
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import models
from torchvision import transforms as T

STUDENT_CHANNELS = (24, 32, 1280)  # MobileNetV2 at stride 4, 8 and the end of the trunk
TEACHER_CHANNELS = (256, 512, 1024)  # ResNet50 layer1..layer3
TAPS = ("layer1", "layer2", "layer3")
ALPHA, TEMPERATURE = 0.5, 2.0  # the original train_kd.py's defaults


def conv_bn_relu(cin, cout, k=1, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=dilation if k == 3 else 0, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ASPP(nn.Module):
    """Five branches (1x1, three dilated 3x3, image pooling) concatenated and fused by a 1x1 conv-BN-ReLU."""

    def __init__(self, cin=1280, cout=256):
        super().__init__()
        self.atrous_block1 = conv_bn_relu(cin, cout)
        self.atrous_block6 = conv_bn_relu(cin, cout, 3, 6)
        self.atrous_block12 = conv_bn_relu(cin, cout, 3, 12)
        self.atrous_block18 = conv_bn_relu(cin, cout, 3, 18)
        self.global_pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(cin, cout))
        self.conv1 = conv_bn_relu(5 * cout, cout)

    def forward(self, x):
        pooled = F.interpolate(self.global_pooling(x), size=x.shape[2:], mode="bilinear", align_corners=False)
        branches = [self.atrous_block1(x), self.atrous_block6(x), self.atrous_block12(x), self.atrous_block18(x)]
        return self.conv1(torch.cat([*branches, pooled], dim=1))


class OriginalLight(nn.Module):
    """The original's LightweightResNet: the trunk registered whole (backbone) and as three slices, ASPP, a decoder
    with two dropouts, a 1x1 classifier applied after upsampling, and feature KD's alignment convs kept inside."""

    def __init__(self, num_classes=21):
        super().__init__()
        self.backbone = models.mobilenet_v2(weights=None).features
        self.low_level_features = self.backbone[:4]
        self.mid_level_features = self.backbone[4:7]
        self.high_level_features = self.backbone[7:]
        self.aspp = ASPP(1280, 256)
        self.decoder = nn.Sequential(
            nn.Conv2d(256 + 32, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Dropout(0.1))
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.align_layers = nn.ModuleList(nn.Conv2d(s, t, 1) for s, t in zip(STUDENT_CHANNELS, TEACHER_CHANNELS))

    def forward(self, x):
        f4 = self.low_level_features(x)
        f8 = self.mid_level_features(f4)
        f32 = self.high_level_features(f8)
        a = F.interpolate(self.aspp(f32), size=f8.shape[2:], mode="bilinear", align_corners=False)
        d = self.decoder(torch.cat([a, f8], dim=1))
        d = F.interpolate(d, size=x.shape[2:], mode="bilinear", align_corners=False)
        return self.classifier(d), [f4, f8, f32]


def response_kd(student_logits, teacher_logits, temperature):
    """nn.KLDivLoss(reduction="batchmean")(log_softmax(s/T), softmax(t/T)) * T^2 over (N, C, H, W) logits."""
    kl = nn.KLDivLoss(reduction="batchmean")
    return kl(F.log_softmax(student_logits / temperature, dim=1), F.softmax(teacher_logits / temperature, dim=1)) \
        * temperature ** 2


def feature_kd(student_feats, teacher_feats, align_layers):
    """sum over the three pairs of mean over pixels (1 - cos), each student map resized to its teacher map, then
    projected by its 1x1 alignment conv."""
    loss = 0.0
    for conv, s, t in zip(align_layers, student_feats, teacher_feats):
        s = F.interpolate(s, size=t.shape[2:], mode="bilinear", align_corners=False)
        loss = loss + (1 - F.cosine_similarity(conv(s), t, dim=1)).mean()
    return loss


# --------------------------------------------------------------------------- one training epoch, the original's way
class VOCSeg(Dataset):
    """PIL transforms on every read (the original train_kd.py's augmentation)."""

    def __init__(self, root, split, size, train):
        base = os.path.join(root, "VOCdevkit", "VOC2012")
        ids = open(f"{base}/ImageSets/Segmentation/{split}.txt").read().split()
        self.items = [(f"{base}/JPEGImages/{i}.jpg", f"{base}/SegmentationClass/{i}.png") for i in ids]
        colour = [T.ColorJitter(0.2, 0.2, 0.2, 0.1), T.RandomGrayscale(0.2), T.RandomApply([T.GaussianBlur(5)], p=0.3),
                  T.RandomAdjustSharpness(2, p=0.3), T.RandomAutocontrast(p=0.3)] if train else []
        self.image_tf = T.Compose([T.Resize((size, size)), *colour, T.ToTensor(),
                                   T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        self.mask_tf = T.Resize((size, size), interpolation=T.InterpolationMode.NEAREST)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, mask = Image.open(self.items[i][0]).convert("RGB"), Image.open(self.items[i][1])
        return self.image_tf(image), torch.as_tensor(np.array(self.mask_tf(mask)), dtype=torch.long)


def build(method, device, teacher_sd, student_sd=None):
    """method: scratch | response | feature. Returns (student, loss_fn(images, masks), optimizer).
    teacher_sd: a torchvision fcn_resnet50 state dict (aux head included); student_sd: an OriginalLight state dict."""
    student = OriginalLight()
    if student_sd is not None:
        student.load_state_dict(student_sd)
    student.to(device)
    feats = {}
    if method != "scratch":
        from torchvision.models.segmentation import fcn_resnet50

        teacher = fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
        teacher.load_state_dict(teacher_sd)
        teacher.to(device).eval()
        for n in TAPS:
            getattr(teacher.backbone, n).register_forward_hook(lambda m, i, o, n=n: feats.__setitem__(n, o))

    def loss_fn(images, masks):
        logits, student_feats = student(images)
        ce = F.cross_entropy(logits, masks, ignore_index=255)
        if method == "scratch":
            return ce
        with torch.no_grad():
            t_logits = teacher(images)["out"]  # all of it: layer4, the FCN head, the aux head, the upsampling
        if method == "response":
            kd = response_kd(logits, t_logits, TEMPERATURE)
        else:
            kd = feature_kd(student_feats, [feats[n] for n in TAPS], student.align_layers)
        return ALPHA * kd + (1 - ALPHA) * ce

    optimizer = torch.optim.Adam if method == "scratch" else torch.optim.AdamW  # original train.py / train_kd.py
    return student, loss_fn, optimizer(student.parameters(), lr=1e-3, weight_decay=1e-4)


def train_epoch(student, loss_fn, optimizer, loader, device):
    student.train()
    running, steps = 0.0, 0
    for steps, (images, masks) in enumerate(loader, 1):
        images, masks = images.to(device), masks.to(device)
        loss = loss_fn(images, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()  # a host sync every step
    return running / max(steps, 1)


def main(method, root, size, batch, weights, device, out):
    size, batch, device = int(size), int(batch), torch.device(device)
    kw = dict(batch_size=batch, num_workers=8, pin_memory=True)
    train_loader = DataLoader(VOCSeg(root, "train", size, True), shuffle=True, **kw)
    val_loader = DataLoader(VOCSeg(root, "val", size, False), shuffle=False, **kw)
    student, loss_fn, optimizer = build(method, device, torch.load(weights, map_location="cpu"))
    loss = train_epoch(student, loss_fn, optimizer, train_loader, device)
    student.eval()
    hist = np.zeros((21, 21))
    with torch.no_grad():
        for images, masks in val_loader:
            pred, m = student(images.to(device))[0].argmax(1).cpu().numpy(), masks.numpy()
            hist += np.bincount(21 * m[m < 21] + pred[m < 21], minlength=441).reshape(21, 21)
    with np.errstate(divide="ignore", invalid="ignore"):
        miou = np.nanmean(np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist)))
    torch.save(student.state_dict(), os.path.join(out, method + "_best.pth"))
    print(f"original {method}: loss {loss:.4f}, val mIoU {miou:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
