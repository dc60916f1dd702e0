"""The tiny checkpoint builder: real architecture, 8x VAE, deterministic, both layouts, CLI."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

from daguerre.testing.tiny import build


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path):
    a = build(tmp_path / "a", seed=5)
    b = build(tmp_path / "b", seed=5)
    c = build(tmp_path / "c", seed=6)
    assert _digest(a.root) == _digest(b.root) != _digest(c.root)


def test_folder_layout_is_a_diffusers_snapshot_with_an_8x_vae(tiny_folder):
    root = tiny_folder.model_path
    for part in ("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "scheduler"):
        assert (root / part).is_dir(), part
    vae = json.loads((root / "vae" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 4 and vae["latent_channels"] == 16
    tok = json.loads((root / "tokenizer" / "tokenizer_config.json").read_text())
    assert tok["model_max_length"] == 77
    assert json.loads((root / "tokenizer_2" / "tokenizer_config.json").read_text())["model_max_length"] == 512


def test_module_cli_writes_single_file_layout(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "daguerre.testing.tiny", str(tmp_path), "--layout", "single-file", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "Writing model shards" not in out.stderr and "%|" not in out.stderr  # no library progress bars
    assert (tmp_path / "flux-tiny-dev.safetensors").is_file()
    assert (tmp_path / "base" / "text_encoder_2").is_dir()
    assert not list((tmp_path / "base" / "transformer").glob("*.safetensors"))
