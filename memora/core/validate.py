"""Checks of single values against the limits in `memora.core.constants`.

Each function either returns the value it checked (sometimes in a normalised form) or raises a
typed `MemoraError` naming the field. Nothing here looks at the state: whether an id exists or a
name is taken is the state machine's question. Everything here is pure.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import numpy as np

from memora.core import constants
from memora.core.codec import encode
from memora.core.errors import DimensionError, LimitError, ValidationError
from memora.core.types import VECTOR_DTYPE, FloatArray, Metric, Provenance

_NAMESPACE_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def text_field(value: object, field: str, bytes_max: int, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field)
    if not value and not empty_ok:
        raise ValidationError(f"{field} must not be empty", field)
    size = _utf8_size(value, field)
    if size > bytes_max:
        raise LimitError(f"{field} is {size} bytes; the limit is {bytes_max}", field)
    if "\x00" in value:
        raise ValidationError(f"{field} must not contain NUL characters", field)
    return value


def _utf8_size(value: str, field: str) -> int:
    """The UTF-8 size of a string. An ASCII string (the usual case) is its own UTF-8 and holds
    no surrogate, so it is not encoded just to be measured: every applied entry checks several."""
    if value.isascii():
        return len(value)
    return len(_utf8(value, field))


def _utf8(value: str, field: str) -> bytes:
    """The UTF-8 bytes of a string; a lone surrogate cannot be encoded (or stored) at all."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{field} is not valid Unicode (a lone surrogate)", field) from None


def optional_text(value: object, field: str, bytes_max: int) -> str | None:
    return None if value is None else text_field(value, field, bytes_max, empty_ok=True)


def namespace_name(value: object) -> str:
    name = text_field(value, "namespace", constants.namespace_name_bytes_max)
    if not _NAMESPACE_PATTERN.fullmatch(name):
        raise ValidationError(
            "namespace must start with a letter or digit and hold only letters, digits, '_', '.' "
            "and '-'",
            "namespace",
        )
    return name


def record_id(value: object, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{field} must be an integer", field)
    if not constants.record_id_min <= value <= constants.record_id_max:
        raise ValidationError(
            f"{field} must be between {constants.record_id_min} and {constants.record_id_max}",
            field,
        )
    return value


def dimension(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError("dimension must be an integer", "dimension")
    if not constants.dimension_min <= value <= constants.dimension_max:
        raise ValidationError(
            f"dimension must be between {constants.dimension_min} and {constants.dimension_max}",
            "dimension",
        )
    return value


def metric(value: object) -> Metric:
    if value == "cosine":
        return "cosine"
    if value == "l2":
        return "l2"
    raise ValidationError(f"metric must be one of {', '.join(constants.metrics)}", "metric")


def vector(data: object, dimension: int, field: str = "vector") -> FloatArray:
    """Decode float32 bytes of a command and check length and finiteness."""
    if not isinstance(data, bytes):
        raise ValidationError(f"{field} must be float32 bytes", field)
    if len(data) % VECTOR_DTYPE.itemsize != 0:
        raise ValidationError(f"{field} is not a whole number of float32 values", field)
    return vector_values(np.frombuffer(data, dtype=VECTOR_DTYPE), dimension, field)


def vector_values(array: FloatArray, dimension: int, field: str = "vector") -> FloatArray:
    """Check a float32 vector's shape, and that every component is finite and within bounds."""
    if array.ndim != 1 or array.shape[0] != dimension:
        raise DimensionError(
            f"{field} has shape {array.shape}; this namespace uses dimension {dimension}", field
        )
    # One comparison catches NaN (never <=), infinities and components so large that squared
    # distances would overflow float32.
    if not np.abs(array).max() <= constants.vector_component_abs_max:
        raise ValidationError(
            f"{field} contains NaN, infinity or a component beyond "
            f"±{constants.vector_component_abs_max:g}",
            field,
        )
    return array


def provenance(value: object) -> Provenance:
    if not isinstance(value, Provenance):
        raise ValidationError("provenance must be a Provenance", "provenance")
    optional_text(value.source, "source", constants.source_bytes_max)
    confidence = value.confidence
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise ValidationError("confidence must be a number", "confidence")
    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
        raise ValidationError("confidence must be between 0 and 1", "confidence")
    for field in ("valid_from_ms", "valid_to_ms"):
        bound = getattr(value, field)
        if bound is not None and (not isinstance(bound, int) or isinstance(bound, bool)):
            raise ValidationError(f"{field} must be an integer (ms since the epoch)", field)
        if (
            bound is not None
            and not constants.int_property_min <= bound <= constants.int_property_max
        ):
            raise ValidationError(f"{field} does not fit in 64 bits", field)
    if (
        value.valid_from_ms is not None
        and value.valid_to_ms is not None
        and value.valid_from_ms > value.valid_to_ms
    ):
        raise ValidationError("valid_from_ms must not be after valid_to_ms", "valid_to_ms")
    return value


# Upper bounds of the CBOR encoding: an item's head (major type and length) takes at most 9
# bytes, and so does a whole int or float.
_CBOR_HEAD_BYTES_MAX: Final = 9


def properties(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError("properties must be a map of string keys", "properties")
    if not value:
        return value  # The common case, and encoding it to measure its size costs more than all.
    if len(value) > constants.properties_count_max:
        raise LimitError(
            f"properties has {len(value)} keys; the limit is {constants.properties_count_max}",
            "properties",
        )
    size_max = _CBOR_HEAD_BYTES_MAX
    for key, item in value.items():
        size_max += _property_key(key, "properties key")
        size_max += _property_value(item, f"properties.{key}", depth=1)
    # The walk bounds the encoded size from above; only a map near the limit is encoded to
    # measure it exactly (encoding every map cost more than the rest of the check).
    if size_max <= constants.properties_bytes_max:
        return value
    size = len(encode(value))
    if size > constants.properties_bytes_max:
        raise LimitError(
            f"properties encode to {size} bytes; the limit is {constants.properties_bytes_max}",
            "properties",
        )
    return value


def _property_key(key: object, field: str) -> int:
    """Check a map key; returns an upper bound of its encoded size."""
    text = text_field(key, field, constants.property_key_bytes_max)
    return _CBOR_HEAD_BYTES_MAX + _utf8_size(text, field)


def _property_value(value: object, field: str, depth: int) -> int:
    """Check a property value; returns an upper bound of its encoded size."""
    if depth > constants.property_depth_max:
        raise LimitError(f"{field} nests deeper than {constants.property_depth_max}", field)
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return _CBOR_HEAD_BYTES_MAX + _utf8_size(value, field)
    if isinstance(value, int):
        if not constants.int_property_min <= value <= constants.int_property_max:
            raise ValidationError(f"{field} does not fit in 64 bits", field)
        return _CBOR_HEAD_BYTES_MAX
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{field} must be finite", field)
        return _CBOR_HEAD_BYTES_MAX
    if isinstance(value, list):
        size_max = _CBOR_HEAD_BYTES_MAX
        for item in value:
            size_max += _property_value(item, field, depth + 1)
        return size_max
    if isinstance(value, dict):
        size_max = _CBOR_HEAD_BYTES_MAX
        for key, item in value.items():
            size_max += _property_key(key, f"{field} key")
            size_max += _property_value(item, f"{field}.{key}", depth + 1)
        return size_max
    raise ValidationError(f"{field} has unsupported type {type(value).__name__}", field)
