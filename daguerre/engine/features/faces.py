"""Face enhancement (the task API's `ultralytics`): find the faces, redraw each at inpaintSize, paste it back.

For each face the detector finds at `confidence` or more, biggest first:
  1. the box grows by maskPadding pixels (clipped to the picture): the padded box;
  2. diffusers' Flux inpainting redraws it with a mask crop (`padding_mask_crop`): the padded box is the mask,
     a crop around it with CONTEXT of its size on each side is scaled to inpaintSize (the long side, in
     multiples of 16), inpainted at `strength` over `steps` (the face prompt, the face CFGScale as distilled
     guidance), and scaled back;
  3. the result is pasted onto the picture inside the padded box only, feathered over maskBlur pixels inward:
     every pixel outside the padded boxes stays as it was, and a picture with no face is untouched.
Face k of image i is drawn with a generator seeded (seed of image i) + k.

Detectors (settings `faces.detector`): `nudenet` (NudeNet's FACE_FEMALE/FACE_MALE classes; its weights ship in
its wheel), `haar` (OpenCV's bundled frontal-face cascade: its score is the number of overlapping detections
over HAAR_FULL, capped at 1), a YOLO face model file through `ultralytics` (the optional `faces` extra; run
offline: no downloads, no settings file in the home folder, no auto-install), or `auto`: NudeNet when it is
installed, else Haar.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from daguerre.errors import ModelLoadError, UnsupportedError

CONTEXT = 0.5  # the inpaint crop reaches this fraction of the padded box beyond it on each side
HAAR_FULL = 10  # overlapping Haar detections that make a score of 1.0
MULTIPLE = 16


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels
    score: float  # 0-1


class Detector(Protocol):
    name: str

    def detect(self, image: Image.Image) -> list[Face]:
        """Every face found, with its score (thresholding is the caller's)."""


class Haar:
    name = "haar"

    def __init__(self) -> None:
        import cv2

        if not hasattr(cv2, "CascadeClassifier"):
            raise UnsupportedError("OpenCV's Haar cascades need opencv-python-headless < 5", parameter="ultralytics")
        self.cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
        self._lock = threading.Lock()

    def detect(self, image: Image.Image) -> list[Face]:
        import cv2

        gray = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
        with self._lock:
            boxes, counts = self.cascade.detectMultiScale2(gray, scaleFactor=1.05, minNeighbors=1, minSize=(24, 24))
        return [Face((int(x), int(y), int(x + w), int(y + h)), min(1.0, float(n) / HAAR_FULL))
                for (x, y, w, h), n in zip(boxes, counts, strict=True)]  # fmt: skip


class NudeNetFaces:
    name = "nudenet"

    def __init__(self) -> None:
        try:
            from nudenet import NudeDetector
        except ImportError as e:
            raise UnsupportedError("the nudenet face detector needs NudeNet: pip install 'daguerre[safety]'",
                                   parameter="ultralytics") from e  # fmt: skip
        self.detector = NudeDetector()

    def detect(self, image: Image.Image) -> list[Face]:
        found = self.detector.detect(np.asarray(image.convert("RGBA")))  # NudeNet reads RGBA arrays as BGR
        return [Face((d["box"][0], d["box"][1], d["box"][0] + d["box"][2], d["box"][1] + d["box"][3]), d["score"])
                for d in found if d["class"] in ("FACE_FEMALE", "FACE_MALE")]  # fmt: skip


class Yolo:
    """A YOLO face model (.pt, e.g. face_yolov8n.pt) through ultralytics, with its network features off."""

    def __init__(self, path: Path, config_dir: Path):
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_AUTOINSTALL", "false")
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))  # its settings file, out of the home folder
        if importlib.util.find_spec("ultralytics") is None:
            raise UnsupportedError("YOLO face models need ultralytics: pip install 'daguerre[faces]'",
                                   parameter="ultralytics")  # fmt: skip
        from ultralytics import YOLO

        try:
            self.model = YOLO(str(path))
        except Exception as e:  # noqa: BLE001 - ultralytics raises many kinds on a bad file
            raise ModelLoadError(f"{path}: not a YOLO model ultralytics can load ({e})", parameter="ultralytics") from e
        names = {int(k): str(v).lower() for k, v in self.model.names.items()}
        self.classes = [k for k, v in names.items() if "face" in v] or None  # a face model's face class(es)
        self.name = f"yolo:{Path(path).name}"
        self._lock = threading.Lock()

    def detect(self, image: Image.Image) -> list[Face]:
        with self._lock:
            result = self.model.predict(np.asarray(image.convert("RGB"))[:, :, ::-1], conf=0.0, verbose=False,
                                        device="cpu", classes=self.classes)[0]  # fmt: skip
        return [Face(tuple(int(round(v)) for v in box), float(conf))
                for box, conf in zip(result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), strict=True)]  # fmt: skip


def load_detector(ref: str, catalog, cache_dir: Path) -> Detector:
    if ref == "auto":
        ref = "nudenet" if importlib.util.find_spec("nudenet") is not None else "haar"
    if ref == "haar":
        return Haar()
    if ref == "nudenet":
        return NudeNetFaces()
    path = Path(ref).expanduser()
    if not path.is_file():
        spec = catalog.get(ref, parameter="ultralytics")
        if spec.kind != "detector":
            raise ModelLoadError(f"faces.detector {ref!r} is a {spec.kind} model, not a face detector",
                                 parameter="ultralytics")  # fmt: skip
        path = spec.path
    return Yolo(path, cache_dir / "ultralytics")


# ---- geometry


def padded(face: Face, padding: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The face's box grown by `padding` pixels on each side, clipped to the picture (w, h)."""
    x0, y0, x1, y1 = face.box
    w, h = size
    return max(0, x0 - padding), max(0, y0 - padding), min(w, x1 + padding), min(h, y1 + padding)


def inpaint_inputs(image: Image.Image, box: tuple[int, int, int, int], inpaint_size: int) -> dict:
    """The inpaint call's image inputs for one padded box: the picture, the box as the mask, the mask crop's
    padding, and the size the crop is redrawn at (long side inpaint_size, multiples of 16, the crop's shape)."""
    x0, y0, x1, y1 = box
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (x0, y0, x1, y1))
    bw, bh = x1 - x0, y1 - y0
    crop_w, crop_h = bw * (1 + 2 * CONTEXT), bh * (1 + 2 * CONTEXT)
    scale = inpaint_size / max(crop_w, crop_h)
    width = max(MULTIPLE, round(crop_w * scale / MULTIPLE) * MULTIPLE)
    height = max(MULTIPLE, round(crop_h * scale / MULTIPLE) * MULTIPLE)
    return {"image": image, "mask_image": mask, "padding_mask_crop": max(1, round(CONTEXT * max(bw, bh))),
            "width": width, "height": height}  # fmt: skip


def paste(original: np.ndarray, redrawn: np.ndarray, box: tuple[int, int, int, int], blur: int) -> np.ndarray:
    """`redrawn` over `original` inside the box only, its weight rising from the box edge to 1 over `blur` px."""
    x0, y0, x1, y1 = box
    out = original.copy()
    h, w = y1 - y0, x1 - x0

    def ramp(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n), np.arange(n)[::-1]).astype(np.float32)  # distance to the nearer edge
        return np.clip((d + 1) / (blur + 1), 0, 1) if blur else np.ones(n, np.float32)

    alpha = (ramp(h)[:, None] * ramp(w)[None, :])[:, :, None]
    out[y0:y1, x0:x1] = alpha * redrawn[y0:y1, x0:x1] + (1 - alpha) * original[y0:y1, x0:x1]
    return out


def embeddings(pipe, req, plan, embeds: tuple, device) -> tuple | None:
    """The face pass's prompt embeddings: the request's, or its own prompts' (ultralytics.positivePrompt,
    .negativePrompt; the negative acts with the request's true CFG, as negativePrompt does)."""
    from daguerre.engine.prompting import encode_prompt

    f = req.face_fix
    if f is None:
        return None
    pe, ppe, npe, nppe = embeds
    if f.positive_prompt and f.positive_prompt != req.positive_prompt:
        pe, ppe = encode_prompt(pipe, f.positive_prompt, req.prompt_weighting, device, plan.max_seq,
                                parameter="ultralytics.positivePrompt")  # fmt: skip
    if plan.negative is not None and f.negative_prompt and f.negative_prompt != plan.negative:
        npe, nppe = encode_prompt(pipe, f.negative_prompt, req.prompt_weighting, device, plan.max_seq,
                                  parameter="ultralytics.negativePrompt")  # fmt: skip
    return pe, ppe, npe, nppe


def enhance(model, prep, image, detector: Detector, callback):
    """The image (an engine GeneratedImage) with every face the detector finds redrawn; its recipe gains
    `face_fix` (settings, detector, boxes). With no face found it comes back as it was, recipe and all."""
    import torch

    from daguerre.engine.samplers import NOISE_SALT
    from daguerre.engine.schedulers import make_scheduler
    from daguerre.imaging import to_pil

    f = prep.req.face_fix
    found = [x for x in detector.detect(image.image) if x.score >= f.confidence]
    found.sort(key=lambda x: (x.box[2] - x.box[0]) * (x.box[3] - x.box[1]), reverse=True)
    if not found:
        return replace(image, faces=0)
    pipe = model.pipeline("inpaint")
    pe, ppe, npe, nppe = prep.face_embeds
    cond = {"prompt_embeds": pe, "pooled_prompt_embeds": ppe}
    if f.cfg_scale is not None:
        cond["guidance_scale"] = f.cfg_scale
    if npe is not None:
        cond.update(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=nppe, true_cfg_scale=prep.plan.true_cfg)
    pixels, boxes = image.pixels, []
    for k, face in enumerate(found):
        box = padded(face, f.mask_padding, image.image.size)
        seed = image.seed + k
        noise = [torch.Generator("cpu").manual_seed((seed + NOISE_SALT) % 2**64)]
        pipe.scheduler = make_scheduler(prep.req.scheduler, dict(model.pipe.scheduler.config), model.kind, noise)
        with torch.inference_mode():
            out = pipe(
                **inpaint_inputs(to_pil(pixels), box, f.inpaint_size),
                strength=f.strength,
                num_inference_steps=f.steps,
                max_sequence_length=prep.plan.max_seq,
                output_type="pil",
                generator=torch.Generator("cpu").manual_seed(seed),
                callback_on_step_end=callback,
                **cond,
            ).images[0]
        pixels = paste(pixels, np.asarray(out.convert("RGB"), dtype=np.float32) / 255.0, box, f.mask_blur)
        boxes.append({"box": list(box), "score": round(face.score, 4)})
    settings = {k: v for k, v in asdict(f).items()}
    recipe = replace(
        image.recipe, face_fix={**settings, "detector": detector.name, "faces": len(found), "boxes": boxes}
    )
    return replace(image, pixels=pixels, image=to_pil(pixels), recipe=recipe, faces=len(found))
