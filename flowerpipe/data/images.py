"""Image checks (Pillow) and the one decode-and-resize every stage uses (TensorFlow)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Formats whose original bytes tf.io.decode_image reads; anything else is re-encoded as PNG.
TF_DECODABLE = {"JPEG", "PNG", "GIF", "BMP"}
CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr", "I;16", "I", "1"}


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


def check_image(path: Path, rel: str) -> Checked:
    """Decode path (at reduced scale where JPEG allows) to prove it is a usable image."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return Checked(rel, False, f"unreadable: {exc.strerror}")
    if not raw:
        return Checked(rel, False, "empty file")
    digest = hashlib.sha256(raw).hexdigest()
    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt, (width, height), mode = im.format or "", im.size, im.mode
            if mode not in CONVERTIBLE_MODES:
                return Checked(rel, False, f"unsupported colour mode {mode}")
            if fmt == "JPEG":
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))  # DCT-scaled decode: fast, still full parse
            im.load()
            if fmt in TF_DECODABLE and getattr(im, "n_frames", 1) == 1:
                return Checked(rel, True, data=raw, fmt=fmt.lower(), height=height, width=width, sha256=digest)
            buf = io.BytesIO()
            im.seek(0)
            im.convert("RGB").save(buf, "PNG")
            return Checked(rel, True, data=buf.getvalue(), fmt="png", height=height, width=width, sha256=digest,
                           reencoded=True)
    except UnidentifiedImageError:
        return Checked(rel, False, "not an image")
    except (OSError, ValueError, SyntaxError) as exc:
        return Checked(rel, False, f"corrupt image: {exc}")


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
        fmt = im.format
        if fmt not in TF_DECODABLE:
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "PNG")
            raw = buf.getvalue()
    return np.asarray(decode_resize(raw, image_size), dtype=np.float32)
