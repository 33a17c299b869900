"""Image checks (Pillow) and the one decode-and-resize every stage uses (TensorFlow)."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats and 8-bit modes whose original bytes tf.io.decode_image turns into the pixels a viewer shows; anything
# else (BMP variants TensorFlow misreads, TIFF, WebP, 16-bit, palette with transparency...) is stored as 8-bit PNG.
TF_DECODABLE = {"JPEG", "PNG", "GIF"}
TF_MODES = {"RGB", "L", "CMYK", "YCbCr"}
CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L", "I", "1"}
WIDE_MODES = {"I;16", "I;16B", "I;16L", "I"}  # 16-bit (or 32-bit integer) gray: scaled, not clipped, to 8 bits


@dataclass
class Checked:
    """One image file after checking: the bytes to store, or why it was rejected."""

    path: str
    ok: bool
    reason: str = ""
    data: bytes = b""
    fmt: str = ""
    height: int = 0
    width: int = 0
    sha256: str = ""
    reencoded: bool = False


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows it: 16-bit gray scaled down, transparency over white, palettes expanded."""
    if im.mode in WIDE_MODES:
        import numpy as np

        a = np.asarray(im, dtype=np.int64)
        top = 65535 if im.mode != "I" or a.max() > 255 else 255
        return Image.fromarray((np.clip(a, 0, top) * 255 // top).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


@dataclass(frozen=True)
class ImageCaps:
    """Per-image limits, named by the params that set them."""

    max_bytes: int = 50 << 20
    max_pixels: int = 100_000_000


def check_image(path: Path, rel: str, caps: ImageCaps = ImageCaps()) -> Checked:
    """Decode path (at reduced scale where JPEG allows) to prove it is a usable image; never raises."""
    try:
        size = path.stat().st_size
        if size > caps.max_bytes:
            return Checked(rel, False, f"file of {size >> 20} MB is over tfrecords.max_image_mb={caps.max_bytes >> 20}")
        raw = path.read_bytes()
    except OSError as exc:
        return Checked(rel, False, f"unreadable: {exc.strerror or exc}")
    if not raw:
        return Checked(rel, False, "empty file")
    digest = hashlib.sha256(raw).hexdigest()
    Image.MAX_IMAGE_PIXELS = caps.max_pixels  # Pillow's own bomb check, at our limit; ours below names the param
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                fmt, (width, height), mode = im.format or "", im.size, im.mode
                if width * height > caps.max_pixels:  # known from the header: never decoded
                    return Checked(rel, False, f"{width}x{height} pixels is over tfrecords.max_image_megapixels="
                                               f"{caps.max_pixels // 1_000_000} (a decompression bomb?)")
                if mode not in CONVERTIBLE_MODES:
                    return Checked(rel, False, f"unsupported colour mode {mode}")
                if fmt == "JPEG":
                    im.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # DCT-scaled decode: fast, full parse
                im.load()
                if fmt in TF_DECODABLE and mode in TF_MODES and getattr(im, "n_frames", 1) == 1:
                    return Checked(rel, True, data=raw, fmt=fmt.lower(), height=height, width=width, sha256=digest)
                im.seek(0)
                buf = io.BytesIO()
                to_rgb(im).save(buf, "PNG")
                return Checked(rel, True, data=buf.getvalue(), fmt="png", height=height, width=width, sha256=digest,
                               reencoded=True)
    except UnidentifiedImageError:
        return Checked(rel, False, "not an image")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return Checked(rel, False, f"over tfrecords.max_image_megapixels={caps.max_pixels // 1_000_000} "
                                   "(a decompression bomb?)")
    except Exception as exc:  # noqa: BLE001 (a decoder bug on one hostile file must not stop the stage)
        return Checked(rel, False, f"corrupt image: {exc.__class__.__name__}: {exc}")


def decode_resize(encoded, image_size: int):
    """Decode JPEG/PNG/GIF/BMP bytes to RGB and resize to a float32 0-255 square tensor."""
    import tensorflow as tf

    img = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    img = tf.image.resize(img, (image_size, image_size), method="bilinear", antialias=True)
    return tf.clip_by_value(img, 0.0, 255.0)


def load_image(source: Path | bytes, image_size: int):
    """Read one image file or bytes of any supported format into a float32 (size, size, 3) array."""
    import numpy as np

    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        if im.format not in TF_DECODABLE or im.mode not in TF_MODES or getattr(im, "n_frames", 1) > 1:
            buf = io.BytesIO()
            im.seek(0)
            to_rgb(im).save(buf, "PNG")
            raw = buf.getvalue()
    return np.asarray(decode_resize(raw, image_size), dtype=np.float32)
