"""puLID: identity from a reference face, with the published PuLID-FLUX weights (`pulid_flux_v0.9.0` / `v0.9.1`
.safetensors, ToTheBeginning/PuLID, Apache-2.0).

The file holds two modules, loaded strictly under their published names:

  pulid_encoder.*  the ID former: the ArcFace embedding and the EVA class embedding (1280 = 512 + 768) map to 5
                   ID tokens; 32 learned queries attend to them and to each of the 5 EVA hidden-state scales
                   in turn (2 perceiver layers per scale), then project to 2048: the (B, 32, 2048) ID embedding
  pulid_ca.N.*     20 cross-attention modules (queries from the image tokens, keys/values from the ID
                   embedding), added to the image tokens after every 2nd double block (0, 2, ..., 18) and
                   every 4th single block (0, 4, ..., 36), scaled by idWeight

The injection runs as forward hooks on the transformer's blocks, i.e. inside its forward: a step that a
step cache skips runs no block and adds nothing again (its cached residual already holds the identity), and
the hooks wrap the blocks that compile compiles. Widths, depths and the module count come from the file.

True CFG (puLID.trueCFGScale > 1) follows PuLID's sampler: from CFGStartStep on, the prediction is
neg + scale * (pos - neg), the negative pass using the negative prompt and the ID former's embedding of a
zero identity; before it, the positive pass alone (the negative call returns the positive prediction, so
diffusers' combination leaves it unchanged, and nothing is computed for it).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from daguerre.errors import ModelLoadError, RequestError

log = logging.getLogger(__name__)

DOUBLE_INTERVAL = 2
SINGLE_INTERVAL = 4
ENCODER_HEAD_DIM = 64  # the ID former's attention heads (16 x 64 in the published file)
CA_HEAD_DIM = 128  # the injected cross-attention's heads (16 x 128)
ENCODER_SCALES = 5  # EVA hidden-state scales


def _ff(dim: int, inner: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(),
                         nn.Linear(inner, dim, bias=False))  # fmt: skip


def _heads(q: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = q.shape
    return q.view(b, n, heads, -1).transpose(1, 2)


def _attend(q, k, v, dim_head: int) -> torch.Tensor:
    # PuLID scales q and k by dim_head^-1/4 each (more stable in half precision), softmax in fp32.
    scale = 1 / math.sqrt(math.sqrt(dim_head))
    w = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1).type(q.dtype)
    return w @ v


class PerceiverAttention(nn.Module):
    """The ID former's layer: queries from the latents; keys/values from the context and the latents."""

    def __init__(self, dim: int, inner: int, kv_dim: int | None = None, *, head_dim: int, joint: bool):
        super().__init__()
        self.heads, self.head_dim, self.joint = inner // head_dim, head_dim, joint
        self.norm1 = nn.LayerNorm(kv_dim or dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim or dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2) if self.joint else x).chunk(2, dim=-1)
        out = _attend(*(_heads(t, self.heads) for t in (q, k, v)), self.head_dim)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class IDFormer(nn.Module):
    def __init__(self, *, dim: int, queries: int, out_dim: int, depth: int, inner: int, ff_inner: int,
                 id_in: int, id_hidden: int, id_tokens: int, vit_in: int, vit_hidden: int):  # fmt: skip
        super().__init__()
        self.dim, self.queries, self.id_tokens = dim, queries, id_tokens
        self.per_scale = depth // ENCODER_SCALES
        self.latents = nn.Parameter(torch.zeros(1, queries, dim))
        self.proj_out = nn.Parameter(torch.zeros(dim, out_dim))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, inner, head_dim=ENCODER_HEAD_DIM, joint=True), _ff(dim, ff_inner)])
            for _ in range(depth)
        )

        def mlp(cin, hidden, cout):
            return nn.Sequential(nn.Linear(cin, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                                 nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(),
                                 nn.Linear(hidden, cout))  # fmt: skip

        for i in range(ENCODER_SCALES):
            setattr(self, f"mapping_{i}", mlp(vit_in, vit_hidden, dim))
        self.id_embedding_mapping = mlp(id_in, id_hidden, dim * id_tokens)

    def forward(self, id_cond: torch.Tensor, vit_hidden: list[torch.Tensor]) -> torch.Tensor:
        latents = self.latents.expand(id_cond.shape[0], -1, -1)
        x = self.id_embedding_mapping(id_cond).reshape(-1, self.id_tokens, self.dim)
        latents = torch.cat((latents, x), dim=1)
        for i in range(ENCODER_SCALES):
            ctx = torch.cat((x, getattr(self, f"mapping_{i}")(vit_hidden[i])), dim=1)
            for attn, ff in self.layers[i * self.per_scale : (i + 1) * self.per_scale]:
                latents = attn(ctx, latents) + latents
                latents = ff(latents) + latents
        return latents[:, : self.queries] @ self.proj_out


class IDCrossAttention(nn.Module):
    """`pulid_ca.N`: the image tokens (queries) attend to the ID embedding (keys/values)."""

    def __init__(self, dim: int, inner: int, kv_dim: int):
        super().__init__()
        self.attn = PerceiverAttention(dim, inner, kv_dim, head_dim=CA_HEAD_DIM, joint=False)

    def forward(self, id_embedding: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.attn(id_embedding, image)


@dataclass
class PulidWeights:
    encoder: IDFormer
    cas: nn.ModuleList
    path: Path

    @property
    def arc_dim(self) -> int:  # the identity embedding's share of the encoder's input (the rest is EVA's)
        return self.encoder.id_embedding_mapping[0].in_features


def load(path: Path, dtype: torch.dtype = torch.float32) -> PulidWeights:
    """Both modules of a PuLID-FLUX file, strictly: a missing or unexpected key is a ModelLoadError."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        sd = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file is the user's to fix
        raise ModelLoadError(f"cannot read the PuLID file {path}: {e}", parameter="puLID") from e
    enc = {k.removeprefix("pulid_encoder."): v for k, v in sd.items() if k.startswith("pulid_encoder.")}
    ca = {k.removeprefix("pulid_ca."): v for k, v in sd.items() if k.startswith("pulid_ca.")}
    other = sorted(k for k in sd if not k.startswith(("pulid_encoder.", "pulid_ca.")))
    if other or not enc or not ca:
        raise ModelLoadError(f"{path} is not a PuLID-FLUX file (pulid_encoder.* and pulid_ca.*; found "
                             f"{other[:3] or sorted(sd)[:3]})", parameter="puLID")  # fmt: skip
    try:
        dim = enc["latents"].shape[2]
        encoder_cfg = dict(
            dim=dim, queries=enc["latents"].shape[1], out_dim=enc["proj_out"].shape[1],
            depth=1 + max(int(k.split(".")[1]) for k in enc if k.startswith("layers.")),
            inner=enc["layers.0.0.to_q.weight"].shape[0], ff_inner=enc["layers.0.1.1.weight"].shape[0],
            id_in=enc["id_embedding_mapping.0.weight"].shape[1],
            id_hidden=enc["id_embedding_mapping.0.weight"].shape[0],
            id_tokens=enc["id_embedding_mapping.6.weight"].shape[0] // dim,
            vit_in=enc["mapping_0.0.weight"].shape[1], vit_hidden=enc["mapping_0.0.weight"].shape[0],
        )  # fmt: skip
        n_ca = 1 + max(int(k.split(".")[0]) for k in ca)
        ca_cfg = dict(dim=ca["0.to_q.weight"].shape[1], inner=ca["0.to_q.weight"].shape[0],
                      kv_dim=ca["0.to_kv.weight"].shape[1])  # fmt: skip
    except (KeyError, ValueError) as e:
        raise ModelLoadError(f"{path} does not have PuLID-FLUX's layout (missing {e})", parameter="puLID") from e
    with torch.device("meta"):
        encoder = IDFormer(**encoder_cfg)
        cas = nn.ModuleList(IDCrossAttention(**ca_cfg) for _ in range(n_ca))
    # The file names the cross-attention's tensors directly under pulid_ca.N (ours sit under .attn).
    ca = {f"{k.split('.', 1)[0]}.attn.{k.split('.', 1)[1]}": v for k, v in ca.items()}
    for what, module, part in (("pulid_encoder", encoder, enc), ("pulid_ca", cas, ca)):
        want = set(module.state_dict())
        missing, unexpected = sorted(want - set(part)), sorted(set(part) - want)
        if missing or unexpected:
            raise ModelLoadError(f"{path}: {what} does not match PuLID-FLUX's layout: missing {missing[:4]}, "
                                 f"unexpected {unexpected[:4]}", parameter="puLID")  # fmt: skip
        module.load_state_dict(part, assign=True)
    return PulidWeights(encoder.to(dtype).eval(), cas.to(dtype).eval(), path)


def expected_cas(transformer) -> int:
    """How many cross-attention modules a transformer takes: one per DOUBLE_INTERVAL double blocks and per
    SINGLE_INTERVAL single blocks (20 for FLUX.1's 19 + 38)."""
    n_double, n_single = len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)
    return math.ceil(n_double / DOUBLE_INTERVAL) + math.ceil(n_single / SINGLE_INTERVAL)


# ---- the identity: reference photos -> ID embeddings
@dataclass
class IdentityModels:
    """What one identity embedding needs: the PuLID file, the EVA tower and the face analysis."""

    weights: PulidWeights
    eva: nn.Module
    faces: object  # faceid.FaceAnalysis
    parser: nn.Module | None = None  # faceparse.BiSeNet: whitens all but the face (None: not installed)


def to_gray(x: torch.Tensor) -> torch.Tensor:
    g = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return g.expand(-1, 3, -1, -1)


@torch.inference_mode()
def embed_identity(models: IdentityModels, images: list, device, dtype) -> tuple[torch.Tensor, torch.Tensor, list]:
    """(ID embedding, zero-identity embedding, per-image face boxes) for the reference photos: each photo's largest
    face; several photos are averaged in ID-embedding space."""
    from daguerre.engine.features import eva as eva_mod
    from daguerre.engine.features.faceid import largest

    conds, vits, boxes = [], [], []
    for k, image in enumerate(images):
        rgb = np.asarray(image.convert("RGB"))
        face = largest(models.faces.detect(rgb))
        if face is None:
            raise RequestError(f"puLID.images[{k}]: no face found in the reference image; use a photo where the "
                               "face is clear, frontal and at least about 100 px wide",
                               parameter="puLID.images")  # fmt: skip
        boxes.append([round(v, 1) for v in face.box])
        arc = torch.from_numpy(np.asarray(models.faces.embed(rgb, face), dtype=np.float32))[None]
        aligned = torch.from_numpy(models.faces.aligned(rgb, face)).permute(2, 0, 1)[None].float() / 255.0
        # PuLID keeps only the face (BiSeNet parsing whitens hair and background) and shows the tower its
        # greyscale; without a parsing model the whole aligned crop is greyed (docs/api.md "Identity").
        # In float32 up to the tower's input, as PuLID does (bicubic antialiasing has no bf16 kernel on the CPU).
        aligned = aligned.to(device, torch.float32)
        features = to_gray(aligned)
        if models.parser is not None:
            from daguerre.engine.features.faceparse import face_only

            features = face_only(models.parser, aligned, features)
        pixels = eva_mod.preprocess(features, models.eva.image_size).to(dtype)
        vit, hidden = models.eva(pixels)
        vit = vit / vit.norm(dim=1, keepdim=True)
        conds.append(torch.cat([arc.to(device, dtype), vit], dim=-1))
        vits.append(hidden)
    encoder = models.weights.encoder
    embeds = [encoder(c, h) for c, h in zip(conds, vits, strict=True)]
    cond = torch.stack(embeds).mean(0)
    uncond = encoder(torch.zeros_like(conds[0]), [torch.zeros_like(h) for h in vits[0]])
    return cond, uncond, boxes


# ---- the injection into the transformer's forward
@dataclass
class Injection:
    """One generation's identity: installed on a transformer for one pipeline call (a context manager)."""

    t: nn.Module  # the FLUX transformer
    cas: nn.ModuleList
    cond: torch.Tensor  # (1, tokens, kv_dim)
    uncond: torch.Tensor
    weight: float
    cfg_start: int | None = None  # true CFG from this step (None: from the first step)
    order: int = 1  # model evaluations per step for the scheduler (2 for Heun-type)
    true_cfg: bool = False  # the pipeline calls the transformer twice per evaluation: positive, then negative
    _handles: list = field(default_factory=list)
    _calls: int = 0
    _current: torch.Tensor | None = None
    _last_cond: object = None

    def __enter__(self) -> Injection:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def install(self) -> Injection:
        transformer = self.t
        n = expected_cas(transformer)
        if len(self.cas) != n:
            raise ModelLoadError(f"the PuLID file has {len(self.cas)} cross-attention modules; this model's "
                                 f"transformer takes {n}", parameter="puLID")  # fmt: skip
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        if self.cas[0].attn.to_q.in_features != dim:
            raise ModelLoadError(f"the PuLID file is for a {self.cas[0].attn.to_q.in_features}-wide transformer; "
                                 f"this model's is {dim} wide", parameter="puLID")  # fmt: skip
        at = 0
        for i, block in enumerate(transformer.transformer_blocks):
            if i % DOUBLE_INTERVAL == 0:
                self._handles.append(block.register_forward_hook(self._hook(at)))
                at += 1
        for i, block in enumerate(transformer.single_transformer_blocks):
            if i % SINGLE_INTERVAL == 0:
                self._handles.append(block.register_forward_hook(self._hook(at)))
                at += 1
        self._own = transformer.__dict__.get("forward")
        self._forward = transformer.forward
        transformer.forward = self._wrapped
        return self

    def uninstall(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._own is not None:
            self.t.forward = self._own
        else:
            self.t.__dict__.pop("forward", None)

    def _hook(self, index: int):
        ca = self.cas[index]

        def add_identity(module, args, output):
            if self._current is None or self.weight == 0:
                return output
            encoder_hidden_states, hidden_states = output
            ident = self._current.to(hidden_states.dtype).expand(hidden_states.shape[0], -1, -1)
            return encoder_hidden_states, hidden_states + self.weight * ca(ident, hidden_states)

        return add_identity

    def _wrapped(self, *args, **kwargs):
        # diffusers' true CFG calls the positive pass, then the negative one, for every model evaluation; a
        # step is `order` evaluations (counted, not read from the timestep: Heun's second evaluation of a step
        # runs at the next step's sigma).
        call = self._calls
        self._calls += 1
        negative = self.true_cfg and call % 2 == 1
        step = (call // 2 if self.true_cfg else call) // self.order
        if negative and self.cfg_start is not None and step < self.cfg_start:
            return self._last_cond  # before CFGStartStep: no guidance, the positive prediction alone
        self._current = self.uncond if negative else self.cond
        try:
            out = self._forward(*args, **kwargs)
        finally:
            self._current = None
        if not negative:
            self._last_cond = out
        return out


def reference(transformer, cas, ident: torch.Tensor, weight: float, **kwargs) -> torch.Tensor:
    """FLUX's forward with the identity added, written out as PuLID's own model does (for tests): the same
    embedders and blocks as diffusers', the cross-attention after every 2nd double and 4th single block."""
    t = transformer
    hidden = t.x_embedder(kwargs["hidden_states"])
    timestep = kwargs["timestep"].to(hidden.dtype) * 1000
    guidance = kwargs.get("guidance")
    pooled = kwargs["pooled_projections"]
    if guidance is None:
        temb = t.time_text_embed(timestep, pooled)
    else:
        temb = t.time_text_embed(timestep, guidance.to(hidden.dtype) * 1000, pooled)
    text = t.context_embedder(kwargs["encoder_hidden_states"])
    ids = torch.cat((kwargs["txt_ids"], kwargs["img_ids"]), dim=0)
    rotary = t.pos_embed(ids)
    ident = ident.expand(hidden.shape[0], -1, -1)
    at = 0
    for i, block in enumerate(t.transformer_blocks):
        text, hidden = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary)
        if i % DOUBLE_INTERVAL == 0:
            hidden = hidden + weight * cas[at](ident, hidden)
            at += 1
    for i, block in enumerate(t.single_transformer_blocks):
        text, hidden = block(hidden_states=hidden, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary)
        if i % SINGLE_INTERVAL == 0:
            hidden = hidden + weight * cas[at](ident, hidden)
            at += 1
    return t.proj_out(t.norm_out(hidden, temb))


class IdentityCache:
    """Loaded PuLID/EVA/face-analysis models by path (one copy per process), loaded on first use."""

    def __init__(self):
        self._lock = threading.Lock()
        self._models: dict[tuple, IdentityModels] = {}

    def get(self, pulid_path: Path, eva_path: Path, faces_path: Path, parsing_path: Path | None, device,
            dtype) -> IdentityModels:  # fmt: skip
        from daguerre.engine.features import eva, faceparse
        from daguerre.engine.features.faceid import FaceAnalysis

        key = (str(pulid_path), str(eva_path), str(faces_path), str(parsing_path), str(device), str(dtype))
        with self._lock:
            if key not in self._models:
                weights = load(pulid_path, dtype)
                weights.encoder.to(device)
                weights.cas.to(device)
                parser = faceparse.load(parsing_path).to(device) if parsing_path else None  # small: float32
                self._models[key] = IdentityModels(weights, eva.load(eva_path, dtype).to(device),
                                                   FaceAnalysis(faces_path), parser)  # fmt: skip
                log.info("puLID models loaded: %s, %s, %s", pulid_path, eva_path, faces_path)
            return self._models[key]


# ---- a request's identity: which files, what the recipe says
KINDS = {"pulid": "the PuLID-FLUX weights (pulid_flux_v0.9.1.safetensors)",
         "evaclip": "the EVA02-CLIP-L-14-336 vision tower (EVA02_CLIP_L_336_psz14_s6B.pt)",
         "faceanalysis": "insightface's antelopev2 folder (scrfd_10g_bnkps.onnx, glintr100.onnx)"}  # fmt: skip
OPTIONAL_KINDS = {"faceparsing": "facexlib's face parser (parsing_bisenet.pth)"}


def identity_specs(catalog) -> dict:
    """The catalog's PuLID files, one of each kind: the newest by name (pulid_flux_v0.9.1 before v0.9.0); a
    ModelNotFoundError says which is missing and where it goes."""
    from daguerre.errors import ModelNotFoundError

    def newest(kind: str):
        specs = sorted((s for s in catalog if s.kind == kind and not s.missing), key=lambda s: s.name)
        return specs[-1] if specs else None

    found = {kind: newest(kind) for kind in (*KINDS, *OPTIONAL_KINDS)}
    for kind, what in KINDS.items():
        if found[kind] is None:
            raise ModelNotFoundError(f"puLID needs {what}; none is in the catalog (docs/models.md, \"PuLID files\")",
                                     parameter="puLID")  # fmt: skip
    return found


@dataclass
class PulidPlan:
    """A request's puLID, prepared: its ID embeddings and what the recipe records."""

    injection_args: dict
    recipe: dict
    notes: tuple[str, ...] = ()  # warnings the result carries


def plan(engine, req) -> PulidPlan | None:
    """Load the identity models (once per process) and embed the request's reference photos."""
    from daguerre.recipe import pixels_sha256

    p = req.pulid
    if p is None:
        return None
    specs = identity_specs(engine.models.catalog)
    device, dtype = engine.models.device, engine.models.dtype
    parsing = specs["faceparsing"]
    models = engine.identities.get(specs["pulid"].path, specs["evaclip"].path, specs["faceanalysis"].path,
                                   parsing.path if parsing else None, device, dtype)  # fmt: skip
    cond, uncond, boxes = embed_identity(models, list(p.images), device, dtype)
    hashes = engine.models.hashes
    recipe = {
        "images_sha256": [pixels_sha256(im) for im in p.images],
        "face_boxes": boxes,
        "id_weight": p.id_weight,
        "cfg_start_step": p.cfg_start_step,
        "true_cfg_scale": p.true_cfg_scale,
        "pulid": specs["pulid"].id,
        "pulid_sha256": hashes.sha256([specs["pulid"].path]),
        "eva": specs["evaclip"].id,
        "eva_sha256": hashes.sha256([specs["evaclip"].path]),
        "faces": specs["faceanalysis"].id,
        "parsing": parsing.id if parsing else None,
    }
    true_cfg = (p.true_cfg_scale or 0) > 1
    args = dict(cas=models.weights.cas, cond=cond, uncond=uncond, weight=float(p.id_weight), true_cfg=true_cfg,
                cfg_start=p.cfg_start_step if true_cfg else None)  # fmt: skip
    notes = ()
    if parsing is None:
        notes = ("puLID: no face parser (facexlib's parsing_bisenet.pth) in the catalog: hair and background reach "
                 "the identity features (docs/models.md, \"PuLID files\")",)  # fmt: skip
    return PulidPlan(args, recipe, notes)
