"""The EVA02-CLIP-L-14-336 vision tower that PuLID reads a face with (its multi-scale hidden states and its
CLIP image embedding), written here because timm (which has it as `eva02_large_patch14_clip_336`) needs
torchvision, which cannot sit beside the pinned CPU torch.

It reads the published files in either naming: BAAI's EVA-CLIP checkpoint (`EVA02_CLIP_L_336_psz14_s6B.pt`,
the one PuLID uses: `visual.blocks.N.attn.q_proj.weight`, `q_bias`/`v_bias`, `inner_attn_ln`, SwiGLU
`mlp.w1/w2/w3`, `mlp.ffn_ln`; the text tower and `logit_scale` are skipped) and timm's (`blocks.N.attn.q_proj`
with biases, `attn.norm`, `mlp.fc1_g/fc1_x/fc2`, `mlp.norm`; an open_clip `visual.trunk.` prefix is stripped).
The rotary tables (`rope.*`) are recomputed, not read. Widths, depth, patch and image size come from the
file; the head width is the published 64.

Architecture (EVA-02 L): pre-norm blocks, attention with a query/value bias and a LayerNorm before the output
projection, 2-D rotary position embedding on every token but the class token (trained on a 16x16 grid,
interpolated to the 24x24 grid at 336 px), SwiGLU MLP with a LayerNorm before its output, final LayerNorm on
the class token, then the 1024 -> 768 projection.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from daguerre.errors import ModelLoadError

HEAD_DIM = 64  # EVA02-L: 1024 wide, 16 heads
PT_GRID = 16  # the rotary embedding's training grid (224 px / 14)
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalization, which EVA-CLIP keeps
STD = (0.26862954, 0.26130258, 0.27577711)
HIDDEN_AT = (4, 8, 12, 16, 20)  # PuLID reads the tokens entering these blocks


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Pairs (x0, x1) -> (-x1, x0), interleaved as EVA's rotary embedding pairs them."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def rotary_tables(head_dim: int, grid: int, pt_grid: int = PT_GRID, theta: float = 10000.0):
    """cos/sin (grid*grid, head_dim): half the channels rotate with the row, half with the column."""
    half = head_dim // 2
    freqs = 1.0 / theta ** (torch.arange(0, half, 2)[: half // 2].float() / half)
    t = torch.arange(grid) / grid * pt_grid
    f = torch.einsum("i,f->if", t, freqs).repeat_interleave(2, dim=-1)  # (grid, half)
    rows = f[:, None, :].expand(grid, grid, half)
    cols = f[None, :, :].expand(grid, grid, half)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return table.cos(), table.sin()


class EvaAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        # Rotary on the patch tokens only; the class token (position 0) keeps its features.
        q = torch.cat([q[:, :, :1], q[:, :, 1:] * cos + _rotate_half(q[:, :, 1:]) * sin], dim=2).type_as(v)
        k = torch.cat([k[:, :, :1], k[:, :, 1:] * cos + _rotate_half(k[:, :, 1:]) * sin], dim=2).type_as(v)
        x = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(self.norm(x))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden)
        self.fc1_x = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(F.silu(self.fc1_g(x)) * self.fc1_x(x)))


class EvaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EvaAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, hidden)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class EvaVision(nn.Module):
    """(B, 3, S, S) normalized pixels -> (CLIP embedding (B, out), [tokens entering blocks 4, 8, 12, 16, 20])."""

    def __init__(self, dim=1024, depth=24, patch=14, image_size=336, hidden=2730, out_dim=768):
        super().__init__()
        self.image_size = image_size
        grid = image_size // patch
        self.patch_embed = PatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(EvaBlock(dim, dim // HEAD_DIM, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        cos, sin = rotary_tables(HEAD_DIM, grid)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1) + self.pos_embed.to(x.dtype)
        cos, sin = self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)
        hidden = []
        for i, block in enumerate(self.blocks):
            if i in HIDDEN_AT:
                hidden.append(x)
            x = block(x, cos, sin)
        return self.head(self.norm(x)[:, 0]), hidden


_EVA_CLIP_NAMES = (  # BAAI EVA-CLIP names -> ours (timm's)
    (".mlp.w1.", ".mlp.fc1_g."),
    (".mlp.w2.", ".mlp.fc1_x."),
    (".mlp.w3.", ".mlp.fc2."),
    (".mlp.ffn_ln.", ".mlp.norm."),
    (".attn.inner_attn_ln.", ".attn.norm."),
    (".attn.q_bias", ".attn.q_proj.bias"),
    (".attn.v_bias", ".attn.v_proj.bias"),
)


def to_timm_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision tower's tensors under timm's names, from any of the published layouts."""
    if any(k.startswith("visual.") for k in sd):  # a whole CLIP model: keep the image tower
        prefix = "visual.trunk." if any(k.startswith("visual.trunk.") for k in sd) else "visual."
        sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    out = {}
    for k, v in sd.items():
        if k.startswith("rope.") or ".rope." in k:
            continue  # rotary tables: recomputed
        for old, new in _EVA_CLIP_NAMES:
            k = k.replace(old, new)
        out[k] = v
    return out


def load(path: Path, dtype: torch.dtype = torch.float32) -> EvaVision:
    """The vision tower from `path` (.pt/.pth with weights_only, or .safetensors), strictly."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file is the user's to fix
        raise ModelLoadError(f"cannot read the EVA-CLIP file {path}: {e}", parameter="puLID") from e
    sd = to_timm_names(sd)
    try:
        dim, _, patch, _ = sd["patch_embed.proj.weight"].shape
        grid = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        hidden = sd["blocks.0.mlp.fc1_g.weight"].shape[0]
        out_dim = sd["head.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"{path} is not an EVA02-CLIP vision tower (missing {e})", parameter="puLID") from e
    if depth <= max(HIDDEN_AT) or dim % HEAD_DIM:
        raise ModelLoadError(f"{path}: PuLID needs an EVA02 tower with more than {max(HIDDEN_AT)} blocks and a width "
                             f"that is a multiple of {HEAD_DIM} (this one: {depth} blocks, {dim} wide)",
                             parameter="puLID")  # fmt: skip
    with torch.device("meta"):
        model = EvaVision(dim=dim, depth=depth, patch=patch, image_size=grid * patch, hidden=hidden, out_dim=out_dim)
    missing, unexpected = _strict(model, sd)
    if missing or unexpected:
        raise ModelLoadError(f"{path} does not match the EVA02-CLIP layout: missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}", parameter="puLID")  # fmt: skip
    model.load_state_dict(sd, assign=True)
    cos, sin = rotary_tables(HEAD_DIM, grid)
    model.rope_cos, model.rope_sin = cos, sin
    return model.to(dtype).eval()


def _strict(model: nn.Module, sd: dict) -> tuple[list[str], list[str]]:
    want = set(model.state_dict())
    return sorted(want - set(sd)), sorted(set(sd) - want)


def preprocess(face: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> the tower's input: bicubic (antialiased) to size x size, CLIP-normalized."""
    x = F.interpolate(face, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.tensor(STD, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean) / std
