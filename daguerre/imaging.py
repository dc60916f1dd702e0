"""Safe image input and image output.

Input: a path, base64 text or a data URI. The format must be PNG, JPEG or WEBP, judged by
the bytes and not the name; width and height are read from the header and checked against
the pixel caps before anything is decoded; EXIF orientation is applied; every mode (RGBA, P,
CMYK, 16-bit, 1-bit...) is normalized. Anything corrupt or hostile becomes an ImageInputError
naming the parameter, never a crash or a hang. URL fetching is not done here: it arrives
with the task API, through one guarded client.

Output: JPG/PNG/WEBP bytes carrying the recipe (PNG text chunks; EXIF UserComment + XMP for
JPG and WEBP), deterministic for the same pixels and recipe.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from daguerre.config import ImageLimits
from daguerre.errors import ImageInputError

# The one image format table: output format (as the API names it) -> (Pillow's name, file extension, MIME
# type). Inputs are accepted in the same three formats, judged by their bytes.
FORMATS = {
    "JPG": ("JPEG", "jpg", "image/jpeg"),
    "PNG": ("PNG", "png", "image/png"),
    "WEBP": ("WEBP", "webp", "image/webp"),
}
PIL_FORMAT = {name: pil for name, (pil, _, _) in FORMATS.items()}
EXTENSION = {name: ext for name, (_, ext, _) in FORMATS.items()}  # output format -> file extension
CONTENT_TYPES = {ext: mime for _, ext, mime in FORMATS.values()}  # file extension -> MIME type
_DECODED_EXT = {pil: ext for pil, ext, _ in FORMATS.values()}  # what Pillow reports -> file extension
_DATA_URI = re.compile(r"^data:(image/[a-z0-9.+-]+)?(;[a-z0-9=.-]+)*;base64,", re.I)
_B64_CHARS = re.compile(rb"^[A-Za-z0-9+/=_-]*$")
EXIF_USER_COMMENT = 0x9286
EXIF_IFD = 0x8769
XMP_NS = "https://daguerre.dev/ns/recipe/1.0/"


def read_source(source: str | bytes | Path, *, parameter: str, limits: ImageLimits, allow_paths: bool = True) -> bytes:
    """The encoded bytes behind a path, base64 string or data URI, size-capped before decoding.

    allow_paths=False (every network input) reads strings only as base64 / data URIs, never as
    files on the server.
    """
    if isinstance(source, bytes):
        data = source
    elif allow_paths and (isinstance(source, Path) or (isinstance(source, str) and _looks_like_path(source))):
        path = Path(source).expanduser()
        try:
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise ImageInputError(
                    f"{parameter}: file {path} is {size} bytes, over the {limits.max_bytes}-byte cap",
                    parameter=parameter,
                )
            data = path.read_bytes()
        except OSError as e:
            raise ImageInputError(
                f"{parameter}: cannot read image file {path}: {e.strerror or e}", parameter=parameter
            ) from e
    elif isinstance(source, Path):
        raise ImageInputError(f"{parameter}: file paths are not accepted here", parameter=parameter)
    elif isinstance(source, str):
        text = source.strip()
        if text.startswith(("http://", "https://")):
            raise ImageInputError(
                f"{parameter}: image URLs are not fetched here yet; pass a path, base64 or data URI",
                parameter=parameter,
            )
        m = _DATA_URI.match(text)
        if m:
            text = text[m.end() :]
        elif text.startswith("data:"):
            raise ImageInputError(f"{parameter}: data URI must be 'data:image/...;base64,<data>'", parameter=parameter)
        # base64 grows data by 4/3: refuse oversized text before decoding any of it.
        if len(text) > limits.max_bytes * 4 // 3 + 4:
            raise ImageInputError(
                f"{parameter}: base64 image is over the {limits.max_bytes}-byte cap", parameter=parameter
            )
        raw = re.sub(r"\s+", "", text).encode("ascii", "replace")
        if not raw or not _B64_CHARS.match(raw):
            raise ImageInputError(
                f"{parameter}: not a path to an existing file, nor valid base64 / data URI image data",
                parameter=parameter,
            )
        try:
            raw += b"=" * (-len(raw) % 4)
            data = base64.b64decode(raw, altchars=b"-_" if (b"-" in raw or b"_" in raw) else None, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageInputError(f"{parameter}: invalid base64 image data ({e})", parameter=parameter) from e
    else:
        raise ImageInputError(
            f"{parameter}: expected a path, base64 string or data URI, got {type(source).__name__}", parameter=parameter
        )
    if len(data) > limits.max_bytes:
        raise ImageInputError(
            f"{parameter}: image is {len(data)} bytes, over the {limits.max_bytes}-byte cap", parameter=parameter
        )
    return data


def _looks_like_path(s: str) -> bool:
    """An existing file, or a name that can only be a path; anything else is read as base64.

    JPEG base64 begins with '/9j/', so a leading slash alone does not make a path.
    """
    if len(s) > 4096 or "\n" in s or s.startswith("data:"):
        return False
    try:
        if Path(s).expanduser().is_file():
            return True
    except OSError:
        return False
    return s.startswith(("./", "../", "~")) or Path(s).suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"}


# A progressive JPEG is decoded scan by scan over the whole image; encoders write about 10 scans (libjpeg's
# standard script), so a file with many more is built to make decoding slow (the same scan repeated 600
# times in 86 KB costs 7-14 s). Past this count it is refused before decoding.
MAX_JPEG_SCANS = 32
_JPEG_MARKER = re.compile(rb"\xff(?!\x00)(?![\xd0-\xd7])(?!\xff)")  # a marker, not stuffing, RSTn or fill


def jpeg_scans(data: bytes) -> int:
    """How many scans (SOS segments) a JPEG holds, walking its markers without decoding anything."""
    pos, scans, n = 2, 0, len(data)
    while pos + 4 <= n:
        m = _JPEG_MARKER.search(data, pos)
        if m is None:
            break
        marker = data[m.start() + 1]
        pos = m.start() + 2
        if marker == 0xD9:  # end of image
            break
        if marker in (0xD8, 0x01):  # markers without a length
            continue
        length = int.from_bytes(data[pos : pos + 2], "big")
        if marker == 0xDA:
            scans += 1
        pos += length  # past the segment; after SOS the search skips the entropy-coded data to the next marker
    return scans


def open_image(data: bytes, *, parameter: str, limits: ImageLimits) -> Image.Image:
    """Decode bytes into an image after checking format and dimensions from the header."""
    if data[:3] == b"\xff\xd8\xff":
        scans = jpeg_scans(data)
        if scans > MAX_JPEG_SCANS:
            raise ImageInputError(
                f"{parameter}: JPEG with {scans} scans; at most {MAX_JPEG_SCANS} are accepted (a normal "
                "progressive JPEG has about 10): re-save it as a baseline or standard progressive JPEG",
                parameter=parameter,
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(_DECODED_EXT))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        # Pillow's own (higher) limit tripped before the size could be read: say ours, and the image's size.
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f" ({int(found.group(1)) / 1e6:.1f} MP)" if found else ""
        raise ImageInputError(
            f"{parameter}: image is too large{size}; the limit is {limits.max_side} px a side and "
            f"{limits.max_pixels / 1e6:.1f} MP",
            parameter=parameter,
        ) from None
    except UnidentifiedImageError as e:
        raise ImageInputError(f"{parameter}: not a PNG, JPEG or WEBP image", parameter=parameter) from e
    except Exception as e:  # noqa: BLE001 - any decoder failure on hostile bytes is the caller's input error
        raise ImageInputError(f"{parameter}: unreadable image header ({e})", parameter=parameter) from e
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageInputError(f"{parameter}: image has no pixels ({w}x{h})", parameter=parameter)
    if max(w, h) > limits.max_side or w * h > limits.max_pixels:
        raise ImageInputError(
            f"{parameter}: image is {w}x{h}; the limit is {limits.max_side} px a side and "
            f"{limits.max_pixels / 1e6:.1f} MP",
            parameter=parameter,
        )
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animated WEBP/PNG: the first frame
    try:
        im.load()
    except Exception as e:  # noqa: BLE001 - truncated or corrupt pixel data
        raise ImageInputError(f"{parameter}: image data is corrupt or truncated ({e})", parameter=parameter) from e
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im


def normalize_rgb(im: Image.Image) -> Image.Image:
    """EXIF-upright 8-bit RGB; transparency is composited onto white (the RGBA original is kept in info["rgba"])."""
    im = ImageOps.exif_transpose(im)
    im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode in ("RGB", "L") and "transparency" in im.info):
        im = im.convert("RGBA")
        canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
        out = Image.alpha_composite(canvas, im).convert("RGB")
        if im.getchannel("A").getextrema() != (255, 255):  # kept for layerDiffuse's image-to-image
            out.info["rgba"] = im
        return out
    return im.convert("RGB")


def normalize_mask(im: Image.Image) -> Image.Image:
    """EXIF-upright 8-bit grayscale mask; an RGBA mask uses its alpha where the colour is uniform."""
    im = ImageOps.exif_transpose(im)
    im = _to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA", "P"):
        rgba = im.convert("RGBA")
        gray = rgba.convert("L")
        lo, hi = gray.getextrema()
        return rgba.getchannel("A") if lo == hi else gray
    return im.convert("L")


def decode(data: bytes, *, parameter: str, limits: ImageLimits, mask: bool = False) -> tuple[Image.Image, str]:
    """Encoded bytes -> (normalized RGB image or L mask, file extension), decoded once with every check."""
    im = open_image(data, parameter=parameter, limits=limits)
    ext = _DECODED_EXT[im.format]
    try:
        return (normalize_mask(im) if mask else normalize_rgb(im)), ext
    except ImageInputError:
        raise
    except Exception as e:  # noqa: BLE001 - exotic modes that cannot be converted
        raise ImageInputError(f"{parameter}: cannot convert image mode {im.mode} ({e})", parameter=parameter) from e


def load_image(
    source: str | bytes | Path, *, parameter: str, limits: ImageLimits, mask: bool = False, allow_paths: bool = True
) -> Image.Image:
    """Path, base64 or data URI -> normalized RGB image (or L mask), with every safety check applied."""
    data = read_source(source, parameter=parameter, limits=limits, allow_paths=allow_paths)
    return decode(data, parameter=parameter, limits=limits, mask=mask)[0]


def to_pil(pixels: np.ndarray) -> Image.Image:
    """(H, W, 3) floats in [0, 1] -> 8-bit RGB, rounding like diffusers' numpy_to_pil."""
    return Image.fromarray((pixels * 255).round().astype("uint8"), "RGB")


def encode(
    image: Image.Image, *, fmt: str, quality: int, recipe_json: str | None = None, parameters_text: str | None = None
) -> bytes:
    """Encode an image with its recipe embedded; same inputs give the same bytes."""
    from PIL import PngImagePlugin

    buf = io.BytesIO()
    pil_format = PIL_FORMAT[fmt]
    if pil_format == "PNG":
        info = PngImagePlugin.PngInfo()
        if recipe_json is not None:
            info.add_itxt("daguerre", recipe_json, zip=True)
        if parameters_text is not None:
            info.add_itxt("parameters", parameters_text)
        image.save(buf, "PNG", pnginfo=info, optimize=False, compress_level=6)
        return buf.getvalue()
    kwargs: dict = {"quality": quality}
    if recipe_json is not None:
        exif = Image.Exif()
        # ASCII charset with JSON's \u escapes: every reader decodes it the same way.
        comment = recipe_json.encode("ascii", "backslashreplace")
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"ASCII\0\0\0" + comment
        kwargs["exif"] = exif.tobytes()
        kwargs["xmp"] = _xmp_packet(recipe_json).encode("utf-8")
    if pil_format == "JPEG":
        kwargs.update(subsampling=0 if quality >= 90 else 2, optimize=False, progressive=False)
    else:
        kwargs.update(method=4)
    image.save(buf, pil_format, **kwargs)
    return buf.getvalue()


def _xmp_packet(recipe_json: str) -> str:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:daguerre="{XMP_NS}">'
        f"<daguerre:recipe>{escape(recipe_json)}</daguerre:recipe>"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    )


def read_embedded(data: bytes) -> str | None:
    """The recipe JSON embedded by `encode`, from PNG text, EXIF UserComment or XMP; None if absent."""
    from xml.sax.saxutils import unescape

    im = Image.open(io.BytesIO(data))
    if im.format == "PNG":
        text = getattr(im, "text", {}) or {}
        if "daguerre" in text:
            return text["daguerre"]
    exif = im.getexif().get_ifd(EXIF_IFD)
    comment = exif.get(EXIF_USER_COMMENT)
    if isinstance(comment, bytes) and comment.startswith(b"ASCII\0\0\0"):
        return comment[8:].decode("ascii")
    xmp = im.info.get("xmp")
    if xmp:
        if isinstance(xmp, bytes):
            xmp = xmp.decode("utf-8", "replace")
        m = re.search(r"<daguerre:recipe>(.*?)</daguerre:recipe>", xmp, re.S)
        if m:
            return unescape(m.group(1))
    return None


def canny_edges(image: Image.Image, low: int, high: int) -> Image.Image:
    """Canny edges (OpenCV) of an image, as a 3-channel white-on-black control image."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("L")), low, high)  # (H, W) uint8
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")
