"""The Open Inference Protocol v2 (KServe v2, Triton's HTTP protocol) on the wire.

Pure functions, no I/O: parse an infer request, JSON alone or JSON followed by the binary
tensor data extension, into the encoded images it carries and the one output it asks
for; build the infer response, in JSON or binary, from the predictions the pipeline
returned; the server and model metadata, and Triton's model configuration (its clients
read it). The image checks themselves are :mod:`ingress.parsing`'s, as for ``/v1``.

The model as the protocol sees it: one input ``image``, ``BYTES`` of shape ``[N]`` (each
element an encoded image file), and one output ``probabilities``, ``FP32 [N, C]``; with
the classification extension (output parameter ``classification = k``) that output is
``BYTES [N, k]`` of ``"score:index:label"`` instead, as Triton returns it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from rabbit_serve.errors import ClientError
from rabbit_serve.messages import Prediction

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
VERSION = "1"
PLATFORM = "onnxruntime_onnx"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("classification", "binary_tensor_data", "model_configuration", "schedule_policy")
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class InferRequest:
    """What an infer request asks: ``elements`` are raw bytes (binary extension) or base64
    text (JSON); ``class_count`` 0 means the probabilities themselves; ``binary``: the
    output goes in the binary extension; ``timeout_us``: the schedule-policy ``timeout``."""

    id: str | None
    elements: list[bytes | str]
    class_count: int
    binary: bool
    timeout_us: int | None


def _bad(message: str) -> ClientError:
    return ClientError(400, message)


def _int(value: Any, what: str, minimum: int = 0) -> int:
    # JSON true is an int to Python; to the protocol it is not a number.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _bad(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{what} must be true or false, got {value!r}")
    return value


def _params(raw: Any, what: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _bad(f"{what}.parameters must be an object")
    if "shared_memory_region" in raw:
        raise _bad(f"{what}: shared memory is not supported; send the data in the request")
    return raw


def header_length(value: str | None, body_size: int) -> int | None:
    """The ``Inference-Header-Content-Length`` header: where the JSON ends in the body."""
    if value is None:
        return None
    if not value.strip().isdigit() or int(value) > body_size:
        raise _bad(f"{HEADER_LENGTH} must be a byte count within the body, got {value!r}")
    return int(value)


def split_elements(data: bytes, what: str) -> list[bytes]:
    """A binary ``BYTES`` tensor: each element a 4-byte little-endian length, then itself."""
    elements, offset = [], 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise _bad(f"{what}: binary data is truncated inside an element's length")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + size > len(data):
            raise _bad(f"{what}: binary data is truncated: an element of {size} bytes is cut")
        elements.append(data[offset : offset + size])
        offset += size
    return elements


def _flatten(data: Any, what: str) -> list[Any]:
    # The protocol allows the data nested by the shape or flat, row-major.
    if not isinstance(data, list):
        raise _bad(f"{what}.data must be a list")
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item, what) if isinstance(item, list) else [item])
    return flat


def _input_elements(tensor: Any, binary: bytes, offset: int) -> tuple[list[bytes | str], int]:
    """The elements of the one input and where its binary data ended."""
    what = "inputs[0]"
    if not isinstance(tensor, dict):
        raise _bad(f"{what} must be an object")
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise _bad(f"unknown input {name!r}; the model's input is {INPUT_NAME!r}")
    if tensor.get("datatype") != "BYTES":
        raise _bad(
            f"input {INPUT_NAME!r} is BYTES (encoded images), got {tensor.get('datatype')!r}"
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) != 1:
        raise _bad(f"input {INPUT_NAME!r} has shape [N] (N images), got {shape!r}")
    count = _int(shape[0], f"{what}.shape[0]", minimum=1)
    params = _params(tensor.get("parameters"), what)
    size = params.get("binary_data_size")
    if size is not None:
        size = _int(size, f"{what}.parameters.binary_data_size")
        if "data" in tensor:
            raise _bad(f"{what} has both 'data' and binary_data_size; send one")
        if offset + size > len(binary):
            raise _bad(
                f"{what}: binary data is truncated: binary_data_size is {size}, "
                f"the body holds {len(binary) - offset} bytes after the JSON"
            )
        elements: list[bytes | str] = list(split_elements(binary[offset : offset + size], what))
        offset += size
    else:
        if params.get("content_type", "base64") != "base64":
            raise _bad(f"{what}: JSON elements must be base64 (content_type 'base64')")
        elements = _flatten(tensor.get("data"), what)
        for i, element in enumerate(elements):
            if not isinstance(element, str):
                raise _bad(f"{what}.data[{i}] must be a base64 string")
    if len(elements) != count:
        raise _bad(f"{what}: shape says {count} elements, the data holds {len(elements)}")
    return elements, offset


def _output(outputs: Any, default_binary: bool) -> tuple[int, bool]:
    """``(class_count, binary)`` of the one output asked for; none: the probabilities."""
    if outputs is None or outputs == []:
        return 0, default_binary
    if not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict):
        raise _bad(f"outputs must be a list holding the one output {OUTPUT_NAME!r}")
    name = outputs[0].get("name")
    if name != OUTPUT_NAME:
        raise _bad(f"unknown output {name!r}; the model's output is {OUTPUT_NAME!r}")
    params = _params(outputs[0].get("parameters"), "outputs[0]")
    count = _int(params.get("classification", 0), "outputs[0].parameters.classification")
    binary = _bool(params.get("binary_data", default_binary), "outputs[0].parameters.binary_data")
    return count, binary


def parse_infer(body: bytes, json_length: int | None) -> InferRequest:
    """An infer request's body; ``json_length`` from :func:`header_length` (``None``: all
    of it is JSON). Anything malformed is a 400 :class:`ClientError` saying what."""
    head, binary = (body, b"") if json_length is None else (body[:json_length], body[json_length:])
    if not head:
        raise _bad("request body is empty; send the inference request JSON")
    try:
        raw = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"inference request is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise _bad("inference request must be a JSON object")
    request_id = raw.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("id must be a string")
    inputs = raw.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise _bad(f"inputs must be a list holding the one input {INPUT_NAME!r}")
    elements, used = _input_elements(inputs[0], binary, 0)
    if used != len(binary):
        raise _bad(f"{len(binary) - used} bytes after the JSON belong to no tensor")
    params = _params(raw.get("parameters"), "request")
    timeout = params.get("timeout")
    timeout_us = None if timeout is None else _int(timeout, "parameters.timeout", minimum=1)
    default_binary = _bool(params.get("binary_data_output", False), "binary_data_output")
    class_count, binary_out = _output(raw.get("outputs"), default_binary)
    return InferRequest(request_id, elements, class_count, binary_out, timeout_us)


def classification(predictions: Sequence[Prediction], count: int) -> list[str]:
    """Triton's classification strings, best first: ``"score:index:label"``."""
    return [f"{p['score']:f}:{p['class_id']}:{p['label']}" for p in predictions[:count]]


def probabilities(rows: Sequence[Sequence[Prediction]], num_classes: int) -> np.ndarray:
    """``FP32 [N, C]`` from predictions that cover every class (top_k = C)."""
    out = np.zeros((len(rows), num_classes), dtype=np.float32)
    for i, row in enumerate(rows):
        for p in row:
            out[i, p["class_id"]] = p["score"]
    return out


def _serialize_strings(values: Sequence[str]) -> bytes:
    parts = []
    for value in values:
        data = value.encode()
        parts += [_LENGTH.pack(len(data)), data]
    return b"".join(parts)


def infer_response(
    model: str,
    request: InferRequest,
    rows: Sequence[Sequence[Prediction]],
    num_classes: int,
) -> tuple[bytes, int | None]:
    """The response body, and the JSON's length when binary data follows it (the
    ``Inference-Header-Content-Length`` to send), else ``None``."""
    output: dict[str, Any] = {"name": OUTPUT_NAME}
    if request.class_count:
        # Every row has top_k = min(k, C) predictions; min() keeps the tensor rectangular.
        k = min(request.class_count, *(len(r) for r in rows))
        values = [s for row in rows for s in classification(row, k)]
        output.update(datatype="BYTES", shape=[len(rows), k])
        raw = _serialize_strings(values) if request.binary else None
        data: list[Any] = values
    else:
        array = probabilities(rows, num_classes)
        output.update(datatype="FP32", shape=list(array.shape))
        raw = array.astype("<f4").tobytes() if request.binary else None
        data = array.ravel().tolist()
    if raw is None:
        output["data"] = data
    else:
        output["parameters"] = {"binary_data_size": len(raw)}
    head: dict[str, Any] = {"model_name": model, "model_version": VERSION}
    if request.id is not None:
        head["id"] = request.id
    head["outputs"] = [output]
    body = orjson.dumps(head)
    if raw is None:
        return body, None
    return body + raw, len(body)


def error(message: str) -> bytes:
    """The protocol's error body."""
    return orjson.dumps({"error": message})


def server_metadata(version: str) -> bytes:
    return orjson.dumps({"name": "rabbit-serve", "version": version, "extensions": EXTENSIONS})


def model_metadata(model: str, num_classes: int) -> bytes:
    return orjson.dumps(
        {
            "name": model,
            "versions": [VERSION],
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, num_classes]}],
        }
    )


def model_config(model: str, num_classes: int) -> bytes:
    """Triton's model configuration (as JSON). ``max_batch_size`` 0: the batch is the
    input's own first dimension ``[N]``; the service batches across requests itself."""
    return orjson.dumps(
        {
            "name": model,
            "platform": PLATFORM,
            "backend": "onnxruntime",
            "max_batch_size": 0,
            "input": [{"name": INPUT_NAME, "data_type": "TYPE_STRING", "dims": [-1]}],
            "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [-1, num_classes]}],
        }
    )
