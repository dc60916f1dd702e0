"""Tiny safety classifiers of each supported architecture, with scores the test chooses.

- `build_nudenet(path, scores)`: an ONNX file in NudeNet's detector format (input `images` (B, 3, H, W), output
  (B, 4 + 18 classes, anchors)) whose one detection box (the other anchor is empty) has the given class
  confidences, whatever the image.
- `build_vit(folder, nsfw)`: a ViTForImageClassification folder with labels {normal, nsfw} whose classifier
  head is zero and whose bias makes the nsfw probability exactly `nsfw`, for every image.
- `build_clip(folder, margin)`: a StableDiffusionSafetyChecker folder whose every image sits `margin` over its
  concept thresholds (a zero projection; thresholds -margin), so the checker's own decision is `margin > 0`.
"""

from __future__ import annotations

import math
from pathlib import Path

# NudeNet's 18 classes, in its output order.
NUDENET_LABELS = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)  # fmt: skip


def build_nudenet(path: Path, scores: dict[str, float]) -> Path:
    """A NudeNet-format detector: one box (centre 160,160, 100x100) with these class scores (others 0)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    row = np.zeros((1, 4 + len(NUDENET_LABELS), 2), dtype=np.float32)  # two anchors: NudeNet squeezes the output
    row[0, :4, 0] = (160, 160, 100, 100)
    for name, score in scores.items():
        row[0, 4 + NUDENET_LABELS.index(name), 0] = score
    nodes = [
        # zero = 0 * mean(image) keeps the output tied to the input (one value per image in the batch)
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "shape"], ["mean"]),  # (B, 1, 1)
        helper.make_node("Mul", ["mean", "zero_c"], ["zero"]),
        helper.make_node("Add", ["zero", "row"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-nudenet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + len(NUDENET_LABELS), 2])],
        initializer=[
            numpy_helper.from_array(row, "row"),
            numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero_c"),
            numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
        ],  # fmt: skip
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def build_vit(folder: Path, nsfw: float, *, seed: int = 0) -> Path:
    """A tiny ViT image classifier (labels normal/nsfw) that gives every image nsfw probability `nsfw`."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                       image_size=32, patch_size=8, num_labels=2, id2label={0: "normal", 1: "nsfw"},
                       label2id={"normal": 0, "nsfw": 1})  # fmt: skip
    model = ViTForImageClassification(config)
    p = min(max(nsfw, 1e-6), 1 - 1e-6)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, math.log(p / (1 - p))]))
    folder = Path(folder)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def build_clip(folder: Path, margin: float, *, seed: int = 0) -> Path:
    """A tiny StableDiffusionSafetyChecker whose every image sits `margin` over (or under) a concept's threshold."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99},
        vision_config={"hidden_size": 16, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        # A zero projection: every image embeds to the zero vector, whose cosine with any concept is 0, so a
        # concept's score (cosine - threshold) is minus its threshold: thresholds of -margin put every image
        # `margin` over the line. Special-care concepts (threshold 1) are never hit.
        checker.visual_projection.weight.zero_()
        checker.concept_embeds_weights.fill_(-margin)
        checker.special_care_embeds_weights.fill_(1.0)
    folder = Path(folder)
    checker.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
