"""The docs are part of the product: their examples run, and their field lists match the code."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"


def test_the_engine_example_in_the_api_reference_runs(tiny_folder, tmp_path, monkeypatch):
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", (DOCS / "api.md").read_text(), re.S) if "build_engine" in b
    )
    (tmp_path / "daguerre.toml").write_text(
        f'discover = false\ncache_dir = "{tmp_path / "cache"}"\n[models.flux-dev]\npath = "{tiny_folder.model_path}"\n'
    )
    monkeypatch.chdir(tmp_path)
    small = block.replace("seed=42)", "seed=42, width=128, height=128, steps=2)")
    assert small != block, "the example's request changed: update this test's size override"
    exec(compile(small, "docs/api.md", "exec"), {})
    assert (tmp_path / "42.jpg").stat().st_size > 0


def test_the_recipe_field_list_names_every_field():
    from daguerre.recipe import Recipe

    text = (DOCS / "api.md").read_text().split("## Recipe", 1)[1].split("\n## ", 1)[0]
    missing = [f.name for f in fields(Recipe) if f"`{f.name}`" not in text]
    assert not missing, f"docs/api.md's recipe section does not list {missing}"
