"""The CLI end to end, in subprocesses, on a tiny model: generate, models, reproduce, errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daguerre import recipe

DAGUERRE = [sys.executable, "-m", "daguerre"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["DAGUERRE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cli-cache"))
    e["DAGUERRE_DISCOVER"] = "false"
    e["HF_HUB_OFFLINE"] = "1"
    return e


def run(args, env, cwd=None, timeout=300):
    return subprocess.run(DAGUERRE + args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def test_generate_writes_images_with_recipes_and_reproduce_matches(tiny_folder, tmp_path, env):
    out = run(
        [
            "generate",
            "portrait of a woman in her 30s, soft studio lighting, 85mm f/1.4",
            "--model",
            str(tiny_folder.model_path),
            "-W",
            "128",
            "-H",
            "192",
            "--steps",
            "3",
            "-n",
            "2",
            "--seed",
            "42",
            "--out",
            str(tmp_path),
        ],
        env,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and [re.search(r"seed=(\d+)", ln).group(1) for ln in lines] == ["42", "43"]
    assert "image 2/2" in out.stderr  # one progress bar per image
    path = Path(lines[1].split("\t")[0])
    assert path.suffix == ".jpg" and path.exists()
    r = recipe.read(path)
    assert (r.seed, r.steps, r.width, r.height, r.workflow) == (43, 3, 128, 192, "txt2img")
    again = run(["reproduce", str(path), "--out", str(tmp_path / "again")], env)
    assert again.returncode == 0, again.stderr
    assert "identical bytes" in again.stdout


def test_img2img_and_inpaint_from_the_cli(tiny_folder, tmp_path, env):
    from PIL import Image

    src = tmp_path / "src.png"
    Image.new("RGB", (160, 130), (180, 120, 90)).save(src)
    mask = tmp_path / "mask.png"
    Image.new("L", (160, 130), 255).save(mask)
    out = run(
        [
            "generate",
            "a red car",
            "--model",
            str(tiny_folder.model_path),
            "--image",
            str(src),
            "--mask",
            str(mask),
            "--strength",
            "0.7",
            "--steps",
            "2",
            "--seed",
            "1",
            "--format",
            "png",
            "--out",
            str(tmp_path / "o"),
        ],
        env,
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.split("\t")[0])
    r = recipe.read(path)
    assert r.workflow == "inpaint" and (r.width, r.height) == (128, 128) and path.suffix == ".png"
    missing = run(["reproduce", str(path)], env)
    assert missing.returncode == 2 and "--image" in missing.stderr
    ok = run(["reproduce", str(path), "--image", str(src), "--mask", str(mask), "--out", str(tmp_path / "r")], env)
    assert ok.returncode == 0 and "identical bytes" in ok.stdout, ok.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--guidance", "25"], "--guidance (CFGScale): CFGScale must be in [0, 20]"),
        (["-W", "100"], "--width (width)"),
        (["-n", "21"], "-n (numberResults)"),
        (["--steps", "0"], "--steps (steps)"),
        (["--scheduler", "Eulr"], "closest valid names"),
        (["--image", "/no/such.png"], "--image (seedImage)"),
    ],
)
def test_bad_flags_give_one_line_errors(tiny_folder, env, args, needle):
    out = run(["generate", "a cat", "--model", str(tiny_folder.model_path), *args], env)
    assert out.returncode == 2
    assert needle in " ".join(out.stderr.split()), out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_model_lists_what_is_known(env):
    out = run(["generate", "a cat", "--model", "runware:999@1"], env)
    assert out.returncode == 2 and "not in the catalog" in out.stderr and "Traceback" not in out.stderr


def test_models_lists_catalog_entries(tiny_folder, tiny_single, tmp_path, env):
    cfg = tmp_path / "daguerre.toml"
    cfg.write_text(
        f'[models.photo-flux]\nid = "rundiffusion:130@100"\npath = "{tiny_single.model_path}"\n'
        f'base = "{tiny_single.base_path}"\n\n[models.flux-dev]\nid = "runware:101@1"\n'
        f'path = "{tiny_folder.model_path}"\n'
    )
    out = run(["models", "--config", str(cfg), "--json"], env)
    assert out.returncode == 0, out.stderr
    import json

    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["photo-flux"]["id"] == "rundiffusion:130@100" and rows["photo-flux"]["format"] == "single-file"
    assert rows["flux-dev"]["kind"] == "dev" and rows["flux-dev"]["size_gb"] >= 0
    table = run(["models", "--config", str(cfg)], env)
    assert "rundiffusion:130@100" in table.stdout and "photo-flux" in table.stdout
    gen = run(
        [
            "generate",
            "a cat",
            "--config",
            str(cfg),
            "--model",
            "rundiffusion:130@100",
            "-W",
            "128",
            "-H",
            "128",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
        env,
    )
    assert gen.returncode == 0, gen.stderr


def test_readme_examples_run(tmp_path, env):
    """The README's commands are part of the contract: the no-weights quick start runs verbatim,
    and the real-weights examples run with a tiny model swapped in."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    quick = next(b for b in blocks if "daguerre.testing.tiny" in b)
    e = dict(env, PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    for line in [ln for ln in quick.splitlines() if ln.strip() and not ln.startswith("#")]:
        line = line.replace(".venv/bin/", "")
        out = subprocess.run(line, shell=True, capture_output=True, text=True, env=e, cwd=tmp_path, timeout=600)
        assert out.returncode == 0, f"{line}\n{out.stderr}"
    tiny = tmp_path / "tiny-flux"  # built by the quick start above
    from PIL import Image

    Image.new("RGB", (192, 128), (120, 90, 60)).save(tmp_path / "photo.jpg")  # + 64 + 64 outpainted: 320 wide
    Image.new("L", (192, 128), 255).save(tmp_path / "mask.png")
    from daguerre.testing.loras import build_lora

    build_lora(tmp_path / "style.safetensors", tiny, "kohya")
    studio = (".venv/bin/daguerre prompt", ".venv/bin/daguerre characters")
    for line in [ln for b in blocks for ln in b.splitlines() if ln.startswith(studio)]:
        out = subprocess.run(line.replace(".venv/bin/", ""), shell=True, capture_output=True, text=True, env=e,
                             cwd=tmp_path, timeout=600)  # fmt: skip
        assert out.returncode == 0 and out.stdout.strip(), f"{line}\n{out.stderr}"
    examples = [ln for b in blocks for ln in b.splitlines() if ln.startswith(".venv/bin/daguerre generate")]
    assert examples, "README has generate examples"
    for line in examples:
        size = "" if "--outpaint" in line else " -W 128 -H 128"  # outpaint's size follows from the image
        line = line.replace(".venv/bin/", "") + f" --model {tiny}{size} --steps 1 -n 1 -q --out out"
        out = subprocess.run(line, shell=True, capture_output=True, text=True, env=e, cwd=tmp_path, timeout=600)
        assert out.returncode == 0, f"{line}\n{out.stderr}"


def test_generate_with_lora_flag_and_reproduce(tiny_folder, tmp_path, env):
    from daguerre.testing.loras import build_lora

    lora = build_lora(tmp_path / "style.safetensors", tiny_folder.model_path, "xlabs")
    out = run(
        [
            "generate",
            "a red car",
            "--model",
            str(tiny_folder.model_path),
            "--lora",
            f"{lora}=0.6",
            "-W",
            "128",
            "-H",
            "128",
            "--steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
        env,
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.split("\t")[0])
    r = recipe.read(path)
    assert len(r.loras) == 1 and r.loras[0]["weight"] == 0.6
    again = run(["reproduce", str(path), "--out", str(tmp_path / "r")], env)
    assert again.returncode == 0 and "identical bytes" in again.stdout, again.stderr
    bad = run(["generate", "a red car", "--model", str(tiny_folder.model_path), "--lora", f"{lora}=heavy"], env)
    assert bad.returncode == 2 and "--lora" in bad.stderr


def test_controlnet_flag_and_reproduce_with_guide(tiny_folder, tiny_controlnets, tmp_path, env):
    from PIL import Image

    guide = tmp_path / "edges.png"
    g = Image.new("RGB", (128, 128), (0, 0, 0))
    g.paste((255, 255, 255), (30, 30, 100, 100))
    g.save(guide)
    out = run(
        [
            "generate",
            "a house",
            "--model",
            str(tiny_folder.model_path),
            "--controlnet",
            f"{tiny_controlnets[0]},{guide},weight=0.7,end=75",
            "-W",
            "128",
            "-H",
            "128",
            "--steps",
            "4",
            "--seed",
            "3",
            "--format",
            "png",
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
        env,
    )
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.split("\t")[0])
    [c] = recipe.read(path).controlnets
    assert c["weight"] == 0.7 and c["end_percent"] == 75 and c["end"] == 0.75
    missing = run(["reproduce", str(path)], env)
    assert missing.returncode == 2 and "--guide" in missing.stderr
    again = run(["reproduce", str(path), "--guide", str(guide), "--out", str(tmp_path / "r")], env)
    assert again.returncode == 0 and "identical bytes" in again.stdout, again.stderr
    bad = run(["generate", "a house", "--model", str(tiny_folder.model_path), "--controlnet", "onlyref"], env)
    assert bad.returncode == 2 and "--controlnet" in bad.stderr


def test_ip_adapter_flag(tiny_folder, tiny_ip_adapter, tmp_path, env):
    from PIL import Image

    path, _ = tiny_ip_adapter
    face = tmp_path / "face.png"
    Image.new("RGB", (64, 64), (200, 150, 120)).save(face)
    out = run(
        [
            "generate",
            "a portrait",
            "--model",
            str(tiny_folder.model_path),
            "--ip-adapter",
            f"{path},{face},weight=0.6",
            "-W",
            "128",
            "-H",
            "128",
            "--steps",
            "2",
            "--seed",
            "3",
            "--out",
            str(tmp_path / "o"),
            "-q",
        ],
        env,
    )
    assert out.returncode == 0, out.stderr
    made = Path(out.stdout.split("\t")[0])
    [rec] = recipe.read(made).ip_adapters
    assert rec["weight"] == 0.6
    again = run(["reproduce", str(made), "--ip-guide", str(face), "--out", str(tmp_path / "again")], env)
    assert again.returncode == 0 and "identical" in again.stdout, again.stderr
    missing = run(["reproduce", str(made), "--out", str(tmp_path / "again")], env)
    assert missing.returncode == 2 and "--ip-guide" in missing.stderr
    bad = run(["generate", "a portrait", "--model", str(tiny_folder.model_path), "--ip-adapter", f"{path}"], env)
    assert bad.returncode == 2 and "--ip-adapter" in bad.stderr


def test_prompt_command_and_characters_with_generate(tiny_folder, tmp_path, env):
    env = {**env, "DAGUERRE_SERVER__DATA_DIR": str(tmp_path / "data")}
    out = run(["prompt", "portrait of a woman with red hair", "-n", "2", "--seed", "3"], env)
    lines = out.stdout.strip().splitlines()
    assert (
        out.returncode == 0
        and len(lines) == 2
        and all(ln.startswith("portrait of a woman with red hair") for ln in lines)
    )
    lint = run(["prompt", "beautiful photorealistic anime girl"], env)
    assert "style_conflict" in lint.stderr and "vague_quality" in lint.stderr
    built = run(["prompt", "a man", "--build", "--lighting", "rembrandt", "--lens", "85mm-f1.4"], env)
    assert built.stdout.startswith("a man, Rembrandt lighting")
    add = run(["characters", "add", "anna", "--anchor", "30-year-old woman, olive skin", "--seed", "777"], env)
    assert add.returncode == 0, add.stderr
    assert "anna\tseed=777" in run(["characters", "list"], env).stdout
    gen = run(
        ["generate", "coffee shop window", "--character", "anna", "--model", str(tiny_folder.model_path), "-W", "128",
         "-H", "128", "--steps", "2", "--out", str(tmp_path / "o"), "-q"],
        env,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    r = recipe.read(Path(gen.stdout.split("\t")[0]))
    assert (
        r.seed == 777
        and r.character == "anna"
        and r.positive_prompt == "30-year-old woman, olive skin, coffee shop window"
    )
    clash = run(["generate", "x y", "--character", "anna", "--seed", "1", "--model", str(tiny_folder.model_path)], env)
    assert clash.returncode == 2 and "--seed" in clash.stderr
    assert run(["characters", "delete", "anna"], env).returncode == 0
    assert run(["characters", "show", "anna"], env).returncode == 2
