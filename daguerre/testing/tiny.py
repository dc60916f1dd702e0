"""Tiny random FLUX.1-architecture checkpoints, built offline and deterministically from a seed.

    python -m daguerre.testing.tiny OUT_DIR [--layout folder|single-file] [--seed N] [--fp8]
                                            [--kind dev|schnell|fill|kontext|control]

The parts are the real classes at toy sizes: diffusers' FluxTransformer2DModel (1 double and
2 single blocks, 2 heads of 16), CLIP and T5 encoders from transformers, an AutoencoderKL
with four blocks (the real 8x downscale) and 16 latent channels, and byte-level BPE
tokenizers trained here with the `tokenizers` package. Nothing touches the network.

Layouts:
  folder       OUT_DIR is a diffusers folder (model_index.json, transformer/, vae/, ...).
  single-file  OUT_DIR/flux-tiny-<kind>.safetensors in the BFL key layout (as flux1-dev.safetensors
               ships, float8_e4m3fn with --fp8), and OUT_DIR/base/, a diffusers folder holding the
               text encoders, tokenizers, VAE, scheduler and transformer config (no transformer weights).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from daguerre.engine.schedulers import FLUX_SCHEDULE_CONFIGS as SCHEDULER_CONFIGS

KINDS = ("dev", "schnell", "fill", "kontext", "control")

# Sizes of the tiny parts. The transformer's rope axes must sum to its head dim.
HEAD_DIM, HEADS, DOUBLE, SINGLE = 16, 2, 1, 2
AXES_DIMS_ROPE = (4, 6, 6)
TEXT_DIM = 32  # CLIP hidden (pooled projection) and T5 d_model (joint attention dim)
VOCAB = 1200
CLIP_MAX, T5_MAX = 77, 512

# A small photographic corpus so the tokenizers know the words our prompts use.
_CORPUS = """
portrait of a woman in her 30s, soft studio lighting, 85mm f/1.4, natural skin texture, pores
close-up portrait of a man, golden hour backlight with rim light, 35mm f/1.4, shallow depth of field
Rembrandt lighting from the upper right, single source, dramatic shadow, medium format film scan
overcast diffused window light, Kodak Portra 400 grain, Fujifilm Velvia, Kodak Ektar, RAW photo
product shot of a watch on black marble, reflections, macro lens, studio strobe, softbox, hero image
landscape at dawn, atmospheric perspective, layered depth, volumetric morning light, mountains, lake
street photography at night, neon ambient light, rain, wet asphalt, bokeh, cinematic still frame
a cat sitting on a wooden table, a dog running on the beach, a red car, a city skyline, sunset
digital art, illustration, cartoon, painting, 3D render, CGI, plastic skin, blurry, low quality
hyper-realistic skin detail, individual eyelashes, catchlights, subsurface scattering, freckles
""".strip().splitlines()


def _preset_lines() -> list[str]:
    """The prompt studio's preset texts: a real CLIP tokenizer reads each of their words as one token or two, and
    so should the tiny one, or the enhancer's additions would overflow its 77-token window at once."""
    from daguerre.prompts.studio import library

    return [p.text for items in library().presets.values() for p in items]


@dataclass(frozen=True)
class TinySpec:
    """Where a built tiny model lives and how to load it."""

    root: Path
    layout: str  # folder | single-file
    kind: str  # dev | schnell | fill | kontext | control
    model_path: Path  # the diffusers folder, or the single .safetensors file
    base_path: Path | None  # for single-file: the folder with encoders/VAE/tokenizers


def train_tokenizer(max_length: int, *, add_bos: bool):
    """A byte-level BPE tokenizer trained on the spot and wrapped for transformers.

    model_max_length must be set (77 for CLIP, 512 for T5): without it truncation to
    max_length overflows an int inside transformers.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]  # ids 0..3
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((_CORPUS + _preset_lines()) * 4, trainer)
    template = "<s> $A </s>" if add_bos else "$A </s>"
    tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 2), ("</s>", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_length,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )


def build_components(
    *,
    seed: int = 0,
    kind: str = "dev",
    double: int = DOUBLE,
    single: int = SINGLE,
    heads: int = HEADS,
    head_dim: int = HEAD_DIM,
    axes_dims_rope: tuple[int, int, int] = AXES_DIMS_ROPE,
    vae_channels: tuple[int, int, int, int] = (8, 16, 16, 16),
) -> dict:
    """All pipeline components, tiny by default, with weights drawn from `seed` in a fixed order.

    The size arguments let benchmarks build a mid-size model with the same tokenizers and encoders.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        # Fill: + masked-image latents + packed 8x8 mask; Control (Canny/Depth): + control-image latents
        in_channels={"fill": 384, "control": 128}.get(kind, 64),
        out_channels=64,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=(kind != "schnell"),
        axes_dims_rope=axes_dims_rope,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB,
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX,
            projection_dim=TEXT_DIM,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            hidden_act="quick_gelu",
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=VOCAB,
            d_model=TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=3,
            decoder_start_token_id=0,
        )
    )
    # Four blocks = three downsamples = the real 8x; FLUX.1's latent scale and shift.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=vae_channels,
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    for module in (transformer, text_encoder, text_encoder_2, vae):
        module.eval()
    return {
        "transformer": transformer,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": train_tokenizer(CLIP_MAX, add_bos=True),
        "tokenizer_2": train_tokenizer(T5_MAX, add_bos=False),
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIGS["schnell" if kind == "schnell" else "dev"]),
    }


def _model_index(kind: str = "dev") -> dict:
    return {
        "_class_name": {
            "fill": "FluxFillPipeline",
            "kontext": "FluxKontextPipeline",
            "control": "FluxControlPipeline",
        }.get(kind, "FluxPipeline"),
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def save_folder(components: dict, folder: Path, *, with_transformer_weights: bool, kind: str = "dev") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with _quiet_saving():
        for name, part in components.items():
            if name == "transformer" and not with_transformer_weights:
                (folder / name).mkdir(exist_ok=True)
                (folder / name / "config.json").write_text(json.dumps(dict(part.config), indent=2, default=list))
                continue
            part.save_pretrained(folder / name)
    (folder / "model_index.json").write_text(json.dumps(_model_index(kind), indent=2))


@contextlib.contextmanager
def _quiet_saving():
    """transformers draws a "Writing model shards" bar per part; for a 1 MB model it is only noise."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def write_gguf(sd: dict[str, torch.Tensor], path: Path, quant: str = "Q8_0") -> Path:
    """Write a state dict as GGUF the way city96's FLUX.1 conversions are laid out: the keys as given,
    2-D weights in the `quant` block format (when their rows split into whole blocks), the rest F32."""
    import gguf
    from gguf.quants import quantize

    qtype = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(str(path), arch="flux")
    for key, t in sd.items():
        a = t.float().numpy()
        if a.ndim == 2 and key.endswith(".weight") and a.shape[1] % block == 0:
            q = quantize(a, qtype)
            writer.add_tensor(key, q, raw_shape=q.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(key, a)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build(
    root: Path, *, layout: str = "folder", seed: int = 0, kind: str = "dev", fp8: bool = False, gguf: str | None = None
) -> TinySpec:
    """Write a tiny model under `root` and say where its parts are (gguf: the single file as GGUF, in that
    quantization type, e.g. Q8_0)."""
    from safetensors.torch import save_file

    from daguerre.engine.models.checkpoints import diffusers_to_bfl

    root = Path(root)
    components = build_components(seed=seed, kind=kind)
    if layout == "folder":
        if fp8 or gguf:
            raise ValueError("--fp8 and --gguf apply to the single-file layout")
        save_folder(components, root, with_transformer_weights=True, kind=kind)
        return TinySpec(root=root, layout=layout, kind=kind, model_path=root, base_path=None)
    if layout != "single-file":
        raise ValueError(f"layout must be 'folder' or 'single-file', got {layout!r}")
    base = root / "base"
    save_folder(components, base, with_transformer_weights=False, kind=kind)
    sd = diffusers_to_bfl({k: v.contiguous() for k, v in components["transformer"].state_dict().items()})
    if gguf:
        path = write_gguf(sd, root / f"flux-tiny-{kind}-{gguf}.gguf", gguf)
        return TinySpec(root=root, layout=layout, kind=kind, model_path=path, base_path=base)
    dtype = torch.float8_e4m3fn if fp8 else torch.float32
    sd = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    path = root / f"flux-tiny-{kind}{'-fp8' if fp8 else ''}.safetensors"
    save_file(sd, str(path), metadata={"format": "pt"})
    return TinySpec(root=root, layout=layout, kind=kind, model_path=path, base_path=base)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m daguerre.testing.tiny", description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--layout", choices=["folder", "single-file"], default="folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=KINDS, default="dev")
    p.add_argument("--fp8", action="store_true", help="store the single-file transformer as float8_e4m3fn")
    p.add_argument("--gguf", metavar="QUANT", help="store the single-file transformer as GGUF (Q8_0, Q4_0, ...)")
    a = p.parse_args(argv)
    spec = build(a.out_dir, layout=a.layout, seed=a.seed, kind=a.kind, fp8=a.fp8, gguf=a.gguf)
    print(f"model: {spec.model_path}")
    if spec.base_path:
        print(f"base:  {spec.base_path}")


if __name__ == "__main__":
    main()


def tiny_controlnet(*, seed: int = 0, union_modes: int | None = None, xlabs: bool = False):
    """A tiny random FluxControlNetModel matching the tiny transformer's sizes.

    union_modes: a Union ControlNet with that many condition types. xlabs: the XLabs architecture
    (pixel-space hint encoder, double blocks only). Its zero-initialised output projections are
    re-drawn, so the control really changes the image.
    """
    from diffusers import FluxControlNetModel

    torch.manual_seed(seed)
    net = FluxControlNetModel(
        patch_size=2 if xlabs else 1,  # XLabs packs its hint features 2x2 (diffusers reads it from patch_size)
        in_channels=64,
        num_layers=DOUBLE,
        num_single_layers=0 if xlabs else SINGLE,
        attention_head_dim=HEAD_DIM,
        num_attention_heads=HEADS,
        joint_attention_dim=TEXT_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=True,
        axes_dims_rope=AXES_DIMS_ROPE,
        num_mode=union_modes,
        conditioning_embedding_channels=16 if xlabs else None,
    )
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(
                ("controlnet_blocks", "controlnet_single_blocks", "controlnet_x_embedder", "input_hint_block.conv_out")
            ):
                p.normal_(0, 0.2)
    return net.eval()


def build_controlnet(folder: Path, *, seed: int = 0, union_modes: int | None = None) -> Path:
    """A tiny random ControlNet saved as a diffusers folder (InstantX layout; Union with union_modes)."""
    with _quiet_saving():
        tiny_controlnet(seed=seed, union_modes=union_modes).save_pretrained(folder)
    return Path(folder)


def build_xlabs_controlnet(path: Path, *, seed: int = 0) -> Path:
    """A tiny random XLabs-architecture ControlNet saved as one .safetensors file in XLabs' key layout."""
    from safetensors.torch import save_file

    from daguerre.engine.models.checkpoints import diffusers_to_xlabs_controlnet

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = diffusers_to_xlabs_controlnet(tiny_controlnet(seed=seed, xlabs=True).state_dict())
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def build_ip_adapter(folder: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """A tiny random XLabs-format FLUX.1 IP-Adapter and a tiny CLIP vision encoder for it.

    Returns (adapter .safetensors file, image encoder folder). The layer names are XLabs' own
    (ip_adapter_proj_model.*, double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.*).
    """
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=16,
        )
    ).eval()
    with _quiet_saving():
        encoder.save_pretrained(folder / "image_encoder")
    inner = HEADS * HEAD_DIM
    g = torch.Generator().manual_seed(seed)
    sd = {
        "ip_adapter_proj_model.proj.weight": torch.randn(4 * TEXT_DIM, 16, generator=g) * 0.2,
        "ip_adapter_proj_model.proj.bias": torch.randn(4 * TEXT_DIM, generator=g) * 0.2,
        "ip_adapter_proj_model.norm.weight": torch.ones(TEXT_DIM),
        "ip_adapter_proj_model.norm.bias": torch.zeros(TEXT_DIM),
    }
    for i in range(DOUBLE):
        for kv in ("k", "v"):
            stem = f"double_blocks.{i}.processor.ip_adapter_double_stream_{kv}_proj"
            sd[stem + ".weight"] = torch.randn(inner, TEXT_DIM, generator=g) * 0.3
            sd[stem + ".bias"] = torch.randn(inner, generator=g) * 0.3
    path = folder / "ip_adapter.safetensors"
    save_file(sd, str(path))
    return path, folder / "image_encoder"


def build_upscaler(path: Path, *, scale: int = 4, layout: str = "basicsr", seed: int = 0) -> Path:
    """A tiny ESRGAN-architecture upscaler (8 filters, 1 block) as RealESRGAN and UltraSharp files store it:
    layout "basicsr" (conv_first/body.N.rdbM..., RealESRGAN_x4plus, under `params_ema` in a .pth) or "esrgan"
    (model.0/model.1.sub..., the original ESRGAN and 4x-UltraSharp), in a .pth or .safetensors file (the
    suffix says)."""
    from safetensors.torch import save_file

    from daguerre.engine.features.esrgan import RRDBNet

    torch.manual_seed(seed)
    ups = {2: 1, 4: 2}[scale]
    model = RRDBNet(nf=8, nb=1, gc=4, ups=ups)
    sd = {re.sub(r"^ups\.(\d+)\.", lambda m: f"conv_up{int(m[1]) + 1}.", k): v.contiguous()
          for k, v in model.state_dict().items()}  # fmt: skip
    if layout == "esrgan":  # the original Sequential: model.0, model.1.sub..., then the upsampling convs
        tops = [0] + [3 * (i + 1) for i in range(ups)]
        tops += [tops[-1] + 2, tops[-1] + 4]
        names = {"conv_first": 0, **{f"conv_up{i + 1}": tops[i + 1] for i in range(ups)},
                 "conv_hr": tops[-2], "conv_last": tops[-1]}  # fmt: skip
        out = {}
        for k, v in sd.items():
            m = re.match(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$", k)
            head, _, rest = k.partition(".")
            if m:
                out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = v
            elif head == "conv_body":
                out[f"model.1.sub.1.{rest}"] = v
            else:
                out[f"model.{names[head]}.{rest}"] = v
        sd = out
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(sd, path)
    else:
        torch.save({"params_ema": sd} if layout == "basicsr" else sd, path)
    return path


def build_face_yolo(path: Path, *, config_dir: Path | None = None) -> Path:
    """A random-weight YOLOv8n detector with one class, "face" (as face_yolov8n.pt has), built from the YAML that
    ships inside ultralytics (the `faces` extra) and saved as a .pt file: nothing is downloaded."""
    import os

    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir or Path(path).parent / ".ultralytics"))
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    model.model.names = {0: "face"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


TINY_LAYER_WIDTHS = (4, 4, 8, 8, 8, 8, 8)  # the published decoder's 7 levels, narrow (it has 32-512)


def build_transparent_vae(path: Path, *, seed: int = 0, latent_c: int = 16) -> Path:
    """A tiny TransparentVAE.pth as RedAIGC's file stores it: `encoder.blocks.*` (the offset encoder),
    `decoder.*` (the RGBA UNet, narrow widths) and `sd_vae.*` (a VAE copy, which loaders ignore). The alpha
    output leans towards opaque so that a picture has both opaque and see-through parts."""
    from daguerre.engine.features.layerdiffuse import OffsetEncoder, RGBADecoder

    torch.manual_seed(seed)
    enc, dec = OffsetEncoder(latent_c), RGBADecoder(latent_c, TINY_LAYER_WIDTHS)
    with torch.no_grad():
        enc.blocks[-1].weight.mul_(0.01)  # a small offset, as the trained encoder gives
        dec.conv_out.weight.mul_(4.0)
        dec.conv_out.bias.copy_(torch.tensor([0.5, 0.5, 0.5, 0.8]))
    sd = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    sd.update({f"decoder.{k}": v for k, v in dec.state_dict().items()})
    sd["sd_vae.decoder.conv_out.weight"] = torch.zeros(3, 8, 3, 3)  # ignored on load, as in the real file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


def build_layer_diffuse(folder: Path, model_folder: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """The two LayerDiffuse files under their published names in `folder`: `layerlora.safetensors` (a tiny
    diffusers-format LoRA for the model in `model_folder`) and `TransparentVAE.pth`."""
    from daguerre.testing.loras import build_lora

    folder = Path(folder)
    lora = build_lora(folder / "layerlora.safetensors", model_folder, "peft", seed=seed + 1)
    return lora, build_transparent_vae(folder / "TransparentVAE.pth", seed=seed)
