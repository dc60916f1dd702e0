"""ESRGAN-class upscalers (RRDBNet: ESRGAN, RealESRGAN x4plus / anime_6B, 4x-UltraSharp, 4x-AnimeSharp) without
spandrel, for machines where spandrel cannot be installed (it imports torchvision, and PyPI's torchvision
for the pinned CPU torch does not load). hires.py uses spandrel when it imports, this otherwise; both read the
same files: the BasicSR layout (conv_first, body.N.rdbM.convK, conv_body, conv_up1.., conv_hr, conv_last,
optionally under `params_ema`/`params`) and the original ESRGAN one (model.0, model.1.sub.N.RDBM.convK.0, ...).
RealESRGAN's x2/x1 models (pixel-unshuffled input: 12 or 48 input channels) are read too.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from daguerre.errors import ModelLoadError


class _RDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        x1 = self.act(self.conv1(x))
        x2 = self.act(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        return self.conv5(torch.cat((x, x1, x2, x3, x4), 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = _RDB(nf, gc), _RDB(nf, gc), _RDB(nf, gc)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """The ESRGAN generator, BasicSR's parameter names."""

    def __init__(self, *, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32, ups: int = 2):
        super().__init__()
        self.unshuffle = {3: 1, 12: 2, 48: 4}.get(in_nc, 1)
        self.scale = 2**ups // self.unshuffle
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(nf, gc) for _ in range(nb)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.ups = nn.ModuleList(nn.Conv2d(nf, nf, 3, 1, 1) for _ in range(ups))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        if self.unshuffle > 1:
            x = nn.functional.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for up in self.ups:
            feat = self.act(up(nn.functional.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.act(self.conv_hr(feat)))


def to_basicsr(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Either key layout -> BasicSR's (ours: `conv_up{i}` stored as `ups.{i-1}`)."""
    for wrapper in ("params_ema", "params", "state_dict"):
        if wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if "model.0.weight" in sd:  # the original ESRGAN layout: a Sequential
        tops = sorted({int(k.split(".")[1]) for k in sd if re.match(r"model\.\d+\.weight$", k)})
        names = {tops[0]: "conv_first", tops[-2]: "conv_hr", tops[-1]: "conv_last"}
        names.update({t: f"conv_up{i + 1}" for i, t in enumerate(tops[1:-2])})
        out = {}
        for k, v in sd.items():
            m = re.match(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", k)
            if m:
                out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
            elif k.startswith("model.1.sub."):
                out[f"conv_body.{k.rsplit('.', 1)[1]}"] = v
            else:
                out[f"{names[int(k.split('.')[1])]}.{k.rsplit('.', 1)[1]}"] = v
        sd = out
    return {re.sub(r"^conv_up(\d+)\.", lambda m: f"ups.{int(m[1]) - 1}.", k): v for k, v in sd.items()}


def load(path: Path, device: torch.device) -> RRDBNet:
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        sd = to_basicsr(sd)
        nf, in_nc = sd["conv_first.weight"].shape[:2]
        nb = len({k.split(".")[1] for k in sd if k.startswith("body.")})
        gc = sd["body.0.rdb1.conv1.weight"].shape[0]
        ups = len({k.split(".")[1] for k in sd if k.startswith("ups.")})
        model = RRDBNet(in_nc=in_nc, out_nc=sd["conv_last.weight"].shape[0], nf=nf, nb=nb, gc=gc, ups=ups)
        model.load_state_dict(sd)
    except (KeyError, RuntimeError, ValueError, OSError) as e:
        raise ModelLoadError(f"{path}: not an ESRGAN-class upscaler this server can read ({e})",
                             parameter="hiresFix.model") from e  # fmt: skip
    return model.to(device).eval()


class Descriptor:
    """What hires.py needs of a loaded upscaler, as spandrel's ImageModelDescriptor offers it."""

    def __init__(self, model: RRDBNet):
        self.model, self.scale = model, model.scale

    def __call__(self, x):
        return self.model(x)

    def eval(self):
        return self
