"""`daguerre generate` and `daguerre reproduce`: images to files, each with its recipe, never overwriting."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from daguerre.cli.args import build_request, default_model
from daguerre.cli.common import (
    ConfigOpt,
    DeviceOpt,
    DtypeOpt,
    OffloadOpt,
    T5Opt,
    engine_for,
    err,
    fail,
    load_settings,
    warn,
)
from daguerre.errors import DaguerreError
from daguerre.imaging import EXTENSION
from daguerre.request import FaceFix, LayerDiffuse, SafetyCheck


def generate(
    prompt: Annotated[str, typer.Argument(help="positive prompt (2-3000 characters)")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="catalog id, short name or path")] = None,
    negative: Annotated[str | None, typer.Option(help="negative prompt; acts only with --true-cfg > 1")] = None,
    width: Annotated[int | None, typer.Option("--width", "-W", help="128-2048, multiple of 64 [1024]")] = None,
    height: Annotated[int | None, typer.Option("--height", "-H", help="128-2048, multiple of 64 [1024]")] = None,
    steps: Annotated[int | None, typer.Option(help="1-50 [28 dev, 4 schnell]")] = None,
    guidance: Annotated[
        float | None,
        typer.Option("--guidance", "--cfg", help="CFGScale: distilled guidance of dev-type models, 0-20 [3.5]"),
    ] = None,
    true_cfg: Annotated[
        float | None, typer.Option("--true-cfg", help="trueCFGScale > 1 runs real CFG against --negative (2x compute)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="0..2^63-1; random if omitted; image i uses seed+i")] = None,
    n: Annotated[int, typer.Option("-n", "--number", help="numberResults, 1-20")] = 1,
    scheduler: Annotated[str, typer.Option(help="scheduler name")] = "Default",
    image: Annotated[
        str | None, typer.Option("--image", "-i", help="seed image (path, base64, data URI) for image-to-image")
    ] = None,
    mask: Annotated[str | None, typer.Option(help="mask for inpainting; white = repaint")] = None,
    strength: Annotated[float | None, typer.Option(help="0-1 with --image [0.8]")] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option("--lora", help="LoRA id, name or path, optionally =WEIGHT (-4..4, default 1); repeatable"),
    ] = None,
    controlnet: Annotated[
        list[str] | None,
        typer.Option(
            "--controlnet",
            help="REF,GUIDE_IMAGE[,weight=W][,start=PCT][,end=PCT][,mode=balanced|prompt|"
            "controlnet][,type=canny|tile|depth|blur|pose|gray|lq (Union ControlNets)][,canny]: a ControlNet, "
            "FLUX.1 control model or control LoRA, and its guide (repeatable)",
        ),
    ] = None,
    ip_adapter: Annotated[
        list[str] | None,
        typer.Option(
            "--ip-adapter", help="REF,IMAGE[,IMAGE...][,weight=W]: an IP-Adapter and its image prompts (repeatable)"
        ),
    ] = None,
    outpaint: Annotated[
        str | None,
        typer.Option(help="extend --image: 'top=64,left=32,...' pixels (top/bottom/left/right, optional blur=N)"),
    ] = None,
    mask_margin: Annotated[
        int | None,
        typer.Option("--mask-margin", help="32-128: inpaint a crop around --mask at full resolution, paste back"),
    ] = None,
    tea_cache: Annotated[
        float | None, typer.Option("--tea-cache", help="TeaCache with this distance, 0-1 (higher: faster) [off]")
    ] = None,
    db_cache: Annotated[
        float | None, typer.Option("--db-cache", help="first-block DB Cache with this threshold, 0-1 [off]")
    ] = None,
    db_cache_interval: Annotated[
        int | None, typer.Option("--db-cache-interval", help="DB Cache: force a full pass every N steps [5]")
    ] = None,
    cache_start: Annotated[int | None, typer.Option("--cache-start", help="caching starts at this % of steps")] = None,
    cache_end: Annotated[int | None, typer.Option("--cache-end", help="caching stops at this % of steps")] = None,
    cache_max_consecutive: Annotated[
        int | None, typer.Option("--cache-max-consecutive", help="at most N cached steps in a row, 1-5 [3]")
    ] = None,
    enhance: Annotated[
        bool, typer.Option("--enhance-prompt", help="expand the prompt along the photographic formula (seeded)")
    ] = False,
    character: Annotated[
        str | None, typer.Option(help="a saved character: prepends its anchor, locks its seed (daguerre characters)")
    ] = None,
    hires_fix: Annotated[
        str | None,
        typer.Option(
            "--hires-fix",
            metavar="[MODEL]",
            help="two passes: half size, upscale with MODEL (an upscaler "
            "id, name or alias; 'latent'; alone: the configured default), refine",
        ),  # fmt: skip
    ] = None,
    hires_steps: Annotated[int | None, typer.Option("--hires-steps", help="refine steps [the request's]")] = None,
    hires_strength: Annotated[
        float | None, typer.Option("--hires-strength", help="refine strength, (0, 1] [0.6]")
    ] = None,
    face_fix: Annotated[
        bool, typer.Option("--face-fix", help="detect and re-draw faces (the API's ultralytics)")
    ] = False,
    transparent: Annotated[
        bool, typer.Option("--transparent", help="RGBA output with LayerDiffuse (the API's layerDiffuse; PNG/WEBP)")
    ] = False,
    id_image: Annotated[
        list[str] | None,
        typer.Option("--id-image", help="puLID: a reference photo of the person (repeatable, up to 4; averaged)"),
    ] = None,
    id_weight: Annotated[float | None, typer.Option("--id-weight", help="puLID identity strength, 0-3 [1]")] = None,
    id_cfg_start: Annotated[
        int | None, typer.Option("--id-cfg-start", help="puLID: true CFG (with --true-cfg) from this step [0]")
    ] = None,
    face_cfg: Annotated[float | None, typer.Option("--face-cfg", help="face pass guidance, 0-50 [8]")] = None,
    face_confidence: Annotated[
        float | None, typer.Option("--face-confidence", help="face detection threshold, 0-1 [0.9]")
    ] = None,
    face_inpaint_size: Annotated[
        int | None, typer.Option("--face-inpaint-size", help="each face is redrawn at this size, 128-2048 [1024]")
    ] = None,
    face_mask_blur: Annotated[int | None, typer.Option("--face-mask-blur", help="paste feathering, 0-100 [5]")] = None,
    face_mask_padding: Annotated[
        int | None, typer.Option("--face-mask-padding", help="pixels around each face, 0-20 [5]")
    ] = None,
    face_prompt: Annotated[str | None, typer.Option("--face-prompt", help="face pass prompt [the prompt]")] = None,
    face_negative: Annotated[str | None, typer.Option("--face-negative", help="face pass negative prompt")] = None,
    face_steps: Annotated[int | None, typer.Option("--face-steps", help="face pass steps, 1-100 [20]")] = None,
    face_strength: Annotated[float | None, typer.Option("--face-strength", help="face pass strength [0.3]")] = None,
    safety_check: Annotated[
        bool, typer.Option("--safety-check", help="run the safety checker on each image (settings [safety])")
    ] = False,
    safety_action: Annotated[
        str | None,
        typer.Option("--safety-action", help="blur | pixelate | black | sensitive_content_text | flag [settings]"),
    ] = None,
    weighting: Annotated[
        str | None,
        typer.Option(
            "--prompt-weighting", help="compel | sdEmbeds: read weights like (word)1.2 or (word:1.2) in the prompts"
        ),
    ] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", "-f", help="JPG | PNG | WEBP [JPG; PNG with --transparent]")
    ] = None,
    quality: Annotated[int, typer.Option(help="20-99 (JPG/WEBP)")] = 95,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="output folder [./out]")] = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    base: Annotated[str | None, typer.Option(help="folder lending text encoders/VAE to a single-file model")] = None,
    profile: Annotated[str | None, typer.Option(help="speed profile: exact | fast | turbo [exact]")] = None,
    compile_: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile the transformer [on CUDA only]")
    ] = None,
    offload: OffloadOpt = None,
    t5: T5Opt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
):
    """Generate images and print their paths and seeds."""

    try:
        extra = {
            k: v
            for k, v in (("profile", profile), ("compile", compile_), ("offload", offload), ("t5", t5))
            if v is not None
        }
        settings = load_settings(config, device=device, dtype=dtype, base_model=base, **extra)
        if negative is not None and (true_cfg or 0) <= 1:
            err.print("note: --negative acts only with --true-cfg > 1 (as in the reference API); it is recorded "
                      "but not used for this image", highlight=False)  # fmt: skip
        face_options = {"--face-cfg": face_cfg, "--face-confidence": face_confidence,
                        "--face-inpaint-size": face_inpaint_size, "--face-mask-blur": face_mask_blur,
                        "--face-mask-padding": face_mask_padding, "--face-prompt": face_prompt,
                        "--face-negative": face_negative, "--face-steps": face_steps,
                        "--face-strength": face_strength}  # fmt: skip
        given = [k for k, v in face_options.items() if v is not None]
        if given and not face_fix:
            raise DaguerreError(f"{given[0]} needs --face-fix", parameter="ultralytics", code="invalidParameter")
        given = [k for k, v in (("--id-weight", id_weight), ("--id-cfg-start", id_cfg_start)) if v is not None]
        if given and not id_image:
            raise DaguerreError(f"{given[0]} needs --id-image", parameter="puLID", code="invalidParameter")
        saved = None
        if character is not None:
            from daguerre.cli.studio import LOCAL_OWNER, character_store

            saved = character_store(config, None).get(LOCAL_OWNER, character)
        req = build_request(
            settings, prompt=prompt, model=model, negative=negative, width=width, height=height, steps=steps,
            guidance=guidance, true_cfg=true_cfg, seed=seed, n=n, scheduler=scheduler, image=image, mask=mask,
            strength=strength, lora=lora, controlnet=controlnet, ip_adapter=ip_adapter, outpaint=outpaint,
            mask_margin=mask_margin, tea_cache=tea_cache, db_cache=db_cache, db_cache_interval=db_cache_interval,
            cache_start=cache_start, cache_end=cache_end, cache_max_consecutive=cache_max_consecutive,
            enhance=enhance, character=saved, weighting=weighting, quality=quality,
            fmt=fmt or ("PNG" if transparent else "JPG"), layer_diffuse=LayerDiffuse() if transparent else None,
            safety=SafetyCheck(action=safety_action) if safety_check or safety_action else None,
            hires=hires_fix, hires_steps=hires_steps, hires_strength=hires_strength,
            face=FaceFix(cfg_scale=face_cfg, confidence=face_confidence, inpaint_size=face_inpaint_size,
                         mask_blur=face_mask_blur, mask_padding=face_mask_padding, positive_prompt=face_prompt,
                         negative_prompt=face_negative, steps=face_steps, strength=face_strength)
            if face_fix else None,
            id_images=id_image, id_weight=id_weight, id_cfg_start=id_cfg_start,
        )  # fmt: skip
        engine = engine_for(settings)
        if not req.model:
            req = replace(req, model=default_model(engine.models.catalog))
        written = run(engine, req, out_dir or settings.output_dir, quiet=quiet)
        for w in written[0][1].warnings if written else ():
            warn(w)
        for path, im in written:
            if im.faces is not None:
                err.print(f"{path.name}: {im.faces} face(s) enhanced", highlight=False)
            if im.nsfw:
                warn(f"{path.name}: flagged by the safety checker ({im.verdict.action})")
            typer.echo(f"{path}\tseed={im.seed}")  # plain: scripts parse these lines
    except DaguerreError as e:
        fail(e)


def stem(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "image"


def write_new(out_dir: Path, name: str, ext: str, data: bytes) -> Path:
    """Write `data` to `out_dir/name.ext`, or `name-2.ext`, `name-3.ext`... : never over an existing file.

    The file is created exclusively, so two commands writing the same name at once still get two files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 100_000):
        path = out_dir / (f"{name}.{ext}" if n == 1 else f"{name}-{n}.{ext}")
        try:
            with path.open("xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
    raise DaguerreError(f"{out_dir} holds 100000 images named {name}*; choose another --out", parameter="out")


def run(
    engine, req, out_dir: Path, *, quiet: bool = False, max_batch: int | None = None, keep: int | None = None
) -> list[tuple[Path, object]]:
    """Generate with a progress bar per image; write files; return (path, GeneratedImage)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from daguerre.request import validate

    validate(req)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    ) as progress:
        bars = [progress.add_task(f"image {i + 1}/{req.number_results}", total=None) for i in range(req.number_results)]

        def on_progress(ev):
            for i in ev.images:
                progress.update(bars[i], total=ev.total, completed=ev.step)

        result = engine.generate(req, on_progress=on_progress, max_batch=max_batch)
    written = []
    for im in result.images if keep is None else [result.images[keep]]:
        name = f"{stem(req.positive_prompt)}-{im.seed}"
        written.append((write_new(out_dir, name, EXTENSION[req.output.format], im.encode(req.output)), im))
    return written


def reproduce(
    image_path: Annotated[
        Path,
        typer.Argument(metavar="IMAGE", help="an image Daguerre wrote (never overwritten)"),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="use this model instead of the recipe's id (its weights hash must still match)"
        ),
    ] = None,
    source: Annotated[str | None, typer.Option("--image", "-i", help="the seed image, for img2img/inpaint")] = None,
    mask: Annotated[str | None, typer.Option(help="the mask, for inpaint recipes")] = None,
    guide: Annotated[
        list[str] | None, typer.Option("--guide", help="ControlNet guide images, in the recipe's order (repeatable)")
    ] = None,
    ip_guide: Annotated[
        list[str] | None,
        typer.Option("--ip-guide", help="IP-Adapter image prompts, in the recipe's order (repeatable)"),
    ] = None,
    id_image: Annotated[
        list[str] | None, typer.Option("--id-image", help="puLID reference photos, in the recipe's order (repeatable)")
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="output folder [./out]")] = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    base: Annotated[str | None, typer.Option(help="folder lending text encoders/VAE to a single-file model")] = None,
):
    """Regenerate an image from its embedded recipe; say whether bytes, pixels and recipe match (exit 1 if the
    pixels differ)."""
    from daguerre import recipe as recipes
    from daguerre.imaging import load_image

    try:
        original = image_path.read_bytes()  # read before anything is written: the output never replaces it
        r = recipes.read(image_path)
        settings = load_settings(config, device=device or r.device, dtype=dtype or r.dtype, base_model=base)
        seed_image = load_image(source, parameter="seedImage", limits=settings.image_limits) if source else None
        mask_image = load_image(mask, parameter="maskImage", limits=settings.image_limits, mask=True) if mask else None
        guides = [load_image(g, parameter="controlNet.guideImage", limits=settings.image_limits) for g in guide or ()]
        ip_guides = [
            load_image(g, parameter="ipAdapters.guideImages", limits=settings.image_limits) for g in ip_guide or ()
        ]
        id_images = [load_image(g, parameter="puLID.images", limits=settings.image_limits) for g in id_image or ()]
        req = recipes.to_request(r, model=model, seed_image=seed_image, mask_image=mask_image, guides=guides,
                                 ip_guides=ip_guides, id_images=id_images)  # fmt: skip
        engine = engine_for(settings)
        # The image's whole chunk runs again: batched results match single runs only to ~1e-5.
        [(path, im)] = run(engine, req, out_dir or settings.output_dir, max_batch=r.batch_size, keep=r.batch_index)
        if im.recipe.model_hash != r.model_hash:
            warn(f"model weights differ from the recipe's ({im.recipe.model_hash[:10]} vs {r.model_hash[:10]})")
    except OSError as e:
        fail(DaguerreError(f"cannot read {image_path}: {e.strerror or e}", parameter="image", code="invalidImage"))
    except DaguerreError as e:
        fail(e, {"controlNet.guideImage": "--guide", "ipAdapters.guideImages": "--ip-guide",
                 "puLID.images": "--id-image"})  # fmt: skip
    verdict = recipes.compare(original, path.read_bytes())
    typer.echo(f"{path}\tseed={im.seed}\t{verdict.summary()}")
    if not verdict.pixels_identical:
        sys.exit(1)
