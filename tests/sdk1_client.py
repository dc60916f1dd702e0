"""Drives the official runware-sdk 1.x against a Daguerre server; run with .venv-sdk1's python.

    python tests/sdk1_client.py URL_BASE API_KEY rest|websocket PNG_PATH
Prints one JSON line of what it saw; exits non-zero on an unexpected failure.
"""

import asyncio
import base64
import json
import sys
from pathlib import Path

from runware import Runware


async def main(base: str, key: str, transport: str, png: str) -> dict:
    seen: dict = {}
    kw = dict(
        api_key=key,
        transport=transport,
        http_base_url=f"http://{base}/v1",
        ws_base_url=f"ws://{base}/v1",
        max_retries=0,
    )
    async with Runware(**kw) as rw:
        for method in ("sync", "async"):
            for output in ("URL", "base64Data", "dataURI"):
                res = await rw.run(
                    {
                        "taskType": "imageInference",
                        "model": "daguerre:tiny@1",
                        "width": 128,
                        "height": 128,
                        "steps": 2,
                        "numberResults": 2,
                        "seed": 11,
                        "positivePrompt": "portrait, soft studio light",
                        "deliveryMethod": method,
                        "outputType": output,
                    }
                )
                field = {"URL": "imageURL", "base64Data": "imageBase64Data", "dataURI": "imageDataURI"}[output]
                seen[f"{method}-{output}"] = [[r["seed"], bool(r.get(field))] for r in res]
        data = "data:image/png;base64," + base64.b64encode(Path(png).read_bytes()).decode()
        [up] = await rw.image_upload({"image": data})
        res = await rw.run(
            {
                "taskType": "imageInference",
                "model": "daguerre:tiny@1",
                "width": 128,
                "height": 128,
                "steps": 2,
                "positivePrompt": "img2img",
                "inputs": {"seedImage": up["imageUUID"]},
                "strength": 0.5,
                "deliveryMethod": "sync",
            }
        )
        seen["img2img"] = bool(res[0].get("imageURL"))
    try:
        async with Runware(**dict(kw, api_key="wrong")) as bad:
            await bad.run(
                {
                    "taskType": "imageInference",
                    "model": "daguerre:tiny@1",
                    "width": 128,
                    "height": 128,
                    "positivePrompt": "x y",
                    "deliveryMethod": "sync",
                }
            )
        seen["auth"] = "no error"
    except Exception as e:  # noqa: BLE001 - we report what the SDK raised
        seen["auth"] = getattr(e, "code", type(e).__name__)
    return seen


print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
