"""The model catalog: AIR-style ids and short names -> model specs (files on disk).

Sources, in priority order: `[models.NAME]` tables in the settings TOML; FLUX.1 pipelines in
the Hugging Face cache; FLUX.1 transformer files in ComfyUI-style folders; and, at lookup
time, a path given directly. Discovery reads only JSON configs and safetensors headers, never
weights, so listing a folder of 24 GB files is instant.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from daguerre.config import OFFLOADS, PROFILES, Settings, check_choice
from daguerre.engine.models import checkpoints
from daguerre.errors import ModelLoadError, ModelNotFoundError, RequestError

log = logging.getLogger(__name__)

AIR_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*:[A-Za-z0-9._/+-]+@[A-Za-z0-9._-]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
KINDS = ("dev", "schnell", "fill", "control", "kontext", "lora", "controllora", "controlnet", "ipadapter",
         "upscaler", "detector", "transparentvae", "pulid", "evaclip", "faceanalysis",
         "faceparsing")  # fmt: skip
COMFY_SUBDIRS = ("diffusion_models", "unet", "checkpoints", "loras", "controlnet", "ipadapter")
# Image upscalers (spandrel: ESRGAN-class .pth/.safetensors) and YOLO face detectors (.pt), found by folder as
# ComfyUI keeps them; the file's kind is the folder's.
AUX_SUBDIRS = {"upscale_models": ("upscaler", (".pth", ".safetensors")),
               "ultralytics/bbox": ("detector", (".pt",)), "ultralytics": ("detector", (".pt",)),
               "vae": ("transparentvae", (".pth", ".safetensors")), "pulid": ("pulid", (".safetensors",)),
               "clip": ("evaclip", (".pt", ".pth", ".safetensors")),
               "facexlib": ("faceparsing", (".pth",))}  # fmt: skip
# puLID's face analysis: insightface's model folders (antelopev2), where ComfyUI's PuLID nodes keep them.
FACE_ANALYSIS_DIRS = ("insightface/models", "insightface")
# Of the files in vae/ only the transparent VAEs are taken (by name); ordinary VAEs there are not models of their own.
TRANSPARENT_VAE_NAME = "transparent"
EVA_NAME = "eva"  # of the files in clip/, only EVA-CLIP towers (by name) are puLID's
PARSING_NAME = "parsing"  # of facexlib's files, the face parser (its detection models are not used)
AUX_NAMES = {"transparentvae": TRANSPARENT_VAE_NAME, "evaclip": EVA_NAME, "faceparsing": PARSING_NAME}
PULID_NAME = "pulid"
# The reference API's upscaler ids, given to the same files when found (by file name, any case).
UPSCALER_IDS = {"realesrgan_x4plus": "runware:504@1", "realesrgan_x4plus_anime_6b": "runware:realesrgan@anime-6b",
                "4x-animesharp": "runware:esrgan@animesharp", "4x-ultrasharp": "runware:esrgan@ultrasharp"}  # fmt: skip
# The reference's layerDiffuse ids, given to the published files (RedAIGC/Flux-version-LayerDiffuse) by name.
LAYER_IDS = {"layerlora": "runware:120@2", "transparentvae": "runware:120@4"}
# AIR ids the hosted API uses for the Black Forest Labs originals, given to the same
# models when they are found in the Hugging Face cache.
WELL_KNOWN_AIR = {
    "black-forest-labs/FLUX.1-dev": "runware:101@1",
    "black-forest-labs/FLUX.1-schnell": "runware:100@1",
}
PIPELINE_KINDS = {"FluxFillPipeline": "fill", "FluxKontextPipeline": "kontext", "FluxControlPipeline": "control"}


@dataclass(frozen=True)
class ModelSpec:
    """One loadable model: where its files are and what it is."""

    id: str  # AIR-style source:id@version, or the absolute path for ad-hoc paths
    name: str  # short name (`flux-dev`)
    path: Path  # diffusers folder or single .safetensors / .gguf transformer file
    format: str  # "folder" | "single-file"
    kind: str  # dev | schnell | fill | control | kontext
    source: str  # catalog | hf-cache | comfyui | path
    size_bytes: int  # on disk, weights only
    base: str | None = None  # single-file: catalog id/name or folder lending encoders and VAE
    aliases: tuple[str, ...] = field(default_factory=tuple)
    image_encoder: str | None = None  # IP-Adapters: the local CLIP vision folder they need
    profile: str | None = None  # speed profile for this model (exact | fast | turbo); None = the settings'
    offload: str | None = None  # memory mode for this model (none | model | group); None = the settings'
    missing: str | None = None  # why a catalog entry cannot be used (its path is gone or unreadable); None = usable

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.id, self.name, *self.aliases)


def slug(name: str) -> str:
    """Short name from a repo or file name: `FLUX.1-dev` -> `flux-dev`."""
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    return s.replace("flux.1-", "flux-").replace("flux1-", "flux-") or "model"


def _dir_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix == ".safetensors")


def _is_face_analysis(folder: Path) -> bool:
    """An insightface model folder: ONNX files and no diffusers index."""
    return not (folder / "model_index.json").exists() and any(folder.glob("*.onnx"))


def describe_folder(folder: Path, parameter: str = "model") -> tuple[str, int]:
    """(kind, size) of a diffusers FLUX.1 folder, from model_index.json and transformer/config.json,
    or of a FLUX.1 ControlNet folder (config.json naming FluxControlNetModel)."""
    if not (folder / "model_index.json").exists() and (folder / "config.json").exists():
        try:
            cls = json.loads((folder / "config.json").read_text()).get("_class_name", "")
        except (OSError, ValueError):
            cls = ""
        if cls == "FluxControlNetModel":
            return "controlnet", _dir_size(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"{folder}: not a diffusers model folder (no readable model_index.json); expected the Hugging Face "
            "layout with model_index.json, transformer/, text_encoder/, text_encoder_2/, tokenizer/, "
            "tokenizer_2/, vae/, scheduler/",
            parameter=parameter,
        ) from e
    cls = str(index.get("_class_name", ""))
    if not cls.startswith("Flux") or cls.startswith("Flux2"):
        raise ModelLoadError(
            f"{folder}: model_index.json declares {cls or 'no pipeline'}, not a FLUX.1 pipeline", parameter=parameter
        )
    kind = PIPELINE_KINDS.get(cls)
    tconf_path = folder / "transformer" / "config.json"
    if kind is None and tconf_path.exists():
        tconf = json.loads(tconf_path.read_text())
        kind = checkpoints.KIND_BY_IN_CHANNELS.get(tconf.get("in_channels", 64)) or (
            "dev" if tconf.get("guidance_embeds", True) else "schnell"
        )
    return kind or "dev", _dir_size(folder)


def spec_for_path(
    path: Path,
    *,
    base: str | None,
    source: str = "path",
    name: str | None = None,
    id: str | None = None,
    kind: str | None = None,
    aliases: tuple[str, ...] = (),
    image_encoder: str | None = None,
    profile: str | None = None,
    offload: str | None = None,
    parameter: str = "model",
) -> ModelSpec:
    """Build a spec for a folder or single file, inspecting it (headers and configs only)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"{parameter} path {path} does not exist", parameter=parameter)
    if path.is_dir() and (kind == "faceanalysis" or _is_face_analysis(path)):
        found_kind, size, fmt = "faceanalysis", _dir_size(path), "folder"
    elif path.is_dir():
        found_kind, size = describe_folder(path, parameter=parameter)
        fmt = "folder"
    elif (
        kind in ("pulid", "evaclip", "faceparsing")
        or path.stem.lower().startswith(PULID_NAME)
        or (path.suffix.lower() in (".pt", ".pth") and any(n in path.stem.lower() for n in (EVA_NAME, PARSING_NAME)))
    ):
        stem = path.stem.lower()
        found_kind = kind or (
            "pulid" if stem.startswith(PULID_NAME) else "faceparsing" if PARSING_NAME in stem else "evaclip"
        )
        size, fmt = path.stat().st_size, "single-file"
    elif path.suffix.lower() in (".pth", ".pt") or TRANSPARENT_VAE_NAME in path.stem.lower():
        # Pickled weights are never FLUX.1 files: upscalers (.pth), YOLO detectors (.pt) and transparent VAEs (by
        # name, .pth or .safetensors), read only when used.
        found_kind = "detector" if path.suffix.lower() == ".pt" else "upscaler"
        if TRANSPARENT_VAE_NAME in path.stem.lower():
            found_kind = "transparentvae"
        size, fmt = path.stat().st_size, "single-file"
    else:
        try:
            info = checkpoints.inspect(path)
        except ModelLoadError as e:
            e.parameter = parameter
            raise
        found_kind, size, fmt = info.kind, info.size_bytes, "single-file"
    if kind is not None and kind not in KINDS:
        raise RequestError(f"model kind {kind!r} for {path} is not one of {', '.join(KINDS)}", parameter="kind")
    return ModelSpec(
        id=id or str(path.resolve()),
        name=name or slug(path.stem if path.is_file() else path.name),
        path=path.resolve(),
        format=fmt,
        kind=kind or found_kind,
        source=source,
        size_bytes=size,
        base=base if fmt == "single-file" else None,
        aliases=aliases,
        # An IP-Adapter without an explicit encoder uses an image_encoder/ folder beside it, if any.
        image_encoder=image_encoder
        or (
            str(path.parent / "image_encoder")
            if found_kind == "ipadapter" and (path.parent / "image_encoder").is_dir()
            else None
        ),
        profile=profile,
        offload=offload,
    )


def discover_hf_cache(cache: Path) -> list[ModelSpec]:
    """FLUX.1 pipelines in a Hugging Face hub cache (`models--ORG--NAME/snapshots/REV/`)."""
    specs = []
    if not cache.is_dir():
        return specs
    for repo in sorted(cache.glob("models--*--*")):
        org, _, name = repo.name[len("models--") :].partition("--")
        snap = _snapshot(repo)
        if snap is None or not (snap / "model_index.json").exists():
            continue
        try:
            kind, size = describe_folder(snap)
        except (ModelLoadError, ValueError) as e:
            log.debug("skipping %s: %s", snap, e)
            continue
        repo_id = f"{org}/{name}"
        air = WELL_KNOWN_AIR.get(repo_id)
        specs.append(
            ModelSpec(
                id=f"hf:{repo_id}@{snap.name[:8]}",
                name=slug(name),
                path=snap,
                format="folder",
                kind=kind,
                source="hf-cache",
                size_bytes=size,
                aliases=(air,) if air else (),
            )
        )
    return specs


def _snapshot(repo: Path) -> Path | None:
    ref = repo / "refs" / "main"
    if ref.exists():
        snap = repo / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            return snap
    snaps = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    return snaps[-1] if snaps else None


def discover_model_dirs(dirs: list[Path], *, base: str | None) -> list[ModelSpec]:
    """FLUX.1 transformer files in ComfyUI-style folders; other models there are skipped. Upscalers and face
    detectors come from their own folders (AUX_SUBDIRS)."""
    specs = []
    seen: set[Path] = set()
    for root in dirs:
        for sub, (kind, suffixes) in AUX_SUBDIRS.items():
            for folder in (root / "models" / sub, root / sub):
                for f in sorted(folder.iterdir()) if folder.is_dir() else ():
                    if f.suffix.lower() not in suffixes or f.resolve() in seen:
                        continue
                    seen.add(f.resolve())
                    if kind in AUX_NAMES and AUX_NAMES[kind] not in f.stem.lower():
                        continue
                    known = UPSCALER_IDS.get(f.stem.lower()) if kind == "upscaler" else LAYER_IDS.get(f.stem.lower())
                    specs.append(ModelSpec(id=known or f"{kind}:{slug(f.stem)}@1", name=slug(f.stem),
                                           path=f.resolve(), format="single-file", kind=kind, source="comfyui",
                                           size_bytes=f.stat().st_size))  # fmt: skip
        for sub in FACE_ANALYSIS_DIRS:
            for parent in (root / "models" / sub, root / sub):
                for f in sorted(parent.iterdir()) if parent.is_dir() else ():
                    if f.is_dir() and f.resolve() not in seen and _is_face_analysis(f):
                        seen.add(f.resolve())
                        specs.append(ModelSpec(id=f"faceanalysis:{slug(f.name)}@1", name=slug(f.name),
                                               path=f.resolve(), format="folder", kind="faceanalysis",
                                               source="comfyui", size_bytes=_dir_size(f)))  # fmt: skip
    for root in dirs:
        for sub in COMFY_SUBDIRS:
            for folder in (root / "models" / sub, root / sub):
                files = [*folder.glob("*.safetensors"), *folder.glob("*.gguf")] if folder.is_dir() else []
                for f in sorted(files):
                    try:
                        info = checkpoints.inspect(f)
                    except Exception as e:  # noqa: BLE001 - any non-FLUX file is skipped, not fatal
                        log.debug("skipping %s: %s", f, e)
                        continue
                    specs.append(
                        ModelSpec(
                            id=LAYER_IDS.get(f.stem.lower())
                            if info.kind == "lora" and f.stem.lower() in LAYER_IDS
                            else f"{'lora' if info.kind in ('lora', 'controllora') else 'comfyui'}:{f.stem}@1",
                            name=slug(f.stem),
                            path=f.resolve(),
                            format="single-file",
                            kind=info.kind,
                            source="comfyui",
                            size_bytes=info.size_bytes,
                            base=base,
                        )
                    )
    return specs


class Catalog:
    """Resolves a model reference (AIR id, short name, alias or path) to a ModelSpec."""

    def __init__(self, specs: list[ModelSpec], *, default_base: str | None = None, allow_paths: bool = True):
        self.default_base = default_base
        self.allow_paths = allow_paths  # whether get() takes a path (the CLI) or only catalog keys (a server)
        self._specs: list[ModelSpec] = []
        self._index: dict[str, ModelSpec] = {}
        for spec in specs:
            self.add(spec)

    @classmethod
    def from_settings(cls, settings: Settings, *, allow_paths: bool = True) -> Catalog:
        specs = [_from_table(name, table, settings) for name, table in settings.models.items()]
        if settings.discover:
            specs += discover_hf_cache(settings.hf_cache)
            specs += discover_model_dirs(settings.model_dirs, base=settings.base_model)
        default_base = settings.base_model
        if default_base is None:
            folders = [s for s in specs if s.format == "folder" and s.kind in ("dev", "schnell") and not s.missing]
            default_base = folders[0].id if folders else None
        return cls(specs, default_base=default_base, allow_paths=allow_paths)

    def add(self, spec: ModelSpec) -> None:
        """Register a spec; a name taken by an earlier (higher-priority) spec gets a numeric suffix."""
        if spec.id in self._index:
            log.debug("duplicate model id %s (%s) ignored", spec.id, spec.path)
            return
        name, n = spec.name, 2
        while name in self._index:
            name, n = f"{spec.name}-{n}", n + 1
        spec = replace(spec, name=name, aliases=tuple(a for a in spec.aliases if a not in self._index))
        self._specs.append(spec)
        for key in spec.keys:
            self._index[key] = spec

    def __iter__(self):
        """Every entry, unusable ones (`missing` set) included: listings show them, lookups refuse them."""
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def available(self) -> list[ModelSpec]:
        """The entries that can be loaded (their files are there)."""
        return [s for s in self._specs if not s.missing]

    def get(self, ref: str, *, parameter: str = "model", allow_paths: bool | None = None) -> ModelSpec:
        """The spec for an id, name, alias, or (allow_paths) a path to a folder or .safetensors / .gguf file.

        allow_paths None: the catalog's own rule (`Catalog(allow_paths=...)`).

        `parameter` is the request field the reference came from (lora.model, controlNet.model...): errors
        name it. Without allow_paths (the network's rule) anything but a catalog key gets one answer, the
        same for an existing file, a missing one and a folder, so a client learns nothing about the disk.
        """
        if not isinstance(ref, str) or not ref.strip():
            raise RequestError(
                f"{parameter} must be a catalog id, a short name or a path; got {ref!r}", parameter=parameter
            )
        allow_paths = self.allow_paths if allow_paths is None else allow_paths
        spec = self._index.get(ref)
        if spec is not None and (allow_paths or spec.source != "path"):
            if spec.missing:
                raise ModelNotFoundError(f"{parameter} {ref!r}: {spec.missing}", parameter=parameter)
            return spec
        if allow_paths and ("/" in ref or ref.endswith((".safetensors", ".gguf")) or ref.startswith((".", "~"))):
            path = Path(ref).expanduser()
            if path.exists():
                spec = spec_for_path(path, base=self.default_base, parameter=parameter)
                self._index.setdefault(spec.id, spec)
                return spec
        known = ", ".join(sorted(s.name for s in self._specs if not s.missing)[:20]) or "none (see docs/models.md)"
        where = (
            "is not in the catalog and is not an existing path"
            if allow_paths
            else ("is not a model id, name or alias in this server's catalog")
        )
        raise ModelNotFoundError(f"{parameter} {ref!r} {where}; known models: {known}", parameter=parameter)

    def resolve_base(self, spec: ModelSpec) -> Path:
        """The folder that lends text encoders, tokenizers and VAE to a single-file model."""
        ref = spec.base or self.default_base
        if ref is None:
            raise ModelLoadError(
                f"{spec.path} is a single-file transformer and needs a base folder for its text encoders, "
                'tokenizers and VAE: pass --base FOLDER on the command line, or set base = "<folder or catalog '
                'id>" on its catalog entry or base_model in the settings (any FLUX.1-dev/schnell diffusers '
                "folder works)",
                parameter="model",
            )
        path = Path(ref).expanduser()
        if path.is_dir():
            return path.resolve()
        base = self.get(ref)
        if base.format != "folder":
            raise ModelLoadError(f"base {ref!r} of {spec.name} is a single file; it must be a diffusers folder")
        return base.path


def _from_table(name: str, table: dict, settings: Settings) -> ModelSpec:
    if not NAME_RE.match(name):
        raise RequestError(f"catalog name {name!r} must be letters, digits, '.', '_' or '-'", parameter="models")
    unknown = set(table) - {"id", "path", "base", "kind", "aliases", "image_encoder", "profile", "offload"}
    if unknown:
        raise RequestError(
            f"catalog entry {name!r} has unknown keys {sorted(unknown)}; allowed: id, path, base, kind, aliases, "
            "image_encoder, profile, offload",
            parameter="models",
        )
    if table.get("profile") is not None:
        check_choice("profile", table["profile"], PROFILES)
    if table.get("offload") is not None:
        check_choice("offload", table["offload"], OFFLOADS)
    if "path" not in table:
        raise RequestError(f"catalog entry {name!r} needs a path", parameter="models")
    air = table.get("id")
    if air is not None and not AIR_RE.match(air):
        raise RequestError(
            f"catalog entry {name!r}: id {air!r} is not AIR-style 'source:id@version' (e.g. rundiffusion:130@100)",
            parameter="models",
        )
    base = table.get("base", settings.base_model)
    if base is not None and ("/" in base or base.startswith((".", "~"))):  # a folder, not a catalog id
        base = _resolve(base, settings)
    kind = table.get("kind")
    if kind is not None and kind not in KINDS:
        raise RequestError(f"catalog entry {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}",
                           parameter="models")  # fmt: skip
    path = Path(_resolve(table["path"], settings))
    fields_ = dict(
        source="catalog",
        name=name,
        id=air or f"local:{name}@1",
        aliases=tuple(table.get("aliases", ())),
        profile=table.get("profile"),
        offload=table.get("offload"),
    )
    try:
        spec = spec_for_path(
            path, base=base, kind=kind, image_encoder=_resolve(table.get("image_encoder"), settings), **fields_
        )
        known = UPSCALER_IDS.get(path.stem.lower()) if spec.kind == "upscaler" else None
        if spec.kind in ("lora", "transparentvae"):
            known = LAYER_IDS.get(path.stem.lower())
        if known and known != spec.id and known not in spec.aliases:  # the reference id of that file
            spec = replace(spec, aliases=(*spec.aliases, known))
        return spec
    except (ModelNotFoundError, ModelLoadError) as e:
        # One entry whose file is gone (an unplugged disk, a typo) must not hide the others: it is listed as
        # missing, and only a request for it fails, with this reason.
        why = f"{path} does not exist" if isinstance(e, ModelNotFoundError) else e.message
        return ModelSpec(path=path.expanduser(), format="missing", kind=kind or "unknown", size_bytes=0,
                         missing=f"catalog entry {name!r} is unavailable: {why}", **fields_)  # fmt: skip


def _resolve(path: str | None, settings: Settings) -> str | None:
    """A catalog path: ~ expanded, relative to the catalog file's folder."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() or settings.catalog_root is None else settings.catalog_root / p)
