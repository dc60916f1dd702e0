"""Face parsing for puLID: facexlib's BiSeNet (`parsing_bisenet.pth`, the face-parsing.PyTorch model of
zllrunning, 19 CelebAMask-HQ classes), read from a local file with weights_only and loaded strictly.

PuLID whitens everything that is not the face itself (background, hair, hat, ears, earrings, neck, cloth:
classes 0, 7, 8, 9, 14, 15, 16, 18) before the EVA tower reads the aligned face, so the identity features
come from the face alone.

Architecture (its published key names): `cp.resnet` a ResNet-18 (its stride-8/16/32 features), `cp.arm16` /
`cp.arm32` attention refinement, `cp.conv_avg` global context, `cp.conv_head16/32`, `ffm` feature fusion, and
the `conv_out` / `conv_out16` / `conv_out32` heads (only `conv_out` is read for the labels). Widths scale with
the first convolution's (64 in the published file), so a narrow copy with the same names loads too.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from daguerre.errors import ModelLoadError

CLASSES = 19
BACKGROUND = (0, 16, 18, 7, 8, 9, 14, 15)  # what PuLID whitens
MEAN = (0.485, 0.456, 0.406)  # ImageNet normalization, as PuLID feeds it
STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu((x if self.downsample is None else self.downsample(x)) + residual)


class ResNet18(nn.Module):
    def __init__(self, base: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        widths = (base, base, 2 * base, 4 * base, 8 * base)
        for i in range(1, 5):
            stride = 1 if i == 1 else 2
            setattr(self, f"layer{i}", nn.Sequential(BasicBlock(widths[i - 1], widths[i], stride),
                                                     BasicBlock(widths[i], widths[i])))  # fmt: skip

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x):
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))


class ContextPath(nn.Module):
    def __init__(self, base: int):
        super().__init__()
        self.resnet = ResNet18(base)
        self.arm16 = AttentionRefinement(4 * base, 2 * base)
        self.arm32 = AttentionRefinement(8 * base, 2 * base)
        self.conv_head32 = ConvBNReLU(2 * base, 2 * base)
        self.conv_head16 = ConvBNReLU(2 * base, 2 * base)
        self.conv_avg = ConvBNReLU(8 * base, 2 * base, k=1, padding=0)

    def forward(self, x):
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))
        up32 = self.conv_head32(F.interpolate(self.arm32(feat32) + avg, feat16.shape[2:], mode="nearest"))
        up16 = self.conv_head16(F.interpolate(self.arm16(feat16) + up32, feat8.shape[2:], mode="nearest"))
        return feat8, up16


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, k=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp, fcp):
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat * atten + feat


class Head(nn.Module):
    def __init__(self, cin: int, mid: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, CLASSES, 1, bias=False)

    def forward(self, x):
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """(B, 3, H, W) ImageNet-normalized -> (B, 19, H, W) class logits."""

    def __init__(self, base: int = 64):
        super().__init__()
        self.cp = ContextPath(base)
        self.ffm = FeatureFusion(4 * base, 4 * base)
        self.conv_out = Head(4 * base, 4 * base)
        self.conv_out16 = Head(2 * base, base)  # auxiliary heads: in the file, not used for the labels
        self.conv_out32 = Head(2 * base, base)

    def forward(self, x):
        feat8, cp8 = self.cp(x)
        out = self.conv_out(self.ffm(feat8, cp8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def load(path: Path, dtype: torch.dtype = torch.float32) -> BiSeNet:
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file is the user's to fix
        raise ModelLoadError(f"cannot read the face-parsing file {path}: {e}", parameter="puLID") from e
    sd = sd.get("params", sd.get("state_dict", sd)) if isinstance(sd, dict) else sd
    try:
        base = sd["cp.resnet.conv1.weight"].shape[0]
    except (KeyError, AttributeError) as e:
        raise ModelLoadError(f"{path} is not facexlib's BiSeNet face parser (no cp.resnet.conv1)",
                             parameter="puLID") from e  # fmt: skip
    model = BiSeNet(base)
    # BatchNorm's step counters are bookkeeping that older saves lack; every weight must be there.
    counted = ("num_batches_tracked",)
    want = {k for k in model.state_dict() if not k.endswith(counted)}
    have = {k for k in sd if not k.endswith(counted)}
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        raise ModelLoadError(f"{path} does not match facexlib's BiSeNet layout: missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}", parameter="puLID")  # fmt: skip
    model.load_state_dict({k: v for k, v in sd.items() if k in want}, strict=False)
    return model.to(dtype).eval()


def face_only(parser: BiSeNet, face: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """`grey` (B, 3, H, W) with everything that is not the face itself set to white, judged on `face` (RGB in
    [0, 1]) by the parser."""
    mean = torch.tensor(MEAN, dtype=face.dtype, device=face.device)[None, :, None, None]
    std = torch.tensor(STD, dtype=face.dtype, device=face.device)[None, :, None, None]
    labels = parser((face - mean) / std).argmax(dim=1, keepdim=True)
    background = torch.isin(labels, torch.tensor(BACKGROUND, device=labels.device))
    return torch.where(background, torch.ones_like(grey), grey)
