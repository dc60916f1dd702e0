"""The CLI on a tiny model: flag errors and the trust fixes in-process (Typer's CliRunner), the end-to-end
flows (generate, models, reproduce, the README's commands) in subprocesses, as a user runs them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from daguerre import recipe
from daguerre.cli import app

DAGUERRE = [sys.executable, "-m", "daguerre"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["DAGUERRE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cli-cache"))
    e["DAGUERRE_DISCOVER"] = "false"
    e["HF_HUB_OFFLINE"] = "1"
    return e


# ---- in-process (Typer's CliRunner): flag errors and the trust fixes, without a subprocess per case

RUNNER = CliRunner()


def invoke(*args, **kw):
    return RUNNER.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture()
def local_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGUERRE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("DAGUERRE_DISCOVER", "false")
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
def test_bad_flags_give_one_line_errors(tiny_folder, local_env, args, needle):
    out = invoke("generate", "a cat", "--model", tiny_folder.model_path, *args)  # in-process: no model loads
    assert out.exit_code == 2
    assert needle in " ".join(out.stderr.split()), out.stderr
    assert "Traceback" not in out.stderr and isinstance(out.exception, SystemExit)


def test_unknown_model_lists_what_is_known(local_env):
    out = invoke("generate", "a cat", "--model", "runware:999@1")
    assert out.exit_code == 2 and "not in the catalog" in out.stderr and "Traceback" not in out.stderr


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
    weights = sum(p.stat().st_size for p in Path(tiny_folder.model_path).rglob("*.safetensors"))
    assert rows["flux-dev"]["kind"] == "dev" and rows["flux-dev"]["size_bytes"] == weights
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
    assert out.stderr.strip() == "", "a LoRA run prints no library notes (PEFT, diffusers' CLIP LoRA keys)"
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


def _generate(model, out, *extra, prompt="portrait of a woman in her 30s, soft light", seed=42):
    return invoke("generate", prompt, "--model", model, "-W", 128, "-H", 128, "--steps", 1, "--seed", seed,
                  "--out", out, "-q", *extra)  # fmt: skip


def test_keys_create_then_serve_with_that_key(local_env, make_server):
    data = local_env / "data"
    made = invoke("keys", "create", "--label", "me", "--data-dir", data)
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("dg_") and "webhook signing secret" in made.stderr
    listed = invoke("keys", "list", "--data-dir", data)
    assert listed.exit_code == 0 and "\tme" in listed.stdout
    with make_server(data_dir=data) as s:
        ping = [{"taskType": "ping", "ping": True}]
        assert httpx.post(s.url, json=ping, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.post(s.url, json=ping).status_code == 401  # a key exists now: keyless use is off


def test_outputs_are_never_overwritten(local_env, tiny_folder):
    paths = []
    for _ in range(2):  # the same prompt and seed twice, as a --character run does
        r = _generate(tiny_folder.model_path, "out")
        assert r.exit_code == 0, r.output
        paths.append(Path(r.stdout.split("\t")[0]))
    assert paths[0] != paths[1] and all(p.exists() for p in paths)
    assert paths[1].name == paths[0].stem + "-2.jpg"


def test_reproduce_never_writes_over_its_input_and_reports_honestly(local_env, tiny_folder, tmp_path_factory):
    from daguerre.testing.tiny import build

    r = _generate(tiny_folder.model_path, "out")
    original = Path(r.stdout.split("\t")[0])
    before = original.read_bytes()
    same = invoke("reproduce", original)  # the README's flow: its output folder is the image's own
    assert same.exit_code == 0, same.output
    again = Path(same.stdout.split("\t")[0])
    assert again != original and original.read_bytes() == before
    assert same.stdout.strip().endswith("identical bytes") and again.read_bytes() == before
    other = build(tmp_path_factory.mktemp("other-weights"), layout="folder", seed=1)
    changed = invoke("reproduce", original, "--model", other.model_path)
    assert changed.exit_code == 1 and original.read_bytes() == before
    assert "DIFFERENT pixels" in changed.stdout and "model_hash" in changed.stdout
    assert "identical bytes" not in changed.stdout and "weights differ" in changed.stderr


def test_reproduce_of_a_server_image_says_only_the_model_id_differs(local_env, engine, tiny_folder):
    from dataclasses import replace

    from daguerre.request import GenerationRequest

    req = GenerationRequest(model=str(tiny_folder.model_path), positive_prompt="a cat on a bench", width=128,
                            height=128, steps=1, seed=5)  # fmt: skip
    im = engine.generate(req).images[0]
    served = local_env / "served.jpg"  # as a server names its model: a catalog id, not this path
    im.recipe = replace(im.recipe, model="daguerre:tiny@1")
    served.write_bytes(im.encode())
    r = invoke("reproduce", served, "--model", tiny_folder.model_path)
    assert r.exit_code == 0, r.output
    assert "identical pixels, different bytes" in r.stdout and "differs in model" in r.stdout
    assert "model_hash" not in r.stdout


def test_flag_errors_come_before_torch_is_imported(tiny_folder):
    args = ["generate", "a cat", "--model", str(tiny_folder.model_path), "-W", "1000"]
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom daguerre.cli import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "assert r.exit_code == 2 and '--width (width)' in r.stderr, r.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported to refuse a flag'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_a_missing_lora_is_blamed_on_the_lora_flag(local_env, tiny_folder):
    r = _generate(tiny_folder.model_path, "out", "--lora", "missing.safetensors=0.5")
    assert r.exit_code == 2 and "--lora (lora.model)" in " ".join(r.stderr.split()), r.output


def test_models_lists_every_entry_and_marks_the_missing_ones(local_env, tiny_folder):
    cfg = local_env / "daguerre.toml"
    cfg.write_text(f'[models.juggernaut-pro]\nid = "rundiffusion:130@100"\npath = "{local_env}/nope.safetensors"\n\n'
                   f'[models.flux-dev]\nid = "runware:101@1"\npath = "{tiny_folder.model_path}"\n')  # fmt: skip
    r = invoke("models", "--config", cfg, "--json")
    assert r.exit_code == 0, r.output
    import json

    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["flux-dev"]["available"] and not rows["juggernaut-pro"]["available"]
    assert "does not exist" in rows["juggernaut-pro"]["problem"]
    table = invoke("models", "--config", cfg)
    assert "MISSING" in table.stdout and "flux-dev" in table.stdout and "nope.safetensors" in table.stderr


def test_serve_on_a_busy_port_says_so_before_claiming_anything(local_env, tiny_folder):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = invoke("serve", "--port", port, "--model", f"daguerre:t@1={tiny_folder.model_path}")
    assert r.exit_code == 2 and f"port {port}" in r.stderr and "--port" in r.stderr, r.output
    assert "serving" not in r.output


def test_prompt_presets_need_no_prompt():
    r = invoke("prompt", "--presets")
    assert r.exit_code == 0 and "rembrandt" in r.stdout


def test_generate_with_the_safety_check(local_env, tiny_folder):
    """--safety-check runs the configured checker: a flagged image is censored, said so, and its recipe records it."""
    from daguerre import recipe
    from daguerre.testing.safety import build_nudenet

    model = build_nudenet(local_env / "always.onnx", {"ANUS_EXPOSED": 0.8})
    cfg = local_env / "daguerre.toml"
    cfg.write_text(f'[safety]\nchecker = "nudenet"\npath = "{model}"\n')
    out = invoke("generate", "a cat on a sofa", "--model", tiny_folder.model_path, "-W", "128", "-H", "128",
                 "--steps", "1", "--config", cfg, "--safety-check", "--safety-action", "black", "-q")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "flagged by the safety checker (black)" in out.stderr
    path = Path(out.stdout.split("\t")[0])
    assert recipe.read(path).safety["flagged"] is True
    from PIL import Image

    assert not Image.open(path).convert("RGB").getbbox()  # all black
    bad = invoke("generate", "a cat", "--model", tiny_folder.model_path, "--safety-action", "smudge")
    assert bad.exit_code == 2 and "--safety-action" in bad.stderr
