"""Reading an ONNX model safely: parse errors, external data confined to the model's folder,
declared sizes bounded, `onnx.checker` — each a clear `InvalidModelError`, never a crash."""
from __future__ import annotations

import os
from math import prod
from typing import Union

import numpy as np
import onnx
from onnx import external_data_helper, helper

from .errors import InvalidModelError

#: the most bytes a model may declare for its initializers and for any one value
MAX_BYTES = 2 << 30

ModelSource = Union[str, os.PathLike, bytes, onnx.ModelProto]


def read_model(source: ModelSource, max_bytes: int = MAX_BYTES) -> onnx.ModelProto:
    """The checked ModelProto of a path, serialized bytes or a ModelProto."""
    base_dir = None
    if isinstance(source, onnx.ModelProto):
        model = source
    elif isinstance(source, (bytes, bytearray)):
        model = _parse(bytes(source), "<bytes>")
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise InvalidModelError(f"{path}: no such ONNX file")
        if os.path.getsize(path) > max_bytes:
            raise InvalidModelError(f"{path}: {os.path.getsize(path)} bytes, over the limit of {max_bytes}")
        with open(path, "rb") as f:
            model = _parse(f.read(), path)
        base_dir = os.path.dirname(os.path.abspath(path))
    _check_sizes(model, max_bytes)
    if _external_tensors(model):
        _load_external(model, base_dir, max_bytes)
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as e:
        raise InvalidModelError(f"the ONNX checker rejects the model: {str(e).splitlines()[0]}") from None
    return model


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError and its relatives
        raise InvalidModelError(f"{where}: not a readable ONNX model (truncated or malformed: {e})") from None
    if not model.HasField("graph"):
        raise InvalidModelError(f"{where}: not an ONNX model (no graph)")
    return model


def _itemsize(elem_type: int) -> int:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 1


def _check_sizes(model: onnx.ModelProto, max_bytes: int) -> None:
    """Every initializer's and declared value's size within `max_bytes`, all together too;
    raw data matching the declared dims."""
    total = 0
    for t in model.graph.initializer:
        if any(d < 0 for d in t.dims):
            raise InvalidModelError(f"initializer {t.name!r}: negative dimension in {list(t.dims)}")
        nbytes = prod(t.dims) * _itemsize(t.data_type)
        total += nbytes
        if nbytes > max_bytes or total > max_bytes:
            raise InvalidModelError(f"initializer {t.name!r} declares {list(t.dims)} "
                                    f"({nbytes} bytes): the initializers exceed the limit of {max_bytes} bytes")
        if t.HasField("raw_data") and t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) != nbytes:
            raise InvalidModelError(f"initializer {t.name!r}: {len(t.raw_data)} bytes of data for "
                                    f"dims {list(t.dims)} ({nbytes} bytes)")
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if prod(dims) * _itemsize(v.type.tensor_type.elem_type) > max_bytes:
            raise InvalidModelError(f"value {v.name!r} declares shape {dims}, over the limit of {max_bytes} bytes")


def _external_tensors(model: onnx.ModelProto) -> list:
    return [t for t in external_data_helper._get_all_tensors(model)
            if t.HasField("data_location") and t.data_location == onnx.TensorProto.EXTERNAL]


def _count(text: str, tensor: str, key: str) -> int:
    """An external-data offset or length: a non-negative integer, else InvalidModelError."""
    if not text.isdigit():
        raise InvalidModelError(f"initializer {tensor!r}: external data {key} {text!r} is not a "
                                "non-negative integer")
    return int(text)


def _load_external(model: onnx.ModelProto, base_dir, max_bytes: int) -> None:
    """Read external data after checking each location stays inside the model's folder and
    each (offset, length) inside its file."""
    if base_dir is None:
        raise InvalidModelError("the model keeps tensors in external files: load it from its path")
    root = os.path.realpath(base_dir)
    for t in _external_tensors(model):
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        target = os.path.realpath(os.path.join(root, location))
        if os.path.isabs(location) or os.path.commonpath([root, target]) != root:
            raise InvalidModelError(f"initializer {t.name!r}: external data path {location!r} "
                                    f"points outside the model's folder {root}")
        if not os.path.isfile(target):
            raise InvalidModelError(f"initializer {t.name!r}: external data file {location!r} not found")
        size = os.path.getsize(target)
        offset = _count(info.get("offset", "0"), t.name, "offset")
        length = _count(info.get("length", str(size - offset)), t.name, "length")
        need = prod(t.dims) * _itemsize(t.data_type)
        if offset < 0 or length != need or offset + length > size or length > max_bytes:
            raise InvalidModelError(f"initializer {t.name!r}: external data ({location!r}, offset {offset}, "
                                    f"length {length}) does not hold {need} bytes inside a file of {size}")
    try:
        external_data_helper.load_external_data_for_model(model, root)
    except Exception as e:
        raise InvalidModelError(f"cannot read the model's external data: {e}") from None
