"""TF Serving's warm-up file: a few PredictionLog records in assets.extra/, written at export, replayed at load."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np

from flowerpipe.errors import FormatError
from flowerpipe.serving.protos import DT_FLOAT, DT_STRING, DT_UINT8, message, predict_request

FILE = Path("assets.extra") / "tf_serving_warmup_requests"  # where TF Serving looks, inside a version folder
MAX_RECORDS = 1000  # TF Serving's own limit on warm-up records


def records(image_size: int) -> list[bytes]:
    """One PredictionLog per signature, each a batch of one image: float pixels, uint8 pixels, an encoded PNG."""
    from PIL import Image

    grey = np.full((1, image_size, image_size, 3), 128, np.uint8)
    png = io.BytesIO()
    Image.fromarray(grey[0]).save(png, "PNG")
    shape = list(grey.shape)
    requests = [predict_request("", "serving_default", "image", DT_FLOAT, shape, grey.astype("<f4").tobytes()),
                predict_request("", "serving_uint8", "image", DT_UINT8, shape, grey.tobytes()),
                predict_request("", "serving_bytes", "image_bytes", DT_STRING, [1], strings=[png.getvalue()])]
    out = []
    for req in requests:
        log = message("tensorflow.serving.PredictionLog")()
        log.predict_log.request.CopyFrom(req)
        out.append(log.SerializeToString())
    return out


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC-32C of data."""
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write(version_dir: Path, image_size: int) -> Path:
    """Write the warm-up file into a SavedModel version folder in TFRecord framing (what TensorFlow's writer writes)."""
    path = Path(version_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for record in records(image_size):
            length = struct.pack("<Q", len(record))
            f.write(length + struct.pack("<I", masked_crc(length)) + record + struct.pack("<I", masked_crc(record)))
    return path


def read(path: Path) -> list[bytes]:
    """The records of a TFRecord file, lengths and CRCs checked, without TensorFlow."""
    data, out, at = Path(path).read_bytes(), [], 0
    while at < len(data):
        if at + 12 > len(data):
            raise FormatError(f"{path}: truncated record header at byte {at}")
        (n,) = struct.unpack_from("<Q", data, at)
        if struct.unpack_from("<I", data, at + 8)[0] != masked_crc(data[at:at + 8]):
            raise FormatError(f"{path}: corrupt record length at byte {at}")
        if at + 12 + n + 4 > len(data):
            raise FormatError(f"{path}: a record of {n} bytes runs past the end of the file")
        record = data[at + 12: at + 12 + n]
        if struct.unpack_from("<I", data, at + 12 + n)[0] != masked_crc(record):
            raise FormatError(f"{path}: corrupt record at byte {at} (CRC mismatch)")
        out.append(record)
        at += 12 + n + 4
        if len(out) > MAX_RECORDS:
            raise FormatError(f"{path}: more than {MAX_RECORDS} warm-up records")
    return out
