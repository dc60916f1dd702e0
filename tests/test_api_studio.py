"""Prompt studio over the task API: promptEnhance, enhancePrompt, warnings, and per-key characters."""

from __future__ import annotations

import asyncio

import httpx

from daguerre.api.keys import digest, key_id
from daguerre.imaging import read_embedded
from daguerre.prompts.studio import enhance_prompt
from daguerre.recipe import Recipe
from tests.conftest import inference_task

KEY, OTHER = "dg_studio_key_one", "dg_studio_key_two"


def _post(s, tasks, key=KEY):
    return httpx.post(s.url, json=tasks, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _recipe(s, item) -> Recipe:
    data = httpx.get(item["imageURL"], timeout=30).content
    return Recipe.from_json(read_embedded(data))


def test_prompt_enhance_task_rest_and_sdk(make_server):
    from runware import IPromptEnhance, Runware

    with make_server(api_keys=[KEY]) as s:
        task = {"taskType": "promptEnhance", "taskUUID": "0b6a4f3e-3c1d-4e6b-9a51-2f3d4c5b6a71",
                "prompt": "portrait of a woman", "promptVersions": 3, "promptMaxLength": 300}  # fmt: skip
        r = _post(s, [task])
        assert r.status_code == 200, r.text
        texts = [d["text"] for d in r.json()["data"]]
        assert len(set(texts)) == 3 and all(t.startswith("portrait of a woman") and len(t) <= 300 for t in texts)
        assert texts[0] == enhance_prompt("portrait of a woman", 0, max_length=300).text
        bad = _post(s, [{**task, "promptVersions": 9}])
        assert bad.status_code == 400 and bad.json()["errors"][0]["parameter"] == "promptVersions"

        async def run():
            rw = Runware(api_key=KEY, url=s.ws_url)
            await rw.connect()
            out = await rw.promptEnhance(
                promptEnhancer=IPromptEnhance(prompt="a lighthouse on a cliff", promptMaxLength=300, promptVersions=2)
            )
            await rw.disconnect()
            return out

        out = asyncio.run(asyncio.wait_for(run(), 60))
        assert len(out) == 2 and all(p.text.startswith("a lighthouse on a cliff") for p in out)


def test_enhance_prompt_and_warnings_round_trip(make_server):
    with make_server(api_keys=[KEY]) as s:
        t = inference_task(positivePrompt="portrait of a woman", enhancePrompt=True, seed=5)
        [item] = _post(s, [t]).json()["data"]
        rec = _recipe(s, item)
        assert rec.positive_prompt == enhance_prompt("portrait of a woman", 5).text
        assert rec.original_prompt == "portrait of a woman"
        t = inference_task(positivePrompt="beautiful photorealistic anime girl", seed=5)
        [item] = _post(s, [t]).json()["data"]
        codes = {w.split(":")[0] for w in item["warnings"]}
        assert {"style_conflict", "vague_quality"} <= codes
        bad = _post(s, [inference_task(enhancePrompt="yes")])
        assert bad.status_code == 400 and bad.json()["errors"][0]["parameter"] == "enhancePrompt"


def test_characters_are_per_key_and_lock_seed_and_anchor(make_server, tmp_path):
    from daguerre.jobs.characters import Character, CharacterStore

    data = tmp_path / "data"
    store = CharacterStore(data / "jobs.sqlite3")
    anchor = "30-year-old woman, dark brown wavy hair, olive skin"
    store.put(key_id(digest(KEY)), Character("anna", anchor, 4242))
    with make_server(data_dir=data, api_keys=[KEY, OTHER]) as s:
        results = []
        for scene in ("neutral grey studio backdrop", "coffee shop window"):
            r = _post(s, [inference_task(positivePrompt=scene, character="anna")])
            assert r.status_code == 200, r.text
            [item] = r.json()["data"]
            rec = _recipe(s, item)
            assert item["seed"] == 4242 and rec.seed == 4242 and rec.character == "anna"
            assert rec.positive_prompt == f"{anchor}, {scene}"
            results.append(rec)
        clash = _post(s, [inference_task(character="anna", seed=1)])
        assert clash.status_code == 400 and clash.json()["errors"][0]["parameter"] == "seed"
        other = _post(s, [inference_task(character="anna")], key=OTHER)  # another key's characters are its own
        assert other.status_code == 400 and "no character named 'anna'" in other.json()["errors"][0]["message"]
