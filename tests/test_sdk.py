"""The official SDKs, unmodified, against a live server on the tiny model."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

KEY = "dg_sdk_test_key"
ROOT = Path(__file__).parents[1]
SDK1 = ROOT / ".venv-sdk1" / "bin" / "python"


@pytest.fixture(scope="module")
def srv(make_server):
    with make_server(api_keys=[KEY]) as s:
        yield s


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("sdk") / "photo.png"
    Image.new("RGB", (150, 100), (200, 100, 50)).save(path)
    return path


def test_runware_05_websocket_sdk(srv, png):
    from runware import IImageInference, Runware

    async def run():
        rw = Runware(api_key=KEY, url=srv.ws_url)
        await rw.connect()
        seen = {}
        for output in ("URL", "base64Data", "dataURI"):
            imgs = await rw.imageInference(
                requestImage=IImageInference(
                    positivePrompt="portrait, soft light",
                    model="daguerre:tiny@1",
                    width=128,
                    height=128,
                    steps=2,
                    numberResults=2,
                    seed=21,
                    outputType=output,
                )
            )
            seen[f"sync-{output}"] = [(i.seed, bool(i.imageURL or i.imageBase64Data or i.imageDataURI)) for i in imgs]
            ack = await rw.imageInference(
                requestImage=IImageInference(
                    positivePrompt="portrait, soft light",
                    model="daguerre:tiny@1",
                    width=128,
                    height=128,
                    steps=2,
                    numberResults=2,
                    seed=31,
                    outputType=output,
                    deliveryMethod="async",
                )
            )
            res = await rw.getResponse(taskUUID=ack.taskUUID, numberResults=2)
            seen[f"async-{output}"] = sorted((i.seed, i.status) for i in res)
        up = await rw.uploadImage(str(png))
        [img] = await rw.imageInference(
            requestImage=IImageInference(
                positivePrompt="img2img",
                model="daguerre:tiny@1",
                width=128,
                height=128,
                steps=2,
                seedImage=up.imageUUID,
                strength=0.5,
            )
        )
        seen["img2img"] = bool(img.imageURL)
        await rw.disconnect()
        return seen

    seen = asyncio.run(asyncio.wait_for(run(), 300))
    for output in ("URL", "base64Data", "dataURI"):
        assert seen[f"sync-{output}"] == [(21, True), (22, True)]
        assert seen[f"async-{output}"] == [(31, "success"), (32, "success")]
    assert seen["img2img"]


def test_runware_05_sees_an_auth_failure(srv):
    from runware import Runware

    async def run():
        rw = Runware(api_key="wrong-key", url=srv.ws_url, timeout=10000)
        try:
            await rw.connect()
            await rw.ensureConnection()
        except Exception as e:  # noqa: BLE001
            return str(e)
        return getattr(rw, "_invalidAPIkey", None)

    message = asyncio.run(asyncio.wait_for(run(), 60))
    assert message and "invalid API key" in message


@pytest.mark.skipif(not SDK1.exists(), reason="scripts/setup creates .venv-sdk1 with runware-sdk 1.x")
@pytest.mark.parametrize("transport", ["rest", "websocket"])
def test_runware_sdk_1x(srv, png, transport):
    base = srv.url.removeprefix("http://").removesuffix("/v1")
    out = subprocess.run(
        [str(SDK1), str(ROOT / "tests" / "sdk1_client.py"), base, KEY, transport, str(png)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    for method in ("sync", "async"):
        for output in ("URL", "base64Data", "dataURI"):
            assert seen[f"{method}-{output}"] == [[11, True], [12, True]], (method, output, seen)
    assert seen["img2img"] is True
    assert seen["auth"] == "auth", seen  # the SDK files invalidApiKey under its "auth" category


def test_lora_through_the_runware_05_sdk_and_raw_api(make_server, tiny_folder, tmp_path):
    import httpx
    from runware import IImageInference, ILora, Runware

    from daguerre.testing.loras import build_lora

    path = build_lora(tmp_path / "style.safetensors", tiny_folder.model_path, "kohya", seed=3)
    with make_server(api_keys=[KEY], extra_models={"style": {"id": "test:style@1", "path": str(path)}}) as s:

        async def run(loras):
            rw = Runware(api_key=KEY, url=s.ws_url)
            await rw.connect()
            [img] = await rw.imageInference(
                requestImage=IImageInference(
                    positivePrompt="portrait",
                    model="daguerre:tiny@1",
                    width=128,
                    height=128,
                    steps=2,
                    seed=8,
                    outputType="base64Data",
                    lora=loras,
                )
            )
            await rw.disconnect()
            return img.imageBase64Data

        def pixels(b64: str):
            import base64
            import io

            import numpy as np

            return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))

        with_lora = pixels(asyncio.run(asyncio.wait_for(run([ILora(model="test:style@1", weight=1.0)]), 120)))
        zero = pixels(asyncio.run(asyncio.wait_for(run([ILora(model="test:style@1", weight=0.0)]), 120)))
        base = pixels(asyncio.run(asyncio.wait_for(run([]), 120)))
        # (the files differ anyway: the recipe records the zero-weight LoRA)
        assert not (with_lora == base).all() and (zero == base).all()
        bad = httpx.post(
            s.url,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=60,
            json=[
                {
                    "taskType": "imageInference",
                    "taskUUID": "6f1c0b5e-3a57-4a4e-9c0e-6d8f1a2b3c4d",
                    "model": "daguerre:tiny@1",
                    "positivePrompt": "portrait",
                    "width": 128,
                    "height": 128,
                    "lora": [{"model": "test:style@1", "weight": 9}],
                }
            ],
        )
        [err] = bad.json()["errors"]
        assert bad.status_code == 400 and err["parameter"] == "lora.weight" and "[-4, 4]" in err["message"]


def test_outpaint_and_mask_margin_through_the_runware_05_sdk(srv, png):
    from runware import IImageInference, IOutpaint, Runware

    src = png.parent / "src128x96.png"
    Image.open(png).resize((128, 96)).save(src)
    mask = png.parent / "mask.png"
    m = Image.new("L", (150, 100), 0)
    m.paste(255, (50, 30, 100, 70))
    m.save(mask)

    async def run():
        rw = Runware(api_key=KEY, url=srv.ws_url)
        await rw.connect()
        up = await rw.uploadImage(str(src))
        [out] = await rw.imageInference(
            requestImage=IImageInference(
                positivePrompt="a wide landscape",
                model="daguerre:tiny@1",
                width=192,
                height=128,
                steps=2,
                seed=3,
                seedImage=up.imageUUID,
                outpaint=IOutpaint(top=16, bottom=16, left=32, right=32),
            )
        )
        photo = await rw.uploadImage(str(png))
        mask_up = await rw.uploadImage(str(mask))
        [inp] = await rw.imageInference(
            requestImage=IImageInference(
                positivePrompt="a red car",
                model="daguerre:tiny@1",
                width=128,
                height=128,
                steps=2,
                seed=3,
                seedImage=photo.imageUUID,
                maskImage=mask_up.imageUUID,
                maskMargin=48,
            )
        )
        await rw.disconnect()
        return out, inp

    out, inp = asyncio.run(asyncio.wait_for(run(), 180))
    assert out.imageURL and inp.imageURL and out.seed == inp.seed == 3


def test_prompt_weighting_through_the_runware_05_sdk(srv):
    import httpx
    from runware import EPromptWeighting, IImageInference, Runware

    async def run():
        rw = Runware(api_key=KEY, url=srv.ws_url)
        await rw.connect()
        out = {}
        for syntax, prompt in (
            (EPromptWeighting.COMPEL, "a (red)1.4 car"),
            (EPromptWeighting.SDEMBEDS, "a (red:1.4) car"),
        ):
            [img] = await rw.imageInference(
                requestImage=IImageInference(
                    positivePrompt=prompt,
                    model="daguerre:tiny@1",
                    width=128,
                    height=128,
                    steps=2,
                    seed=5,
                    promptWeighting=syntax,
                    outputType="base64Data",
                )
            )
            out[syntax.value] = img.imageBase64Data
        await rw.disconnect()
        return out

    out = asyncio.run(asyncio.wait_for(run(), 120))
    assert set(out) == {"compel", "sdembeds"} and all(out.values())
    bad = httpx.post(
        srv.url,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
        json=[
            {
                "taskType": "imageInference",
                "taskUUID": "0d4c2b58-8c1e-4a57-9f6e-2b7a8c9d0e1f",
                "model": "daguerre:tiny@1",
                "positivePrompt": "a (red car",
                "width": 128,
                "height": 128,
                "promptWeighting": "compel",
            }
        ],
    )
    [err] = bad.json()["errors"]
    assert bad.status_code == 400 and err["parameter"] == "positivePrompt" and "column 3" in err["message"]


def test_controlnet_through_the_runware_05_sdk(make_server, tiny_controlnets, png):
    from runware import IControlNetCanny, IControlNetGeneral, IImageInference, Runware

    guide = png.parent / "guide.png"
    g = Image.new("RGB", (128, 128), (0, 0, 0))
    g.paste((255, 255, 255), (30, 30, 100, 100))
    g.save(guide)
    extra = {
        "cn": {"id": "test:controlnet@1", "path": str(tiny_controlnets[0])},
        "cn2": {"id": "test:controlnet@2", "path": str(tiny_controlnets[1])},
    }
    with make_server(api_keys=[KEY], extra_models=extra) as s:

        async def run():
            rw = Runware(api_key=KEY, url=s.ws_url)
            await rw.connect()
            [img] = await rw.imageInference(
                requestImage=IImageInference(
                    positivePrompt="a house",
                    model="daguerre:tiny@1",
                    width=128,
                    height=128,
                    steps=4,
                    seed=4,
                    controlNet=[
                        IControlNetGeneral(
                            model="test:controlnet@1",
                            guideImage=str(guide),
                            weight=0.7,
                            startStepPercentage=0,
                            endStepPercentage=75,
                        ),
                        IControlNetCanny(
                            model="test:controlnet@2",
                            guideImage=str(png),
                            weight=0.5,
                            lowThresholdCanny=50,
                            highThresholdCanny=150,
                        ),
                    ],
                )
            )
            await rw.disconnect()
            return img

        img = asyncio.run(asyncio.wait_for(run(), 180))
        assert img.imageURL and img.seed == 4


def test_ip_adapter_through_the_runware_05_sdk(make_server, tiny_ip_adapter, png):
    from runware import IImageInference, IIpAdapter, Runware

    path, _ = tiny_ip_adapter
    with make_server(api_keys=[KEY], extra_models={"ip": {"id": "test:ip@1", "path": str(path)}}) as s:

        async def run():
            rw = Runware(api_key=KEY, url=s.ws_url)
            await rw.connect()
            [img] = await rw.imageInference(
                requestImage=IImageInference(
                    positivePrompt="a portrait",
                    model="daguerre:tiny@1",
                    width=128,
                    height=128,
                    steps=2,
                    seed=6,
                    ipAdapters=[IIpAdapter(model="test:ip@1", guideImages=[str(png)], weight=0.7)],
                )
            )
            await rw.disconnect()
            return img

        img = asyncio.run(asyncio.wait_for(run(), 120))
        assert img.imageURL and img.seed == 6


def test_control_lora_and_union_controlnet_through_the_runware_05_sdk(make_server, tiny_folder, png, tmp_path):
    """A BFL control LoRA given as a controlNet model, and a Union ControlNet with our controlType field."""
    import httpx
    from runware import IControlNetGeneral, IImageInference, Runware

    from daguerre.testing.loras import build_control_lora
    from daguerre.testing.tiny import build_controlnet

    lora = build_control_lora(tmp_path / "canny-lora.safetensors", tiny_folder.model_path, seed=2)
    union = build_controlnet(tmp_path / "union", seed=3, union_modes=7)
    extra = {
        "canny": {"id": "test:canny-lora@1", "path": str(lora)},
        "union": {"id": "test:union@1", "path": str(union)},
    }
    with make_server(api_keys=[KEY], extra_models=extra) as s:

        async def run():
            rw = Runware(api_key=KEY, url=s.ws_url)
            await rw.connect()
            [img] = await rw.imageInference(
                requestImage=IImageInference(
                    positivePrompt="a house",
                    model="daguerre:tiny@1",
                    width=128,
                    height=128,
                    steps=2,
                    seed=8,
                    controlNet=[IControlNetGeneral(model="test:canny-lora@1", guideImage=str(png), weight=0.9)],
                )
            )
            await rw.disconnect()
            return img

        img = asyncio.run(asyncio.wait_for(run(), 180))
        assert img.imageURL and img.seed == 8
        task = {
            "taskType": "imageInference",
            "taskUUID": "6f1d3c1e-5a0b-4c41-9d55-7d2a3c4b5e6f",
            "positivePrompt": "a house",
            "model": "daguerre:tiny@1",
            "width": 128,
            "height": 128,
            "steps": 2,
            "controlNet": [{"model": "test:union@1", "guideImage": _b64(png), "controlType": "depth"}],
        }
        r = httpx.post(s.url, json=[task], headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        assert r.status_code == 200, r.text
        missing = {**task, "taskUUID": "7f1d3c1e-5a0b-4c41-9d55-7d2a3c4b5e6f"}
        missing["controlNet"] = [{"model": "test:union@1", "guideImage": _b64(png)}]
        r = httpx.post(s.url, json=[missing], headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        assert r.status_code == 400 and r.json()["errors"][0]["parameter"] == "controlNet.controlType"


def _b64(path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()
