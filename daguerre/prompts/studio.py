"""Photographic prompt studio: presets, the prompt formula, a deterministic enhancer, and lint.

Pure Python (no model): the photographic-prompt craft of the photoreal services' guides as data
(presets.json) and rules. The formula is subject + physical details + lighting + camera/lens (+ film stock) + quality
markers. `enhance_prompt` fills in only the parts a prompt leaves out, so it never drops or
contradicts what the user wrote: the user's text comes first, verbatim, and a category the text
already touches (any lighting or time-of-day word, any lens/camera word...) gets nothing added; a
prompt asking for a non-photographic medium (painting, anime, 3D render...) is left as it is.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daguerre.errors import RequestError

# The photoreal negative prompt the guides recommend (what pushes FLUX away from illustration).
DEFAULT_NEGATIVE = (
    "cartoon, anime, painting, illustration, digital art, 3D render, CGI, blur, oversmoothed, plastic skin, "
    "watermark, text"
)
CATEGORIES = ("detail", "lighting", "angle", "lens", "film", "quality")
# Words that show a prompt already decides a category (then the enhancer adds nothing to it).
CATEGORY_WORDS = {
    "lighting": ("light", "lighting", "lit", "sunlight", "sunset", "sunrise", "golden hour", "blue hour", "neon",
                 "rembrandt", "backlight", "backlit", "shadow", "shadows", "overcast", "softbox", "flash", "glow",
                 "night", "dusk", "dawn", "evening", "morning", "noon", "midday", "twilight", "daylight",
                 "moonlight", "candle", "candlelit", "lamp", "studio", "dark", "sunny", "cloudy", "fog", "foggy"),
    "lens": ("mm", "f/", "lens", "bokeh", "depth of field", "telephoto", "wide-angle", "wide angle", "macro",
             "portrait mode", "camera", "hasselblad", "canon", "nikon", "sony", "leica", "fujifilm", "iphone",
             "fisheye", "tilt-shift", "dslr", "close-up", "closeup"),
    "film": ("film", "portra", "velvia", "ektar", "tri-x", "cinestill", "kodak", "polaroid", "grain", "grainy",
             "black and white", "monochrome", "b&w", "grayscale", "sepia", "color grade", "colour grade"),
    "angle": ("shot", "angle", "view", "close-up", "closeup", "overhead", "from above", "from below", "profile",
              "full body", "medium shot", "selfie"),
    "quality": ("photorealistic", "raw photo", "8k", "4k", "high detail", "highly detailed", "sharp focus",
                "hyper-realistic", "hyperrealistic", "ultra realistic", "photo-realistic"),
    "detail": ("pores", "freckles", "skin texture", "catchlight", "catchlights", "iris", "strands", "flyaways",
               "texture", "weave", "weathered", "wrinkles", "stubble"),
}  # fmt: skip
NON_PHOTO = ("painting", "oil painting", "watercolor", "watercolour", "anime", "manga", "cartoon", "illustration",
             "digital art", "3d render", "3d", "cgi", "sketch", "drawing", "comic", "pixel art", "vector art",
             "low poly", "claymation", "concept art", "cel shaded", "unreal engine", "octane render")  # fmt: skip
PHOTO = ("photo", "photograph", "photography", "photorealistic", "photo-realistic", "realistic", "raw photo", "dslr",
         "hyper-realistic", "hyperrealistic")  # fmt: skip
VAGUE = ("beautiful", "stunning", "amazing", "gorgeous", "perfect", "masterpiece", "best quality", "awesome",
         "incredible", "breathtaking", "nice", "pretty", "epic")  # fmt: skip
MOOD = ("cinematic", "moody", "dramatic", "dreamy", "ethereal", "vibrant", "gritty", "vintage", "retro", "minimal",
        "minimalist", "surreal", "atmospheric", "editorial", "candid", "elegant", "romantic", "bright")  # fmt: skip
# Colour words: a prompt with any keeps monochrome presets out (they would contradict it).
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "auburn", "blonde", "golden",
           "teal", "turquoise", "crimson", "colorful", "colourful", "vibrant", "color", "colour", "neon")  # fmt: skip
MAX_STYLE_DESCRIPTORS = 6  # more and FLUX averages them out (the Fluxgram guide, "Overloaded prompts")
CLIP_WINDOW = 77  # CLIP's context, BOS and EOS included


@dataclass(frozen=True)
class Preset:
    id: str
    category: str
    text: str
    effect: str
    best_use: tuple[str, ...]


@dataclass(frozen=True)
class Enhanced:
    """An enhanced prompt: the user's text first, then what was added (preset ids), and why not more."""

    text: str
    added: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class LintWarning:
    code: str  # style_conflict | overloaded | vague_quality | no_negative_prompt | t5_truncated | clip_truncated
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass
class _Library:
    presets: dict[str, list[Preset]] = field(default_factory=dict)
    subjects: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def get(self, preset_id: str) -> Preset:
        for items in self.presets.values():
            for p in items:
                if p.id == preset_id:
                    return p
        raise KeyError(preset_id)


@functools.cache
def library() -> _Library:
    data = json.loads((Path(__file__).parent / "presets.json").read_text())
    lib = _Library()
    for category, items in data["categories"].items():
        lib.presets[category] = [Preset(i["id"], category, i["text"], i["effect"], tuple(i["best_use"])) for i in items]
    lib.subjects = {k: tuple(v) for k, v in data["subjects"].items()}
    return lib


def _has(text: str, words) -> list[str]:
    """The words (whole-word, case-insensitive) that occur in text."""
    low = text.lower()
    found = []
    for w in words:
        pattern = r"(?<![a-z0-9])" + re.escape(w) + (r"(?![a-z])" if w[-1].isalnum() else "")
        if re.search(pattern, low):
            found.append(w)
    return found


def segments(text: str) -> list[str]:
    """Comma/semicolon/newline-separated descriptors, stripped, empty ones dropped."""
    return [s.strip() for s in re.split(r"[,;\n]", text) if s.strip()]


def subject_kind(text: str) -> str:
    """portrait | landscape | street | product | food | architecture | nature | general."""
    best, hits = "general", 0
    for kind, words in library().subjects.items():
        n = len(_has(text, words))
        if n > hits:
            best, hits = kind, n
    return best


def covered(text: str) -> set[str]:
    """The formula categories a prompt already decides."""
    return {c for c, words in CATEGORY_WORDS.items() if _has(text, words)}


def non_photo_styles(text: str) -> list[str]:
    return _has(text, NON_PHOTO)


def _choices(category: str, kind: str) -> list[Preset]:
    items = library().presets[category]
    fit = [p for p in items if kind in p.best_use or "*" in p.best_use]
    return fit or ([] if category == "detail" else items)


def enhance_prompt(
    prompt: str, seed: int = 0, *, max_length: int | None = None, fits: Callable[[str], bool] | None = None
) -> Enhanced:
    """Expand a short prompt along the photographic formula, deterministically for a seed.

    The result starts with the prompt itself (whitespace-trimmed); only categories the prompt leaves
    open get one preset each, picked for the subject kind. max_length (characters) stops additions
    that would exceed it, and so does `fits` (the engine's check against CLIP's token window) when it
    says no; the user's text is never cut.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("the prompt to enhance is empty", parameter="prompt")
    text = prompt.strip()
    styles = non_photo_styles(text)
    if styles:
        return Enhanced(text, (), (f"left as written: it asks for {styles[0]!r}, not a photograph",))
    kind = subject_kind(text)
    rng = random.Random(f"daguerre-enhance:{seed}")
    colourful = bool(_has(text, COLOURS))
    added, notes = [], []
    out = text
    for category in CATEGORIES:
        if category in covered(out):  # re-read after each addition: a lens preset may decide the film too
            continue
        if category == "angle" and rng.random() < 0.5:  # an angle is optional in the formula
            continue
        options = [p for p in _choices(category, kind) if not (colourful and "black and white" in p.text)]
        if not options:
            continue
        pick = rng.choice(options)
        candidate = f"{out}, {pick.text}"
        if max_length is not None and len(candidate) > max_length:
            notes.append(f"stopped at {max_length} characters (promptMaxLength)")
            break
        if fits is not None and not fits(candidate):
            if fits(out):  # a prompt already past the window is the lint's to report, not the enhancer's
                notes.append(f"stopped before CLIP's {CLIP_WINDOW}-token window, so every word added is read")
            break
        out = candidate
        added.append(pick.id)
    return Enhanced(out, tuple(added), tuple(notes))


def enhance_variants(prompt: str, seed: int = 0, count: int = 1, *, max_length: int | None = None) -> list[Enhanced]:
    """Up to `count` distinct enhancements (seeds seed, seed+1, ...; a few extra tries for distinct ones)."""
    out: list[Enhanced] = []
    for k in range(count * 4):
        e = enhance_prompt(prompt, seed + k, max_length=max_length)
        if all(e.text != o.text for o in out):
            out.append(e)
        if len(out) == count:
            break
    return out


def build_prompt(
    subject: str,
    *,
    details: tuple[str, ...] = (),
    lighting: str | None = None,
    angle: str | None = None,
    lens: str | None = None,
    film: str | None = None,
    quality: bool = True,
) -> str:
    """The formula from explicit choices: preset ids (or free text) per part, in the formula's order."""
    if not isinstance(subject, str) or not subject.strip():
        raise RequestError("subject is required", parameter="subject")
    parts = [subject.strip()]
    for category, value in (("detail", d) for d in details):
        parts.append(_resolve(category, value))
    for category, value in (("lighting", lighting), ("angle", angle), ("lens", lens), ("film", film)):
        if value:
            parts.append(_resolve(category, value))
    if quality:
        parts.append(library().presets["quality"][0].text)
    return ", ".join(parts)


def _resolve(category: str, value: str) -> str:
    """A preset id of the category -> its text; other text passes through as the user's own words."""
    for p in library().presets[category]:
        if p.id == value:
            return p.text
    if re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)+", value):  # looks like an id but is none
        ids = ", ".join(p.id for p in library().presets[category])
        raise RequestError(f"unknown {category} preset {value!r}; presets: {ids}", parameter=category)
    return value.strip()


def lint(
    prompt: str,
    *,
    negative_prompt: str | None = None,
    true_cfg: bool = False,
    default_negative: str | None = None,
    clip_tokenizer=None,
    t5_tokenizer=None,
    max_sequence_length: int = 512,
) -> list[LintWarning]:
    """Advice on a prompt, never blocking. Tokenizers (the loaded model's) enable the window checks."""
    if not isinstance(prompt, str):
        return [LintWarning("not_text", "the prompt is not text")]
    out: list[LintWarning] = []
    styles = non_photo_styles(prompt)
    photo = _has(prompt, PHOTO)
    if styles and photo:
        out.append(
            LintWarning(
                "style_conflict",
                f"asks for a photograph ({photo[0]!r}) and for {styles[0]!r}; FLUX blends the two: pick one medium",
            )
        )
    style = [s for s in segments(prompt)[1:] if covered(s) - {"quality", "detail"} or _has(s, MOOD)]
    if len(style) > MAX_STYLE_DESCRIPTORS:
        out.append(
            LintWarning(
                "overloaded",
                f"{len(style)} style descriptors (lighting, lens, film, angle, mood); past about "
                f"{MAX_STYLE_DESCRIPTORS} the model averages them out: keep the 3-4 that matter",
            )
        )
    vague = _has(prompt, VAGUE)
    if vague and not covered(prompt) & {"detail", "lighting", "lens"}:
        out.append(
            LintWarning(
                "vague_quality",
                f"{vague[0]!r} says nothing physical: describe features, light and lens instead "
                "(e.g. 'defined cheekbones, soft window light, 85mm f/1.4')",
            )
        )
    if true_cfg and not (negative_prompt or "").strip():
        used = f"; the default photoreal negative prompt was used: {default_negative!r}" if default_negative else ""
        out.append(LintWarning("no_negative_prompt", f"true CFG is on without a negativePrompt{used}"))
    if clip_tokenizer is not None:
        ids = clip_tokenizer(prompt, truncation=False, add_special_tokens=True, verbose=False).input_ids
        if len(ids) > CLIP_WINDOW:
            cut = clip_tokenizer.decode(ids[CLIP_WINDOW - 1 : -1]).strip()
            out.append(
                LintWarning(
                    "clip_truncated",
                    f"CLIP reads {CLIP_WINDOW} tokens and this prompt has {len(ids)}: the pooled embedding "
                    f"misses the last {len(ids) - CLIP_WINDOW}, from {cut[:80]!r}{'...' if len(cut) > 80 else ''} on",
                )
            )
    if t5_tokenizer is not None:
        ids = t5_tokenizer(prompt, truncation=False, add_special_tokens=True, verbose=False).input_ids
        if len(ids) > max_sequence_length:
            cut = t5_tokenizer.decode(ids[max_sequence_length - 1 : -1], skip_special_tokens=True).strip()
            out.append(
                LintWarning(
                    "t5_truncated",
                    f"T5 reads {max_sequence_length} tokens and this prompt has {len(ids)}: the last "
                    f"{len(ids) - max_sequence_length} are cut, from {cut[:80]!r}{'...' if len(cut) > 80 else ''} on",
                )
            )
    return out
