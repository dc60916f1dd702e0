"""The safety checker: a score per image from a pluggable classifier, and what a flagged image becomes.

Classifiers (settings `safety.checker`), each a `score(images) -> [0..1 per image]`:
  nudenet  NudeNet's detector (a YOLOv8 ONNX model that ships inside the nudenet wheel; onnxruntime, offline):
           the score is the highest confidence among its exposed-anatomy classes. Its wheel says MIT in its
           metadata but ships an AGPL-3.0 LICENSE, so it is the optional `safety` extra (docs/models.md).
  vit      a Falconsai-style ViT image classifier from a local folder (transformers
           AutoModelForImageClassification): the probability of its "nsfw" label.
  clip     diffusers' StableDiffusionSafetyChecker (CLIP vision + concept embeddings) from a local folder:
           0.5 + the largest margin of an image's concept similarity over that concept's own threshold, so
           the default threshold 0.5 is the checker's own decision, and other thresholds shift it.
An image scoring at or above the threshold is flagged; the action (blur, pixelate, black,
sensitive_content_text, or flag only) changes its pixels, and the result and the recipe say so.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from daguerre.errors import ModelLoadError, UnsupportedError

# NudeNet's classes that make an image explicit (covered parts, faces, feet, bellies and armpits do not).
NUDENET_EXPLICIT = ("FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED",
                    "BUTTOCKS_EXPOSED", "ANUS_EXPOSED")  # fmt: skip


class Classifier(Protocol):
    name: str  # what the recipe records (e.g. "nudenet", or the folder's name)

    def score(self, images: list[Image.Image]) -> list[float]:
        """A score in [0, 1] per image: how likely it is explicit. Called once per generated batch."""


class NudeNet:
    """NudeNet's detector on onnxruntime (the model in the nudenet package, or a file in the same format)."""

    def __init__(self, path: Path | None = None):
        try:
            from nudenet import NudeDetector
        except ImportError as e:
            raise UnsupportedError(
                "the safety checker needs NudeNet: pip install 'daguerre[safety]' (nudenet ships its model under "
                "AGPL-3.0), or set safety.checker to a ViT or CLIP checker folder (docs/models.md)",
                parameter="safety",
            ) from e
        try:
            self.detector = NudeDetector(model_path=str(path) if path else None)
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors on a bad file
            where = path or "(packaged)"
            raise ModelLoadError(f"cannot load the NudeNet model {where}: {e}", parameter="safety") from e
        self.name = f"nudenet:{Path(path).name}" if path else "nudenet"

    def score(self, images: list[Image.Image]) -> list[float]:
        out = []
        for im in images:
            found = self.detector.detect(np.asarray(im.convert("RGBA")))  # NudeNet reads RGBA arrays as BGR
            out.append(max((d["score"] for d in found if d["class"] in NUDENET_EXPLICIT), default=0.0))
        return out


class ViT:
    """A ViT-style image classifier with an "nsfw" label, from a local folder (Falconsai/nsfw_image_detection)."""

    def __init__(self, path: Path):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        try:
            self.processor = AutoImageProcessor.from_pretrained(path)
            self.model = AutoModelForImageClassification.from_pretrained(path).eval()
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: not a readable image-classifier folder ({e})", parameter="safety") from e
        labels = {v.lower(): int(k) for k, v in self.model.config.id2label.items()}
        if "nsfw" not in labels:
            raise ModelLoadError(f"{path}: the classifier has no 'nsfw' label ({sorted(labels)})", parameter="safety")
        self.nsfw = labels["nsfw"]
        self.name = f"vit:{Path(path).name}"

    def score(self, images: list[Image.Image]) -> list[float]:
        import torch

        with torch.inference_mode():
            inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
            probs = self.model(**inputs).logits.softmax(-1)  # (B, labels)
        return [float(p) for p in probs[:, self.nsfw]]


class Clip:
    """diffusers' StableDiffusionSafetyChecker from a local folder (its CLIP image processor beside it)."""

    def __init__(self, path: Path):
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        try:
            self.checker = StableDiffusionSafetyChecker.from_pretrained(path).eval()
            self.processor = CLIPImageProcessor.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{path}: not a readable StableDiffusionSafetyChecker folder ({e})",
                                 parameter="safety") from e  # fmt: skip
        self.name = f"clip:{Path(path).name}"

    def score(self, images: list[Image.Image]) -> list[float]:
        import torch

        c = self.checker
        with torch.inference_mode():
            pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt").pixel_values
            embeds = c.visual_projection(c.vision_model(pixels)[1])  # (B, D), as the checker's forward computes it
            special = _cosine(embeds, c.special_care_embeds) - c.special_care_embeds_weights  # (B, S)
            concepts = _cosine(embeds, c.concept_embeds) - c.concept_embeds_weights  # (B, C)
            # The checker lowers every concept's threshold by 0.01 once a special-care concept is hit.
            adjustment = (special > 0).any(dim=1, keepdim=True).float() * 0.01
            margin = (concepts + adjustment).max(dim=1).values
        return [float(min(1.0, max(0.0, 0.5 + m))) for m in margin]


def _cosine(a, b):
    import torch

    return torch.mm(torch.nn.functional.normalize(a), torch.nn.functional.normalize(b).t())


@dataclass(frozen=True)
class Verdict:
    """One image's check, as the result and the recipe record it."""

    checker: str
    score: float
    threshold: float
    flagged: bool
    action: str  # what was done to a flagged image (recorded also when nothing was flagged)

    def recipe(self) -> dict:
        return {"checker": self.checker, "score": round(self.score, 4), "threshold": self.threshold,
                "flagged": self.flagged, "action": self.action}  # fmt: skip


class SafetyChecker:
    """The configured classifier, loaded on first use (and once, whatever the number of threads asking)."""

    def __init__(self, *, checker: str, path: Path | None, threshold: float, action: str):
        self.kind, self.path, self.threshold, self.action = checker, path, threshold, action
        self._classifier: Classifier | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        """False when the server has no checker: settings safety.checker = none, or NudeNet (the default) is
        not installed. Doors whose protocol checks by default check only when this is True; a request that
        asks for the check explicitly gets an error instead."""
        if self.kind == "none":
            return False
        return self.kind != "nudenet" or importlib.util.find_spec("nudenet") is not None

    def classifier(self) -> Classifier:
        with self._lock:
            if self._classifier is None:
                self._classifier = self._load()
            return self._classifier

    def _load(self) -> Classifier:
        if self.kind == "none":
            raise UnsupportedError("this server has no safety checker (settings safety.checker = none)",
                                   parameter="safety")  # fmt: skip
        if self.kind == "nudenet":
            return NudeNet(self.path)
        if self.path is None:
            raise ModelLoadError(f"safety.checker {self.kind!r} needs safety.path (its folder)", parameter="safety")
        return ViT(self.path) if self.kind == "vit" else Clip(self.path)

    def check(self, images: list[Image.Image], *, action: str | None, threshold: float | None) -> list[Verdict]:
        """A verdict per image (the request's action and threshold, else the settings')."""
        classifier = self.classifier()
        limit = self.threshold if threshold is None else threshold
        act = action or self.action
        return [Verdict(classifier.name, s, limit, s >= limit, act) for s in classifier.score(images)]


def censor(image: Image.Image, action: str) -> Image.Image:
    """What a flagged image becomes."""
    w, h = image.size
    if action == "blur":
        return image.filter(ImageFilter.GaussianBlur(radius=max(w, h) / 16))
    if action == "pixelate":
        cells = max(1, max(w, h) // 16)  # 16 blocks along the long side
        return image.resize((max(1, w // cells), max(1, h // cells)), Image.Resampling.BILINEAR).resize(
            (w, h), Image.Resampling.NEAREST
        )
    if action == "black":
        return Image.new("RGB", (w, h))
    if action == "sensitive_content_text":
        out = Image.new("RGB", (w, h), (24, 24, 24))
        draw = ImageDraw.Draw(out)
        text = "Sensitive content"
        font = ImageFont.load_default(size=max(10, w // 14))
        box = draw.textbbox((0, 0), text, font=font)
        draw.text(((w - (box[2] - box[0])) / 2, (h - (box[3] - box[1])) / 2), text, fill=(230, 230, 230), font=font)
        return out
    return image  # "flag": the pixels stay; the result says what was found
