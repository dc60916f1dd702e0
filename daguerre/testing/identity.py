"""Tiny puLID files under their published names and key layouts (random weights): the PuLID-FLUX file, an
EVA02-CLIP checkpoint in BAAI's naming, an antelopev2 folder of two ONNX models shaped like SCRFD and
ArcFace, and facexlib's BiSeNet face parser. The loaders read them with the code that reads the real files."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

ARC_DIM, EVA_OUT, EVA_DIM = 32, 32, 64  # the real ones: 512, 768, 1024


def build_pulid(path: Path, *, dim: int, double: int, single: int, seed: int = 0) -> Path:
    """`pulid_encoder.*` + `pulid_ca.N.*` for a transformer `dim` wide with `double` + `single` blocks."""
    from safetensors.torch import save_file

    from daguerre.engine.features.pulid import (
        CA_HEAD_DIM,
        DOUBLE_INTERVAL,
        ENCODER_HEAD_DIM,
        SINGLE_INTERVAL,
        IDCrossAttention,
        IDFormer,
    )

    torch.manual_seed(seed)
    kv = 32
    encoder = IDFormer(dim=ENCODER_HEAD_DIM, queries=4, out_dim=kv, depth=5, inner=ENCODER_HEAD_DIM, ff_inner=128,
                       id_in=ARC_DIM + EVA_OUT, id_hidden=32, id_tokens=2, vit_in=EVA_DIM, vit_hidden=32)  # fmt: skip
    with torch.no_grad():
        encoder.latents.normal_(0, 0.1)
        encoder.proj_out.normal_(0, 0.2)
    n = -(-double // DOUBLE_INTERVAL) + -(-single // SINGLE_INTERVAL)
    cas = [IDCrossAttention(dim, CA_HEAD_DIM, kv) for _ in range(n)]
    sd = {f"pulid_encoder.{k}": v for k, v in encoder.state_dict().items()}
    for i, ca in enumerate(cas):
        sd.update({f"pulid_ca.{i}.{k.removeprefix('attn.')}": v for k, v in ca.state_dict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def build_eva(path: Path, *, seed: int = 0) -> Path:
    """A tiny EVA02-CLIP (21 blocks, 64 wide, 28 px) saved as BAAI's checkpoint names it: `visual.*` with
    q_bias/v_bias, inner_attn_ln, mlp.w1/w2/w3 and ffn_ln, plus rotary buffers and a text tower to skip."""
    from daguerre.engine.features.eva import HIDDEN_AT, EvaVision

    torch.manual_seed(seed)
    model = EvaVision(dim=EVA_DIM, depth=max(HIDDEN_AT) + 1, patch=14, image_size=28, hidden=96, out_dim=EVA_OUT)
    with torch.no_grad():
        model.pos_embed.normal_(0, 0.02)
        model.cls_token.normal_(0, 0.02)
    names = (("mlp.fc1_g.", "mlp.w1."), ("mlp.fc1_x.", "mlp.w2."), ("mlp.fc2.", "mlp.w3."),
             ("mlp.norm.", "mlp.ffn_ln."), ("attn.norm.", "attn.inner_attn_ln."), ("attn.q_proj.bias", "attn.q_bias"),
             ("attn.v_proj.bias", "attn.v_bias"))  # fmt: skip
    sd = {}
    for k, v in model.state_dict().items():
        for ours, theirs in names:
            k = k.replace(ours, theirs)
        sd[f"visual.{k}"] = v.clone()
    sd["visual.rope.freqs_cos"] = torch.zeros(4, 64)  # recomputed on load, as the real file's are
    sd["visual.blocks.0.attn.rope.freqs_sin"] = torch.zeros(4, 64)
    sd["text.token_embedding.weight"] = torch.zeros(8, 4)
    sd["logit_scale"] = torch.tensor(4.6)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


class TinySCRFD(nn.Module):
    """SCRFD's interface: (1, 3, 640, 640) -> scores, box distances and landmark offsets for strides 8/16/32 with
    2 anchors each (9 outputs, (N, 1), (N, 4), (N, 10)). The scores lean high, so it always finds faces."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(3, 2 * 15, s, stride=s) for s in (8, 16, 32))
        with torch.no_grad():
            for h in self.heads:
                h.weight.mul_(0.05)
                h.bias.zero_()
                h.bias[0::15].fill_(2.0)  # score logits
                h.bias[1::15].fill_(1.0)
                h.bias[2::15].fill_(1.0)
                h.bias[3::15].fill_(1.0)
                h.bias[4::15].fill_(1.0)
                for j, (x, y) in enumerate(((-0.6, -0.6), (0.6, -0.6), (0.0, 0.0), (-0.5, 0.6), (0.5, 0.6))):
                    h.bias[5 + 2 * j :: 15].fill_(x)  # a face's landmark layout (in half strides)
                    h.bias[6 + 2 * j :: 15].fill_(y)

    def forward(self, x):
        scores, boxes, kps = [], [], []
        for h in self.heads:
            y = h(x)  # (1, 30, g, g)
            y = y.view(1, 2, 15, y.shape[-2], y.shape[-1]).permute(0, 3, 4, 1, 2).reshape(-1, 15)
            scores.append(torch.sigmoid(y[:, :1]))
            boxes.append(nn.functional.softplus(y[:, 1:5]))
            kps.append(y[:, 5:15] * 0.5)
        return (*scores, *boxes, *kps)


class TinyArcFace(nn.Module):
    """ArcFace's interface: (1, 3, 112, 112) -> (1, ARC_DIM) unnormalized embedding."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 16, stride=16)
        self.fc = nn.Linear(8 * 7 * 7, ARC_DIM)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1)) * 10


def build_face_analysis(folder: Path, *, seed: int = 0) -> Path:
    """`scrfd_10g_bnkps.onnx` and `glintr100.onnx` in `folder` (insightface's antelopev2 names)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model, name, size in ((TinySCRFD(), "scrfd_10g_bnkps.onnx", 640), (TinyArcFace(), "glintr100.onnx", 112)):
            torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), str(folder / name), dynamo=False,
                              input_names=["input.1"])  # fmt: skip
    return folder


def build_face_parser(path: Path, *, seed: int = 0, base: int = 4) -> Path:
    """facexlib's `parsing_bisenet.pth` under its own key names, `base` channels wide (the real one: 64)."""
    from daguerre.engine.features.faceparse import BiSeNet

    torch.manual_seed(seed)
    model = BiSeNet(base).eval()
    with torch.no_grad():  # BatchNorm statistics as a trained model has them, not the untrained identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def build_identity(root: Path, model_folder: Path, *, seed: int = 0) -> dict[str, Path]:
    """All four under ComfyUI's folders in `root` (models/pulid, models/clip, models/insightface/models,
    models/facexlib), for the tiny transformer in `model_folder`."""
    import json

    cfg = json.loads((Path(model_folder) / "transformer" / "config.json").read_text())
    root = Path(root)
    return {
        "pulid": build_pulid(
            root / "models" / "pulid" / "pulid_flux_v0.9.1.safetensors",
            dim=cfg["num_attention_heads"] * cfg["attention_head_dim"],
            double=cfg["num_layers"],
            single=cfg["num_single_layers"],
            seed=seed,
        ),  # fmt: skip
        "evaclip": build_eva(root / "models" / "clip" / "EVA02_CLIP_L_336_psz14_s6B.pt", seed=seed),
        "faceanalysis": build_face_analysis(root / "models" / "insightface" / "models" / "antelopev2", seed=seed),
        "faceparsing": build_face_parser(root / "models" / "facexlib" / "parsing_bisenet.pth", seed=seed),
    }
