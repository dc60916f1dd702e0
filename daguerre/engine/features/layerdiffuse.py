"""layerDiffuse: transparent images from FLUX.1 with the FLUX LayerDiffuse LoRA and its transparent VAE.

The published files (RedAIGC, "Flux-version-LayerDiffuse"): `layerlora.safetensors`, an ordinary FLUX.1 LoRA
(loaded through the LoRA path), and `TransparentVAE.pth`, a pickled state dict with three parts:

  encoder.blocks.*  the latent-transparency offset encoder: RGBA (padded colour + alpha) -> a latent offset
                    (times 300) that moves the VAE's posterior so the latent carries the transparency
  decoder.*         `UNet1024`: the VAE's RGB decode plus the latent -> RGBA, a 7-level UNet built from
                    diffusers' UNet blocks (32-512 channels, attention in the three lowest levels); the latent
                    enters, through a zero-initialised 1x1 conv, before the fourth level
  sd_vae.*          a copy of the FLUX.1 VAE: ignored, the model's own VAE is used

The decoder is run on the 8 flips/rotations of its input and the per-pixel median is kept, as the authors do.
The FLUX version's decoder writes R, G, B, A in that order.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from daguerre.errors import ModelLoadError

log = logging.getLogger(__name__)

OFFSET_SCALE = 300.0  # the encoder's output is multiplied by this before it moves the posterior
# The decoder's architecture (the published file's; only latent_c differs between SD and FLUX versions).
DOWN = ("DownBlock2D",) * 4 + ("AttnDownBlock2D",) * 3
UP = ("AttnUpBlock2D",) * 3 + ("UpBlock2D",) * 4
CHANNELS = (32, 32, 64, 128, 256, 512, 512)
# The 8 views the decoder is run on: (mirror, quarter turns).
VIEWS = tuple((flip, k) for flip in (False, True) for k in range(4))


class OffsetEncoder(nn.Module):
    """`encoder.*`: (B, 4, H, W) padded RGB + alpha in [0, 1] -> (B, latent_c, H/8, W/8) offset."""

    def __init__(self, latent_c: int = 16):
        super().__init__()
        widths = [(4, 32, 1), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2),
                  (256, 256, 1)]  # fmt: skip
        layers: list[nn.Module] = []
        for cin, cout, stride in widths:
            layers += [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(256, latent_c, 3, padding=1))
        self.blocks = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class RGBADecoder(nn.Module):
    """`decoder.*` (the authors' UNet1024): decoded RGB in [0, 1] + the VAE latent -> RGBA."""

    def __init__(self, latent_c: int = 16, channels: tuple[int, ...] = CHANNELS, groups: int = 4, head_dim: int = 8):
        super().__init__()
        from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, get_down_block, get_up_block

        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        self.latent_conv_in = nn.Conv2d(latent_c, channels[2], 1)
        common = dict(temb_channels=None, resnet_eps=1e-5, resnet_act_fn="silu", resnet_groups=groups,
                      attention_head_dim=head_dim, resnet_time_scale_shift="default", dropout=0.0)  # fmt: skip
        self.down_blocks = nn.ModuleList()
        out = channels[0]
        if len(channels) != len(DOWN):
            raise ValueError(f"the RGBA decoder has {len(DOWN)} levels, not {len(channels)}")
        for i, kind in enumerate(DOWN):
            cin, out = out, channels[i]
            self.down_blocks.append(get_down_block(kind, num_layers=2, in_channels=cin, out_channels=out,
                                                   add_downsample=i < len(channels) - 1, downsample_padding=1,
                                                   downsample_type="conv", **common))  # fmt: skip
        self.mid_block = UNetMidBlock2D(in_channels=channels[-1], temb_channels=None, dropout=0.0, resnet_eps=1e-5,
                                        resnet_act_fn="silu", output_scale_factor=1, resnet_time_scale_shift="default",
                                        attention_head_dim=head_dim, resnet_groups=groups, attn_groups=None,
                                        add_attention=True)  # fmt: skip
        rev = list(reversed(channels))
        self.up_blocks = nn.ModuleList()
        out = rev[0]
        for i, kind in enumerate(UP):
            prev, out = out, rev[i]
            cin = rev[min(i + 1, len(channels) - 1)]
            self.up_blocks.append(get_up_block(kind, num_layers=3, in_channels=cin, out_channels=out,
                                               prev_output_channel=prev, add_upsample=i < len(channels) - 1,
                                               upsample_type="conv", **common))  # fmt: skip
        self.conv_norm_out = nn.GroupNorm(num_channels=channels[0], num_groups=groups, eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], 4, 3, padding=1)

    def forward(self, pixels: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        from_latent = self.latent_conv_in(latent)
        x = self.conv_in(pixels)
        skips = (x,)
        for i, block in enumerate(self.down_blocks):
            if i == 3:
                x = x + from_latent
            x, res = block(hidden_states=x, temb=None)
            skips += res
        x = self.mid_block(x, None)
        for block in self.up_blocks:
            n = len(block.resnets)
            x, skips = block(x, skips[-n:], None), skips[:-n]
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


@dataclass
class TransparentVAE:
    """The offset encoder and RGBA decoder of one TransparentVAE file, on a device."""

    encoder: OffsetEncoder
    decoder: RGBADecoder
    path: Path

    @property
    def latent_channels(self) -> int:
        return self.decoder.latent_conv_in.in_channels

    def to(self, device, dtype) -> TransparentVAE:
        self.encoder.to(device, dtype)
        self.decoder.to(device, dtype)
        return self

    @torch.inference_mode()
    def decode(self, rgb01: torch.Tensor, latent: torch.Tensor, *, views: int = len(VIEWS)) -> torch.Tensor:
        """(B, 3, H, W) VAE output mapped to [0, 1] (unclipped) + (B, C, H/8, W/8) VAE-space latent ->
        (B, 4, H, W) RGBA in [0, 1]: the median over the flipped/rotated views."""
        p = next(self.decoder.parameters())
        rgb01, latent = rgb01.to(p.device, p.dtype), latent.to(p.device, p.dtype)
        outs = []
        for flip, k in VIEWS[:views]:
            x, z = (rgb01.flip(3), latent.flip(3)) if flip else (rgb01, latent)
            y = self.decoder(torch.rot90(x, k, (2, 3)), torch.rot90(z, k, (2, 3))).clamp(0, 1)
            y = torch.rot90(y, -k, (2, 3))
            outs.append(y.flip(3) if flip else y)
        return torch.stack(outs).median(dim=0).values.float()

    @torch.inference_mode()
    def offset(self, padded_rgb01: torch.Tensor, alpha01: torch.Tensor) -> torch.Tensor:
        """The latent offset (already times OFFSET_SCALE) of an RGBA source: padded colour (B, 3, H, W) and
        alpha (B, 1, H, W), both in [0, 1]."""
        p = next(self.encoder.parameters())
        feed = torch.cat([padded_rgb01, alpha01], dim=1).to(p.device, p.dtype)
        return self.encoder(feed).float() * OFFSET_SCALE


def load(path: Path) -> TransparentVAE:
    """A TransparentVAE file (.pth read with weights_only=True, or .safetensors): `encoder.*` and `decoder.*`
    loaded strictly, `sd_vae.*` ignored."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's, reported by name
        raise ModelLoadError(f"cannot read the transparent VAE {path}: {e}", parameter="layerDiffuse") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    parts = {"encoder": {}, "decoder": {}}
    for k, v in sd.items():
        head, _, rest = k.partition(".")
        if head in parts:
            parts[head][rest] = v
        elif head != "sd_vae":
            raise ModelLoadError(f"{path} is not a TransparentVAE file: unexpected key {k!r}", parameter="layerDiffuse")
    conv = parts["decoder"].get("latent_conv_in.weight")
    if conv is None or "blocks.16.weight" not in parts["encoder"]:
        raise ModelLoadError(f"{path} is not a TransparentVAE file: it lacks the encoder/decoder weights",
                             parameter="layerDiffuse")  # fmt: skip
    latent_c = conv.shape[1]
    try:  # the level widths (the published file: 32-512; tiny test files are narrower)
        widths = tuple(parts["decoder"][f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(len(DOWN)))
    except KeyError as e:
        raise ModelLoadError(f"{path}: the decoder lacks {e.args[0]}", parameter="layerDiffuse") from e
    encoder, decoder = OffsetEncoder(latent_c), RGBADecoder(latent_c, widths)
    for name, module in (("encoder", encoder), ("decoder", decoder)):
        try:
            module.load_state_dict(parts[name], strict=True)
        except RuntimeError as e:
            raise ModelLoadError(f"{path}: the {name} weights do not fit: {e}", parameter="layerDiffuse") from e
    encoder.eval()
    decoder.eval()
    return TransparentVAE(encoder, decoder, path)


def pad_rgb(rgba01: np.ndarray, step: float = 1.2) -> np.ndarray:
    """(H, W, 3) colour for an RGBA source whose transparent areas are filled from their surroundings (an
    alpha-weighted pyramid, coarse to fine), as the offset encoder was trained on."""
    import cv2

    color, alpha = rgba01[..., :3].astype(np.float32), rgba01[..., 3:].astype(np.float32)
    levels = [(color * alpha, alpha)]
    while min(levels[-1][1].shape[:2]) > 1:
        c, a = levels[-1]
        h, w = a.shape[:2]
        size = (max(1, int(w / step)), max(1, int(h / step)))
        levels.append((cv2.resize(c, size, interpolation=cv2.INTER_AREA),
                       cv2.resize(a, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], 1)))  # fmt: skip
    c, a = levels[-1]
    fg = c.sum(axis=(0, 1), keepdims=True) / np.clip(a.sum(axis=(0, 1), keepdims=True), 1e-8, None)
    for c, a in reversed(levels):
        fg = cv2.resize(fg.reshape(fg.shape[0], fg.shape[1], 3), (a.shape[1], a.shape[0]),
                        interpolation=cv2.INTER_LINEAR)  # fmt: skip
        fg = c + fg * (1.0 - a)
    return fg.astype(np.float32)


class TransparentVAEs:
    """The last transparent VAE used, kept loaded on the device (about 420 MB in fp32, half in bf16)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self._loaded: tuple[Path, TransparentVAE] | None = None
        self._lock = threading.Lock()

    def get(self, path: Path) -> TransparentVAE:
        with self._lock:
            if self._loaded is None or self._loaded[0] != path:
                self._loaded = None
                self._loaded = (path, load(path).to(self.device, self.dtype))
            return self._loaded[1]


@dataclass(frozen=True)
class LayerPlan:
    """A request's layerDiffuse, resolved: the LoRA and the transparent VAE, by catalog spec and file hash."""

    lora: object  # catalog ModelSpec
    lora_sha256: str
    vae_path: Path
    vae_id: str
    vae_sha256: str

    def recipe(self) -> dict:
        return {"lora": self.lora.id, "lora_sha256": self.lora_sha256, "vae": self.vae_id,
                "vae_sha256": self.vae_sha256}  # fmt: skip


def plan(engine, req) -> LayerPlan | None:
    ld = req.layer_diffuse
    if ld is None:
        return None
    catalog, hashes = engine.models.catalog, engine.models.hashes
    lora = catalog.get(ld.lora, parameter="layerDiffuse.lora")
    vae = catalog.get(ld.vae, parameter="layerDiffuse.vae")
    return LayerPlan(lora, hashes.sha256([lora.path]), vae.path, vae.id, hashes.sha256([vae.path]))


def decode(pipe, tvae: TransparentVAE, packed: torch.Tensor, height: int, width: int) -> list[np.ndarray]:
    """The pipeline's packed latents -> (H, W, 4) RGBA floats per image. Fully opaque pixels keep the model's own
    VAE decode (the RGBA decoder was trained to repeat it there); elsewhere the colour is the decoder's."""
    vae = pipe.vae
    latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
    latents = latents / vae.config.scaling_factor + vae.config.shift_factor
    with torch.inference_mode():
        rgb = vae.decode(latents.to(vae.dtype), return_dict=False)[0].float() * 0.5 + 0.5  # unclipped, as trained
        rgba = tvae.decode(rgb, latents.float())
    out = []
    for plain, y in zip(rgb.clamp(0, 1).cpu(), rgba.cpu(), strict=True):
        y = y.permute(1, 2, 0).numpy().copy()
        opaque = y[..., 3] >= OPAQUE
        y[opaque, :3] = plain.permute(1, 2, 0).numpy()[opaque]
        out.append(y.astype(np.float32))
    return out


OPAQUE = 254.5 / 255  # alpha that rounds to 255: the pixel is opaque in the file


def encode(pipe, tvae: TransparentVAE, image, width: int, height: int) -> torch.Tensor:
    """An image-to-image source -> the packed pipeline's image latents (scaled, (1, C, H/8, W/8)): the VAE's
    posterior mean of the premultiplied colour, moved by the offset encoder's transparency offset (the authors'
    deterministic sample: mean + std x offset). An RGB source counts as opaque; an RGBA one (or the RGBA
    original the image decoder kept in info["rgba"]) carries its alpha, with its colours as they were."""
    from PIL import Image

    source = image if image.mode == "RGBA" else image.info.get("rgba", image)
    rgba = np.asarray(source.convert("RGBA").resize((width, height), Image.Resampling.LANCZOS), np.float32) / 255.0
    rgb, a = rgba[..., :3], rgba[..., 3]
    padded = torch.from_numpy(pad_rgb(rgba)).permute(2, 0, 1)[None]
    alpha_t = torch.from_numpy(a)[None, None]
    vae = pipe.vae
    feed = ((torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1) * alpha_t).to(vae.device, vae.dtype)
    with torch.inference_mode():
        dist = vae.encode(feed).latent_dist
        offset = tvae.offset(padded, alpha_t).to(dist.mean.device, dist.mean.dtype)
        latent = dist.mean + dist.std * offset
    return (latent - vae.config.shift_factor) * vae.config.scaling_factor
