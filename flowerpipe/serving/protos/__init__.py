"""TF Serving's and KServe V2's gRPC messages and services, built from their published descriptors in a private pool.

A pool of its own, not protobuf's default one: TensorFlow registers its own copies of tensorflow.TensorProto and
friends there, and a second definition of the same names in one process is an error. The wire format is the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from flowerpipe.serving.protos.descriptors import FILES

POOL = descriptor_pool.DescriptorPool()
for _raw in FILES:
    POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(_raw))

DT_FLOAT, DT_INT32, DT_UINT8, DT_STRING = 1, 3, 4, 7  # tensorflow.DataType values
PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
INFERENCE_SERVICE = "inference.GRPCInferenceService"


@functools.cache
def message(full_name: str) -> type[Message]:
    """The message class of a full proto name, e.g. 'tensorflow.serving.PredictRequest'."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


class BadMessage:
    """A request whose bytes did not parse as its message: the handler answers INVALID_ARGUMENT with this text."""

    def __init__(self, text: str):
        self.text = text


def _parser(cls: type[Message]) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Message | BadMessage:
        try:
            return cls.FromString(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            return BadMessage(f"the request is not a valid {cls.DESCRIPTOR.full_name} ({exc})")
    return parse


def method_types(service: str, method: str) -> tuple[type[Message], type[Message]]:
    """(request class, response class) of a service's method."""
    m = POOL.FindServiceByName(service).methods_by_name[method]
    return message(m.input_type.full_name), message(m.output_type.full_name)


def handler(service: str, methods: dict[str, Callable]):
    """A grpc generic handler serving these unary methods of a published service (others: UNIMPLEMENTED)."""
    import grpc

    handlers = {}
    for name, fn in methods.items():
        request, response = method_types(service, name)
        handlers[name] = grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_parser(request),
                                                              response_serializer=response.SerializeToString)
    return grpc.method_handlers_generic_handler(service, handlers)


def stub(channel, service: str, method: str) -> Callable:
    """A client call of a service's unary method on a grpc channel (sync or aio), as generated stubs make it."""
    request, response = method_types(service, method)
    return channel.unary_unary(f"/{service}/{method}", request_serializer=request.SerializeToString,
                               response_deserializer=response.FromString)


def predict_request(model: str, signature: str, name: str, dtype: int, shape: list[int], content: bytes = b"",
                    strings: list[bytes] | None = None) -> Message:
    """A TF Serving PredictRequest with one input tensor: raw tensor_content, or string_val for encoded images."""
    req = message("tensorflow.serving.PredictRequest")()
    req.model_spec.name, req.model_spec.signature_name = model, signature
    t = req.inputs[name]
    t.dtype = dtype
    for d in shape:
        t.tensor_shape.dim.add(size=d)
    if strings is not None:
        t.string_val.extend(strings)
    else:
        t.tensor_content = content
    return req
