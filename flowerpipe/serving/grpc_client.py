"""A gRPC client for TF Serving's PredictionService or KServe V2's GRPCInferenceService: images in, predictions out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowerpipe.serving import protos
from flowerpipe.serving.errors import RequestError
from flowerpipe.serving.protos import DT_STRING, DT_UINT8, predict_request


def tfs_pixels(model: str, images: np.ndarray):
    """serving_uint8 with the pixels as raw bytes: the cheapest request TF Serving takes (no decoding)."""
    return predict_request(model, "serving_uint8", "image", DT_UINT8, list(images.shape),
                       np.clip(np.rint(images), 0, 255).astype(np.uint8).tobytes())


def v2_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes):
    """A ModelInferRequest with one input in raw_input_contents."""
    req = protos.message("inference.ModelInferRequest")(model_name=model)
    req.inputs.add(name=name, datatype=datatype, shape=shape)
    req.raw_input_contents.append(raw)
    return req


def v2_pixels(model: str, images: np.ndarray):
    """UINT8 'image' pixels as raw bytes."""
    return v2_request(model, "image", "UINT8", list(images.shape),
                      np.clip(np.rint(images), 0, 255).astype(np.uint8).tobytes())


def probabilities(answer, protocol: str) -> tuple[np.ndarray, list[str]]:
    """(probabilities, class names) from a PredictResponse or a ModelInferResponse."""
    if protocol == "tfs":
        if "probabilities" not in answer.outputs:  # (indexing a protobuf map would add an empty entry)
            raise RequestError("server answered without a 'probabilities' output", 502)
        t = answer.outputs["probabilities"]
        shape = [d.size for d in t.tensor_shape.dim]
        probs = (np.frombuffer(t.tensor_content, "<f4") if t.tensor_content
                 else np.asarray(t.float_val, np.float32)).reshape(shape)
        names = ([n.decode(errors="replace") for n in answer.outputs["class_name"].string_val]
                 if "class_name" in answer.outputs else [])
        return probs, names
    outs = {o.name: i for i, o in enumerate(answer.outputs)}
    if "probabilities" not in outs or len(answer.raw_output_contents) != len(answer.outputs):
        raise RequestError("server answered without a raw 'probabilities' output", 502)
    probs = np.frombuffer(answer.raw_output_contents[outs["probabilities"]], "<f4").reshape(
        list(answer.outputs[outs["probabilities"]].shape))
    names: list[str] = []
    if "class_name" in outs:
        from flowerpipe.serving.v2 import bytes_elements

        raw = answer.raw_output_contents[outs["class_name"]]
        names = [n.decode(errors="replace") for n in bytes_elements(raw, len(probs), "class_name")]
    return probs, names


def call(channel, protocol: str, request, timeout: float):
    """Predict (tfs) or ModelInfer (v2) on a channel; a failure is one RequestError line."""
    import grpc

    service, method = ((protos.PREDICTION_SERVICE, "Predict") if protocol == "tfs"
                       else (protos.INFERENCE_SERVICE, "ModelInfer"))
    try:
        return protos.stub(channel, service, method)(request, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise RequestError(f"no gRPC answer within {timeout:g} s ({exc.details()})", 504) from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise RequestError(f"cannot reach the gRPC server: {exc.details()}", 503) from None
        raise RequestError(f"server answered {code.name}: {exc.details()}", 502) from None


def grpc_predict(target: str, model: str, files: list[Path], timeout: float = 60.0,
                 protocol: str = "tfs") -> list[dict]:
    """Send image files over gRPC (serving_bytes / image_bytes); one {"probabilities", "class_name"} per file."""
    import grpc

    from flowerpipe.serving.client import checked
    from flowerpipe.serving.v2 import bytes_blob

    blobs = [Path(f).read_bytes() for f in files]
    if protocol == "tfs":
        request = predict_request(model, "serving_bytes", "image_bytes", DT_STRING, [len(blobs)], strings=blobs)
    else:
        request = v2_request(model, "image_bytes", "BYTES", [len(blobs)], bytes_blob(blobs))
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1),
                                                ("grpc.max_receive_message_length", -1)]) as channel:
        answer = call(channel, protocol, request, timeout)
    try:
        probs, names = probabilities(answer, protocol)
    except (ValueError, RequestError) as exc:
        raise RequestError(f"server answered with outputs that do not fit {len(files)} image(s): {exc}", 502) from None
    return checked(probs, names if len(names) == len(files) else [None] * len(files), len(files))
