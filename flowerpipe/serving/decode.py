"""Encoded images to model input with Pillow alone (no TensorFlow on the serving path), run off the event loop."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from flowerpipe.data.images import to_rgb
from flowerpipe.serving.errors import RequestError

MAX_PIXELS = 50_000_000  # a request image with more pixels is refused before it is decoded (a decompression bomb)


def b64_bytes(text: object, where: str) -> bytes:
    """Strict base64 (standard or URL-safe alphabet) to bytes, or a RequestError naming where."""
    if not isinstance(text, str):
        raise RequestError(f"{where}: b64 must be a string")
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text)  # TF Serving accepts web-safe base64 too
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: b64 is not valid base64") from None


def decode_image(raw: bytes, size: int, where: str) -> np.ndarray:
    """A JPEG, PNG, GIF, BMP or WebP image as float32 (size, size, 3) RGB in 0-255, resized as training does.

    Bilinear with antialiasing, like tf.image.resize(antialias=True) in the training decoder: on real flower
    photos the two differ by about 1 grey level on average (their JPEG decoders round differently); an image
    already at the model's size is passed through unchanged.
    """
    if not raw:
        raise RequestError(f"{where}: empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise RequestError(f"{where}: {im.width}x{im.height} pixels is over the {MAX_PIXELS} limit")
                if im.format == "JPEG":
                    im.draft("RGB", (2 * size, 2 * size))  # DCT-scaled decode of big photos, kept at 2x or more
                im.load()
                rgb = to_rgb(im)
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(f"{where}: not a JPEG, PNG, GIF, BMP or WebP image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RequestError(f"{where}: image is over the {MAX_PIXELS} pixel limit") from None
    except Exception as exc:  # noqa: BLE001 (a truncated or hostile file is the client's error, never a 500)
        raise RequestError(f"{where}: image could not be decoded ({exc.__class__.__name__})") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(rgb, dtype=np.float32)


def decode_all(items: list[bytes], size: int, where: str = "image") -> np.ndarray:
    """Decode a list of encoded images into one (N, size, size, 3) float32 batch."""
    return np.stack([decode_image(raw, size, f"{where} {i}") for i, raw in enumerate(items)])
