"""The `daguerre` command: generate, models, reproduce. Thin: parse, hand off, print."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from daguerre.errors import DaguerreError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Photoreal FLUX.1 image generation.")
# soft_wrap: a message is one line however narrow the terminal (scripts grep them; terminals wrap anyway)
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

# Request parameter (as errors name it) -> the flag a CLI user typed.
FLAGS = {
    "positivePrompt": "PROMPT",
    "negativePrompt": "--negative",
    "width": "--width",
    "height": "--height",
    "steps": "--steps",
    "CFGScale": "--guidance",
    "trueCFGScale": "--true-cfg",
    "seed": "--seed",
    "numberResults": "-n",
    "scheduler": "--scheduler",
    "seedImage": "--image",
    "maskImage": "--mask",
    "strength": "--strength",
    "outputFormat": "--format",
    "outputQuality": "--quality",
    "model": "--model",
    "lora": "--lora",
    "lora.model": "--lora",
    "lora.weight": "--lora",
    "outpaint": "--outpaint",
    "maskMargin": "--mask-margin",
    "promptWeighting": "--prompt-weighting",
    "controlNet": "--controlnet",
    "controlNet.model": "--controlnet",
    "controlNet.weight": "--controlnet",
    "controlNet.guideImage": "--controlnet",
    "controlNet.controlType": "--controlnet",
    "ipAdapters": "--ip-adapter",
    "ipAdapters.model": "--ip-adapter",
    "ipAdapters.weight": "--ip-adapter",
    "ipAdapters.guideImages": "--ip-adapter",
    "character": "--character",
    "profile": "--profile",
    "offload": "--offload",
    "t5": "--t5",
    "acceleratorOptions": "--tea-cache/--db-cache",
    "acceleratorOptions.teaCache": "--tea-cache",
    "acceleratorOptions.teaCacheDistance": "--tea-cache",
    "acceleratorOptions.dbCache": "--db-cache",
    "acceleratorOptions.dbCacheThreshold": "--db-cache",
    "acceleratorOptions.dbCacheSkipInterval": "--db-cache-interval",
    "acceleratorOptions.cacheStartStepPercentage": "--cache-start",
    "acceleratorOptions.cacheEndStepPercentage": "--cache-end",
    "acceleratorOptions.cacheMaxConsecutiveSteps": "--cache-max-consecutive",
    "enhancePrompt": "--enhance-prompt",
    "port": "--port",
    "host": "--host",
}
EXTENSIONS = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="settings TOML (models, folders, device)")]
DeviceOpt = Annotated[str | None, typer.Option(help="cuda | mps | cpu (default: best available)")]
DtypeOpt = Annotated[str | None, typer.Option(help="bfloat16 | float16 | float32 (default: bf16 GPU, fp32 CPU)")]
OffloadOpt = Annotated[
    str | None, typer.Option(help="memory mode for small GPUs: none | model | group (CUDA only) [settings: none]")
]
T5Opt = Annotated[str | None, typer.Option("--t5", help="where T5 runs: device | cpu | int8 [settings: device]")]


def _fail(e: DaguerreError, flags: dict[str, str] | None = None) -> None:
    """Print a user error with the flag it concerns (and the API name) and exit 2.

    `flags` overrides the flag for a parameter where a command spells it differently.
    """
    flag = {**FLAGS, **(flags or {})}.get(e.parameter or "")
    prefix = f"{flag} ({e.parameter}): " if flag else ""
    err.print(f"[bold red]error[/]: {escape(prefix + e.message)}", highlight=False)
    raise typer.Exit(2)


def _settings(config: Path | None, **overrides):
    from daguerre.config import Settings

    return Settings.load(config, **overrides)


def _engine(settings):
    from daguerre.engine.catalog import Catalog
    from daguerre.logs import quiet_libraries

    quiet_libraries()  # our own bars report progress; the libraries' per-file loading bars are noise here
    from daguerre.engine.generate import Engine
    from daguerre.engine.models import ModelManager

    catalog = Catalog.from_settings(settings)
    manager = ModelManager(
        catalog=catalog,
        device=settings.device,
        dtype=settings.dtype,
        memory_budget_gb=settings.memory_budget_gb,
        cache_dir=settings.cache_dir,
        profile=settings.profile,
        compile_=settings.compile,
        offload=settings.offload,
        t5=settings.t5,
        attention=settings.attention,
    )
    return Engine(models=manager, max_batch=settings.max_batch, default_negative=settings.default_negative_prompt)


def _default_model(engine) -> str:
    specs = engine.models.catalog.available()
    if len(specs) == 1:
        return specs[0].id
    names = ", ".join(s.name for s in specs) or "none found"
    raise DaguerreError(
        f"--model is required when the catalog does not hold exactly one model (catalog: {names})",
        parameter="model",
        code="invalidParameter",
    )


def _control_ref(value: str, limits):
    """--controlnet REF,GUIDE[,weight=W][,start=PCT][,end=PCT][,mode=M][,type=T][,canny]."""
    from daguerre.imaging import load_image
    from daguerre.request import ControlRef

    parts = [p.strip() for p in value.split(",")]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise DaguerreError(
            f"--controlnet takes REF,GUIDE_IMAGE[,options], got {value!r}",
            parameter="controlNet",
            code="invalidParameter",
        )
    kwargs: dict = {}
    names = {
        "weight": ("weight", float),
        "start": ("start_percent", int),
        "end": ("end_percent", int),
        "mode": ("mode", str),
        "type": ("control_type", str),
    }
    for option in parts[2:]:
        key, sep, raw = option.partition("=")
        if option == "canny":
            kwargs["preprocessor"] = "canny"
        elif sep and key in names:
            field, cast = names[key]
            try:
                kwargs[field] = cast(raw)
            except ValueError:
                raise DaguerreError(
                    f"--controlnet {key} must be a number, got {raw!r}", parameter="controlNet", code="invalidParameter"
                ) from None
        else:
            raise DaguerreError(
                f"--controlnet option {option!r} is not one of weight=, start=, end=, mode=, type=, canny",
                parameter="controlNet",
                code="invalidParameter",
            )
    guide = load_image(parts[1], parameter="controlNet.guideImage", limits=limits)
    return ControlRef(model=parts[0], guide_image=guide, **kwargs)


def _ip_ref(value: str, limits):
    """--ip-adapter REF,IMAGE[,IMAGE...][,weight=W]."""
    from daguerre.imaging import load_image
    from daguerre.request import IpAdapterRef

    parts = [p.strip() for p in value.split(",") if p.strip()]
    weights = [p for p in parts[1:] if p.startswith("weight=")]
    images = [p for p in parts[1:] if not p.startswith("weight=")]
    if not parts or not images:
        raise DaguerreError(
            f"--ip-adapter takes REF,IMAGE[,IMAGE...][,weight=W], got {value!r}",
            parameter="ipAdapters",
            code="invalidParameter",
        )
    try:
        weight = float(weights[-1].partition("=")[2]) if weights else 1.0
    except ValueError:
        raise DaguerreError(
            f"--ip-adapter weight must be a number, got {weights[-1]!r}",
            parameter="ipAdapters",
            code="invalidParameter",
        ) from None
    guides = tuple(load_image(x, parameter="ipAdapters.guideImages", limits=limits) for x in images)
    return IpAdapterRef(model=parts[0], guide_images=guides, weight=weight)


def _outpaint(value: str):
    """--outpaint 'top=64,left=32' -> Outpaint."""
    from daguerre.request import Outpaint

    sides = {}
    for part in value.split(","):
        key, sep, number = part.strip().partition("=")
        if not sep or key not in ("top", "bottom", "left", "right", "blur") or not number.strip().isdigit():
            raise DaguerreError(
                f"--outpaint takes 'top=N,bottom=N,left=N,right=N[,blur=N]', got {value!r}",
                parameter="outpaint",
                code="invalidParameter",
            )
        sides[key] = int(number)
    return Outpaint(**sides)


def _lora_ref(value: str):
    """--lora REF[=WEIGHT]."""
    from daguerre.request import LoraRef

    ref, sep, weight = value.rpartition("=") if "=" in value else (value, "", "")
    if not sep:
        return LoraRef(model=value)
    try:
        return LoraRef(model=ref, weight=float(weight))
    except ValueError:
        raise DaguerreError(
            f"--lora weight must be a number, got {weight!r}", parameter="lora.weight", code="invalidParameter"
        ) from None


def _stem(prompt: str) -> str:
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


def _run(
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
        name = f"{_stem(req.positive_prompt)}-{im.seed}"
        written.append((write_new(out_dir, name, EXTENSIONS[req.output.format], im.encode(req.output)), im))
    return written


@app.command()
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
    weighting: Annotated[
        str | None,
        typer.Option(
            "--prompt-weighting", help="compel | sdEmbeds: read weights like (word)1.2 or (word:1.2) in the prompts"
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="JPG | PNG | WEBP")] = "JPG",
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
    from dataclasses import replace

    from daguerre.imaging import load_image
    from daguerre.request import AccelOptions, GenerationRequest, OutputSpec, validate

    try:
        extra = {
            k: v
            for k, v in (("profile", profile), ("compile", compile_), ("offload", offload), ("t5", t5))
            if v is not None
        }
        settings = _settings(config, device=device, dtype=dtype, base_model=base, **extra)
        seed_image = load_image(image, parameter="seedImage", limits=settings.image_limits) if image else None
        mask_image = load_image(mask, parameter="maskImage", limits=settings.image_limits, mask=True) if mask else None
        extend = _outpaint(outpaint) if outpaint else None
        if extend is not None and seed_image is not None and width is None and height is None:
            width = seed_image.width + extend.left + extend.right
            height = seed_image.height + extend.top + extend.bottom
        if seed_image is not None and (width is None or height is None):
            # Default to the source's size, rounded down to the 64-pixel grid.
            width = width or max(128, min(2048, seed_image.width // 64 * 64))
            height = height or max(128, min(2048, seed_image.height // 64 * 64))
        if negative is not None and (true_cfg or 0) <= 1:
            err.print(
                "note: --negative acts only with --true-cfg > 1 (as in the reference API); it is recorded "
                "but not used for this image",
                highlight=False,
            )
        if character is not None:
            from daguerre.cli_studio import LOCAL_OWNER, _store

            prompt, seed = _store(config, None).get(LOCAL_OWNER, character).resolve(prompt, seed)
        accel = AccelOptions(
            tea_cache=tea_cache is not None,
            tea_cache_distance=tea_cache,
            db_cache=db_cache is not None,
            db_cache_threshold=db_cache,
            db_cache_skip_interval=db_cache_interval,
            cache_start_percent=cache_start,
            cache_end_percent=cache_end,
            cache_max_consecutive=cache_max_consecutive,
        )
        req = GenerationRequest(
            accelerator=accel,
            enhance_prompt=enhance,
            character=character,
            model=model or "",
            positive_prompt=prompt,
            negative_prompt=negative,
            width=width or 1024,
            height=height or 1024,
            steps=steps,
            guidance=guidance,
            true_cfg_scale=true_cfg,
            seed=seed,
            number_results=n,
            scheduler=scheduler,
            seed_image=seed_image,
            mask_image=mask_image,
            strength=strength,
            output=OutputSpec(format=fmt.upper(), quality=quality),
            loras=tuple(_lora_ref(v) for v in lora or ()),
            outpaint=extend,
            mask_margin=mask_margin,
            prompt_weighting=weighting,
            controlnets=tuple(_control_ref(v, settings.image_limits) for v in controlnet or ()),
            ip_adapters=tuple(_ip_ref(v, settings.image_limits) for v in ip_adapter or ()),
        )
        # Every flag is checked before torch is imported or a model is looked up: a typo answers at once.
        validate(replace(req, model=req.model or "the catalog's only model"))
        engine = _engine(settings)
        if not req.model:
            req = replace(req, model=_default_model(engine))
        written = _run(engine, req, out_dir or settings.output_dir, quiet=quiet)
        for w in written[0][1].warnings if written else ():
            err.print(f"[yellow]warning[/]: {escape(w)}", highlight=False)
        for path, im in written:
            typer.echo(f"{path}\tseed={im.seed}")  # plain: scripts parse these lines
    except DaguerreError as e:
        _fail(e)


@app.command()
def models(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
):
    """List the models the catalog knows: ids, kinds, paths, sizes."""
    from daguerre.engine.catalog import Catalog

    try:
        catalog = Catalog.from_settings(_settings(config))
    except DaguerreError as e:
        _fail(e)
    rows = [
        {
            "id": s.id,
            "name": s.name,
            "aliases": list(s.aliases),
            "kind": s.kind,
            "format": s.format,
            "source": s.source,
            "path": str(s.path),
            "size_gb": round(s.size_bytes / 1e9, 2),
            "base": s.base,
            "available": not s.missing,
            "problem": s.missing,
        }
        for s in catalog
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print(
            "no models found: add \\[models.NAME] entries to a --config file, or set model_dirs / hf_cache "
            "(see README: 'Point it at your weights')"
        )
        return
    cells = [
        [
            r["id"],
            r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else ""),
            r["kind"],
            r["format"] if r["available"] else "MISSING",
            f"{r['size_gb']:.2f} GB" if r["available"] else "-",
            r["path"],
        ]
        for r in rows
    ]
    if not out.is_terminal:  # piped: whole values, tab-separated, never truncated
        for row in cells:
            typer.echo("\t".join(row))
    else:
        table = Table("id", "name", "kind", "format", "size", "path")
        for row in cells:
            table.add_row(*row)
        out.print(table)
    for r in rows:
        if not r["available"]:
            err.print(f"[yellow]warning[/]: {escape(r['problem'])}", highlight=False)


@app.command()
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
        settings = _settings(config, device=device or r.device, dtype=dtype or r.dtype, base_model=base)
        seed_image = load_image(source, parameter="seedImage", limits=settings.image_limits) if source else None
        mask_image = load_image(mask, parameter="maskImage", limits=settings.image_limits, mask=True) if mask else None
        guides = [load_image(g, parameter="controlNet.guideImage", limits=settings.image_limits) for g in guide or ()]
        ip_guides = [
            load_image(g, parameter="ipAdapters.guideImages", limits=settings.image_limits) for g in ip_guide or ()
        ]
        req = recipes.to_request(
            r, model=model, seed_image=seed_image, mask_image=mask_image, guides=guides, ip_guides=ip_guides
        )
        engine = _engine(settings)
        # The image's whole chunk runs again: batched results match single runs only to ~1e-5.
        [(path, im)] = _run(engine, req, out_dir or settings.output_dir, max_batch=r.batch_size, keep=r.batch_index)
        if im.recipe.model_hash != r.model_hash:
            err.print(
                f"[yellow]warning[/]: model weights differ from the recipe's "
                f"({im.recipe.model_hash[:10]} vs {r.model_hash[:10]})"
            )
    except OSError as e:
        _fail(DaguerreError(f"cannot read {image_path}: {e.strerror or e}", parameter="image", code="invalidImage"))
    except DaguerreError as e:
        _fail(e, {"controlNet.guideImage": "--guide", "ipAdapters.guideImages": "--ip-guide"})
    verdict = recipes.compare(original, path.read_bytes())
    typer.echo(f"{path}\tseed={im.seed}\t{verdict.summary()}")
    if not verdict.pixels_identical:
        sys.exit(1)


def _model_entry(value: str) -> tuple[str, dict]:
    """--model ID=PATH: an AIR-style id becomes the id (short name from the file), anything else the name."""
    from daguerre.engine.catalog import AIR_RE, slug

    ref, sep, path = value.partition("=")
    if not sep or not ref or not path:
        raise DaguerreError(f"--model takes ID=PATH, got {value!r}", parameter="model", code="invalidParameter")
    if AIR_RE.match(ref):
        return slug(Path(path).stem if path.endswith(".safetensors") else Path(path).name), {"id": ref, "path": path}
    return ref, {"path": path}


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address [127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port [8000]")] = None,
    config: ConfigOpt = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="serve ID=PATH without a config file (repeatable)")
    ] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", help="accept this key (repeatable; also env DAGUERRE_API_KEYS, comma-separated)"),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="build and serve a small random-weight model (images are noise) to try the API without weights",
        ),
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="jobs, keys, images [./daguerre-data]")] = None,
    preload: Annotated[
        list[str] | None,
        typer.Option(help="load (and compile) this model before reporting ready (repeatable; --demo: the demo)"),
    ] = None,
    profile: Annotated[str | None, typer.Option(help="speed profile: exact | fast | turbo [settings: exact]")] = None,
    offload: OffloadOpt = None,
    t5: T5Opt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    base: Annotated[str | None, typer.Option(help="folder lending text encoders/VAE to single-file models")] = None,
):
    """Serve the Runware-compatible task API (REST POST /v1, WebSocket /v1)."""
    import os

    import uvicorn

    from daguerre.api.app import create_app

    try:
        settings = _settings(config, device=device, dtype=dtype, base_model=base, offload=offload, t5=t5,
                             profile=profile)  # fmt: skip
        from daguerre.config import ServerSettings

        flags = {"host": host, "port": port, "data_dir": data_dir, "preload": preload}
        given = {k: v for k, v in flags.items() if v is not None}
        srv = _validated(ServerSettings, {**settings.server.model_dump(), **given})
        # The port first: a taken port is said before any model is looked at or anything is claimed.
        sock = _bind(srv.host, srv.port)
        env_keys = [k.strip() for k in os.environ.get("DAGUERRE_API_KEYS", "").split(",") if k.strip()]
        srv.api_keys = [*srv.api_keys, *env_keys, *(api_key or [])]
        models = dict(settings.models)
        for value in model or []:
            name, entry = _model_entry(value)
            models[name] = entry
        if demo:
            from daguerre.testing.tiny import build

            folder = srv.data_dir / "demo-model"
            if not (folder / "model_index.json").exists():
                err.print("building the demo model (random weights, about 1 MB)...")
                build(folder, layout="folder", seed=0)
            models = {"demo": {"id": "daguerre:demo@1", "path": str(folder.resolve())}}
        settings = settings.model_copy(
            update={"server": srv, "models": models, "discover": settings.discover and not demo}
        )
        engine = _engine(settings)
        if not engine.models.catalog.available():
            raise DaguerreError(
                "no models to serve: pass --model ID=PATH, a --config with [models.*], or --demo",
                parameter="model",
                code="modelNotFound",
            )
        application = create_app(settings, engine=engine, demo=demo)
    except DaguerreError as e:
        _fail(e)
    shown = "127.0.0.1" if srv.host in ("0.0.0.0", "::", "") else srv.host
    base_url = f"http://{shown}:{sock.getsockname()[1]}"
    err.print(
        f"serving {len(engine.models.catalog)} model(s){' [demo: random weights]' if demo else ''}\n"
        f"  open      {base_url}/\n"
        f"  task API  {base_url}/v1 (REST) and ws://{shown}:{sock.getsockname()[1]}/v1 (WebSocket)\n"
        f"  API docs  {base_url}/docs (OpenAPI: {base_url}/openapi.json)\n"
        "  stop with Ctrl+C (or SIGTERM): the running job finishes first",
        highlight=False,
        markup=False,
    )
    from daguerre.logs import configure

    configure()
    config_ = uvicorn.Config(
        application,
        log_config=None,
        host=srv.host,
        port=srv.port,
        log_level="info",
        timeout_graceful_shutdown=int(srv.drain_timeout_s) or None,
        ws_max_size=srv.max_body_bytes,
    )
    uvicorn.Server(config_).run(sockets=[sock])


def _validated(model, values: dict):
    """A settings model built from flag values, with pydantic's range checks as one-line errors."""
    from pydantic import ValidationError

    try:
        return model.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        name = ".".join(map(str, first["loc"]))
        raise DaguerreError(f"{name}: {first['msg']} (got {first.get('input')!r})", parameter=name,
                            code="invalidParameter") from None  # fmt: skip


def _bind(host: str, port: int):
    """A listening socket on host:port, or a DaguerreError saying the port is taken (and what to do)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise DaguerreError(f"cannot bind to host {host!r}: {e.strerror}", parameter="host",
                            code="invalidParameter") from e  # fmt: skip
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise DaguerreError(
                f"port {port} on {host} is already in use (another server?); choose a free one with --port",
                parameter="port",
                code="invalidParameter",
            ) from e
        raise DaguerreError(f"cannot listen on {host}:{port}: {e.strerror}", parameter="port",
                            code="invalidParameter") from e  # fmt: skip
    sock.set_inheritable(True)
    return sock


keys_app = typer.Typer(help="API keys: create and list (only hashes are stored).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    label: Annotated[str, typer.Option(help="a note to recognise the key by")] = "",
    config: ConfigOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="the server's data folder [./daguerre-data]")] = None,
):
    """Create an API key and print it once."""
    from daguerre.api.app import server_secret
    from daguerre.api.keys import KeyStore
    from daguerre.jobs.delivery import derived_webhook_secret

    settings = _settings(config)
    folder = data_dir or settings.server.data_dir
    folder.mkdir(parents=True, exist_ok=True)
    key_id, key = KeyStore(folder / "keys.sqlite3").create(label)
    err.print(f"key id {key_id}; the key is shown once, store it now.", highlight=False)
    err.print(
        f"webhook signing secret (Standard Webhooks): {derived_webhook_secret(server_secret(folder), key_id)}",
        highlight=False,
    )
    typer.echo(key)


@keys_app.command("webhook-secret")
def keys_webhook_secret(
    key: Annotated[str, typer.Argument(help="the API key (or its key id k_...)")],
    config: ConfigOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="the server's data folder [./daguerre-data]")] = None,
):
    """Print the Standard Webhooks secret that signs this key's webhooks."""
    from daguerre.api.app import server_secret
    from daguerre.api.keys import digest, key_id
    from daguerre.jobs.delivery import derived_webhook_secret

    settings = _settings(config)
    owner = key if key.startswith("k_") else key_id(digest(key))
    typer.echo(derived_webhook_secret(server_secret(data_dir or settings.server.data_dir), owner))


@keys_app.command("list")
def keys_list(
    config: ConfigOpt = None,
    data_dir: Annotated[Path | None, typer.Option(help="the server's data folder [./daguerre-data]")] = None,
):
    """List key ids and labels (the keys themselves are not stored)."""
    from daguerre.api.keys import KeyStore

    settings = _settings(config)
    for key_id, label, _created in KeyStore((data_dir or settings.server.data_dir) / "keys.sqlite3").list():
        typer.echo(f"{key_id}\t{label}")


from daguerre import cli_studio  # noqa: E402,F401 - registers `prompt` and `characters`

if __name__ == "__main__":
    app()
