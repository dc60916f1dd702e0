"""The catalog: TOML entries with AIR ids and short names, discovery, path lookup, errors."""

from __future__ import annotations

import shutil

import pytest

from daguerre.config import Settings
from daguerre.engine.models.catalog import Catalog, slug
from daguerre.errors import ModelLoadError, ModelNotFoundError, RequestError


def _toml(tmp_path, body: str):
    path = tmp_path / "daguerre.toml"
    path.write_text(body)
    return Settings.load(path, discover=False, cache_dir=str(tmp_path / "cache"))


def test_toml_entries_resolve_by_air_id_name_and_alias(tmp_path, tiny_folder, tiny_single):
    s = _toml(
        tmp_path,
        f"""
[models.flux-dev]
id = "runware:101@1"
path = "{tiny_folder.model_path}"

[models.juggernaut-pro]
id = "rundiffusion:130@100"
path = "{tiny_single.model_path}"
base = "flux-dev"
aliases = ["jugg"]
""",
    )
    cat = Catalog.from_settings(s)
    jugg = cat.get("rundiffusion:130@100")
    assert jugg is cat.get("juggernaut-pro") is cat.get("jugg")
    assert (jugg.format, jugg.kind, jugg.source) == ("single-file", "dev", "catalog")
    assert cat.resolve_base(jugg) == tiny_folder.model_path.resolve()
    dev = cat.get("flux-dev")
    assert dev.id == "runware:101@1" and dev.format == "folder" and dev.size_bytes > 0


def test_relative_catalog_paths_resolve_against_the_file(tmp_path, tiny_folder):
    shutil.copytree(tiny_folder.model_path, tmp_path / "models" / "dev")
    s = _toml(tmp_path, '[models.local]\npath = "models/dev"\n')
    assert Catalog.from_settings(s).get("local").path == (tmp_path / "models" / "dev").resolve()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[models.x]\nid = "not an air"\npath = "/tmp"\n', "AIR-style"),
        ('[models.x]\nid = "a:b@1"\n', "needs a path"),
        ('[models.x]\npath = "/tmp"\ncolour = "red"\n', "unknown keys"),
        ('[models.x]\npath = "/no/such/folder"\n', "does not exist"),
    ],
)
def test_bad_catalog_entries(tmp_path, body, message):
    """Malformed entries fail when the catalog is read; an entry whose path is gone fails when it is used
    (the other entries stay usable: test_a_missing_entry_is_listed_and_only_its_own_lookup_fails)."""
    with pytest.raises((RequestError, ModelNotFoundError)) as e:
        Catalog.from_settings(_toml(tmp_path, body)).get("x")
    assert message in e.value.message


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[models\n")
    with pytest.raises(RequestError) as e:
        Settings.load(path)
    assert str(path) in e.value.message


def test_hf_cache_discovery(tmp_path, tiny_folder, tiny_schnell):
    hub = tmp_path / "hub"
    for repo, src in (("FLUX.1-dev", tiny_folder), ("FLUX.1-schnell", tiny_schnell)):
        root = hub / f"models--black-forest-labs--{repo}"
        shutil.copytree(src.model_path, root / "snapshots" / "0123456789abcdef")
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text("0123456789abcdef")
    (hub / "models--someone--not-flux" / "snapshots" / "1").mkdir(parents=True)
    cat = Catalog.from_settings(Settings(discover=True, hf_cache=hub, model_dirs=[]))
    dev = cat.get("flux-dev")
    assert dev.id == "hf:black-forest-labs/FLUX.1-dev@01234567" and dev.kind == "dev" and dev.source == "hf-cache"
    assert cat.get("runware:101@1") is dev
    assert cat.get("flux-schnell").kind == "schnell" and cat.get("runware:100@1").kind == "schnell"
    assert len(cat) == 2
    # Single files found later borrow their encoders from the first dev/schnell folder.
    assert cat.default_base == dev.id


def test_comfyui_folder_discovery_skips_non_flux(tmp_path, tiny_single):
    root = tmp_path / "ComfyUI"
    (root / "models" / "unet").mkdir(parents=True)
    (root / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_single.model_path, root / "models" / "unet" / "RunDiffusion Photo Flux.safetensors")
    (root / "models" / "checkpoints" / "sd15.safetensors").write_bytes(b"junk")
    cat = Catalog.from_settings(
        Settings(discover=True, hf_cache=tmp_path / "nohub", model_dirs=[root], base_model=str(tiny_single.base_path))
    )
    [spec] = list(cat)
    assert spec.name == "rundiffusion-photo-flux" and spec.id == "comfyui:RunDiffusion Photo Flux@1"
    assert spec.source == "comfyui" and spec.kind == "dev" and spec.base == str(tiny_single.base_path)


def test_path_lookup_and_unknown_ids(tiny_folder):
    cat = Catalog([])
    assert cat.get(str(tiny_folder.model_path)).format == "folder"
    with pytest.raises(ModelNotFoundError) as e:
        cat.get("runware:999@1")
    assert "not in the catalog" in e.value.message and e.value.parameter == "model"


def test_single_file_without_base_explains_what_to_set(tiny_single):
    cat = Catalog([])
    spec = cat.get(str(tiny_single.model_path))
    with pytest.raises(ModelLoadError) as e:
        cat.resolve_base(spec)
    assert "base_model" in e.value.message


def test_folder_that_is_not_flux(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    with pytest.raises(ModelLoadError) as e:
        Catalog([]).get(str(tmp_path))
    assert "not a FLUX.1 pipeline" in e.value.message


def test_slug():
    assert slug("FLUX.1-dev") == "flux-dev"
    assert slug("flux1-schnell") == "flux-schnell"
    assert slug("Juggernaut Pro Flux!") == "juggernaut-pro-flux"


def test_settings_precedence_flags_over_env_over_file(tmp_path, monkeypatch):
    cfg = tmp_path / "s.toml"
    cfg.write_text('device = "mps"\nmax_batch = 2\n')
    assert Settings.load(cfg).device == "mps"
    monkeypatch.setenv("DAGUERRE_DEVICE", "cuda")
    s = Settings.load(cfg)
    assert s.device == "cuda" and s.max_batch == 2
    assert Settings.load(cfg, device="cpu").device == "cpu"
    with pytest.raises(RequestError, match="device"):
        Settings.load(cfg, device="tpu")


@pytest.mark.parametrize(
    ("body", "needle"), [("colour = 1\n", "colour"), ("max_batch = 0\n", "max_batch"), ('device = "tpu"\n', "device")]
)
def test_bad_settings_name_the_key_and_file(tmp_path, body, needle):
    cfg = tmp_path / "s.toml"
    cfg.write_text(body)
    with pytest.raises(RequestError) as e:
        Settings.load(cfg)
    assert needle in e.value.message and str(cfg) in e.value.message


def test_lora_discovery_and_toml_entries(tmp_path, tiny_folder):
    from daguerre.testing.loras import build_lora

    root = tmp_path / "ComfyUI"
    build_lora(root / "models" / "loras" / "Film Grain.safetensors", tiny_folder.model_path, "kohya")
    toml_lora = build_lora(tmp_path / "skin.safetensors", tiny_folder.model_path, "peft")
    cfg = tmp_path / "d.toml"
    cfg.write_text(f'model_dirs = ["{root}"]\n[models.skin]\nid = "civitai:42@7"\npath = "{toml_lora}"\n')
    cat = Catalog.from_settings(Settings.load(cfg, hf_cache=str(tmp_path / "nohub")))
    grain = cat.get("film-grain")
    assert grain.kind == "lora" and grain.id == "lora:Film Grain@1" and grain.source == "comfyui"
    assert cat.get("civitai:42@7").kind == "lora"


def test_single_file_without_base_mentions_the_base_flag(tiny_single):
    cat = Catalog([])
    with pytest.raises(ModelLoadError) as e:
        cat.resolve_base(cat.get(str(tiny_single.model_path)))
    assert "--base" in e.value.message


def test_a_missing_entry_is_listed_and_only_its_own_lookup_fails(tmp_path, tiny_folder):
    s = _toml(
        tmp_path,
        f'[models.gone]\nid = "rundiffusion:130@100"\npath = "{tmp_path}/nowhere.safetensors"\n\n'
        f'[models.here]\nid = "runware:101@1"\npath = "{tiny_folder.model_path}"\n',
    )
    cat = Catalog.from_settings(s)
    assert [spec.name for spec in cat] == ["gone", "here"]
    assert [spec.name for spec in cat.available()] == ["here"]
    assert cat.get("here").kind == "dev"
    with pytest.raises(ModelNotFoundError) as e:
        cat.get("rundiffusion:130@100")
    assert "nowhere.safetensors" in e.value.message and "does not exist" in e.value.message


@pytest.mark.parametrize("field", ["lora.model", "controlNet.model", "ipAdapters.model"])
def test_lookups_name_the_field_they_came_from(tmp_path, field):
    with pytest.raises(ModelNotFoundError) as e:
        Catalog([]).get(str(tmp_path / "missing.safetensors"), parameter=field)
    assert e.value.parameter == field and e.value.message.startswith(field)


def test_without_paths_every_non_catalog_reference_gets_the_same_answer(tmp_path, tiny_folder):
    cat = Catalog([])
    answers = set()
    for ref in ("/etc/passwd", str(tmp_path / "nothing-here"), str(tiny_folder.model_path), "runware:999@1"):
        with pytest.raises(ModelNotFoundError) as e:
            cat.get(ref, allow_paths=False)
        answers.add((e.value.code, e.value.parameter, e.value.message.replace(repr(ref), "REF")))
    assert len(answers) == 1, answers
    assert cat.get(str(tiny_folder.model_path)).format == "folder"  # the CLI's default still takes paths
