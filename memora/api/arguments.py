"""Typed values out of a request: its query string, or one JSON object of its body.

What lives here: `Arguments`, whose getters turn a raw value into the type a handler needs or
raise a typed error naming the field (`ValidationError` for a malformed value, `LimitError` for
one past a limit of `memora.core.constants`), and `parse_json_body`. Query strings carry text, so
there numbers and booleans are parsed from their spelling; a JSON body carries typed values,
which are taken as they are (a JSON `true` is never a number, `"5"` never an integer, and `5.0`
is the integer 5, as JSON Schema has it).
What must not: defaults or limits of its own (the callers pass them), or any look at state.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any, Final, Protocol, TypeVar

from memora.core import constants
from memora.core.errors import LimitError, ValidationError

ChoiceT = TypeVar("ChoiceT", bound=str)

# The spelling of an integer in a query string; longer ones cannot fit in 64 bits anyway.
_QUERY_INTEGER: Final = re.compile(r"-?[0-9]{1,20}")
_QUERY_BOOLEANS: Final = {"true": True, "false": False, "1": True, "0": False}


class Lookup(Protocol):
    """Where raw values come from: a dict, a query string's or headers' multi-dict."""

    def get(self, key: str) -> Any: ...


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


def parse_json_body(data: bytes) -> Any:
    """The JSON value of a request body. NaN and infinities are refused: JSON has none."""
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except UnicodeDecodeError as error:
        raise ValidationError(f"the body is not UTF-8: {error.reason}", "body") from None
    except json.JSONDecodeError as error:
        raise ValidationError(f"the body is not valid JSON: {error.msg}", "body") from None
    except RecursionError:
        raise LimitError("the body nests too deeply", "body") from None


def _refuse_constant(name: str) -> Any:
    raise ValidationError(f"{name} is not a JSON number", "body")


class Arguments:
    """Named raw values and the getters that type them.

    `prefix` names where the values sit in the request (`commands[3].`), so that an error in a
    batch item names the full field.
    """

    def __init__(self, values: Lookup, *, from_query: bool, prefix: str = "") -> None:
        self._values = values
        self._from_query = from_query
        self._prefix = prefix

    @classmethod
    def json_object(
        cls, value: Any, allowed: Iterable[str], *, prefix: str = "", field: str = "body"
    ) -> Arguments:
        """Arguments from a JSON object holding no names outside `allowed`."""
        if not isinstance(value, dict):
            raise ValidationError(f"{field} must be a JSON object", field)
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValidationError(f"unknown field {unknown[0]!r}", prefix + unknown[0])
        return cls(value, from_query=False, prefix=prefix)

    def field(self, name: str) -> str:
        return self._prefix + name

    def given(self, name: str) -> bool:
        """Whether the value is present (a JSON null counts as absent)."""
        return self._values.get(name) is not None

    def raw(self, name: str) -> Any:
        return self._values.get(name)

    def _get(self, name: str, default: Any) -> Any:
        value = self._values.get(name)
        if value is None and default is REQUIRED:
            raise ValidationError(f"{self.field(name)} is required", self.field(name))
        return value

    def integer(self, name: str, minimum: int, maximum: int, default: Any = REQUIRED) -> Any:
        value = self._get(name, default)
        if value is None:
            return default
        if self._from_query:
            if not isinstance(value, str) or not _QUERY_INTEGER.fullmatch(value):
                raise ValidationError(f"{self.field(name)} must be an integer", self.field(name))
            value = int(value)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON (and JSON Schema) counts 5.0 as the integer 5.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(f"{self.field(name)} must be an integer", self.field(name))
        return _in_range(value, minimum, maximum, self.field(name))

    def number(self, name: str, minimum: float, maximum: float, default: Any = REQUIRED) -> Any:
        value = self._get(name, default)
        if value is None:
            return default
        if self._from_query:
            value = _query_float(value, self.field(name))
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ValidationError(f"{self.field(name)} must be a number", self.field(name))
        if not math.isfinite(value):
            raise ValidationError(f"{self.field(name)} must be finite", self.field(name))
        return _in_range(value, minimum, maximum, self.field(name))

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, default)
        if value is None:
            return default
        if self._from_query and isinstance(value, str) and value.lower() in _QUERY_BOOLEANS:
            return _QUERY_BOOLEANS[value.lower()]
        if not isinstance(value, bool):
            raise ValidationError(f"{self.field(name)} must be true or false", self.field(name))
        return value

    def text(
        self, name: str, bytes_max: int, default: Any = REQUIRED, *, empty_ok: bool = True
    ) -> Any:
        value = self._get(name, default)
        if value is None:
            return default
        if value == "" and not empty_ok:
            raise ValidationError(f"{self.field(name)} must not be empty", self.field(name))
        return _text(value, bytes_max, self.field(name))

    def choice(self, name: str, choices: tuple[ChoiceT, ...], default: Any = REQUIRED) -> Any:
        value = self._get(name, default)
        if value is None:
            return default
        if value not in choices:
            message = f"{self.field(name)} must be one of {', '.join(choices)}"
            raise ValidationError(message, self.field(name))
        return choices[choices.index(value)]

    def text_list(self, name: str, bytes_max: int, count_max: int) -> list[str] | None:
        """A list of strings: a JSON array, or comma-separated in a query string."""
        value = self._get(name, None)
        if value is None:
            return None
        if self._from_query:
            value = value.split(",") if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ValidationError(f"{self.field(name)} must be a list of strings", self.field(name))
        if len(value) > count_max:
            message = f"{self.field(name)} holds at most {count_max} items"
            raise LimitError(message, self.field(name))
        return [_text(item, bytes_max, self.field(name)) for item in value]

    def vector(self, name: str, default: Any = REQUIRED) -> Any:
        """A list of finite numbers (JSON only), at most `constants.dimension_max` long."""
        value = self._get(name, default)
        if value is None:
            return default
        field = self.field(name)
        if not isinstance(value, list) or not value:
            raise ValidationError(f"{field} must be a non-empty list of numbers", field)
        if len(value) > constants.dimension_max:
            raise LimitError(f"{field} holds at most {constants.dimension_max} numbers", field)
        for item in value:
            if not isinstance(item, int | float) or isinstance(item, bool):
                raise ValidationError(f"{field} must hold only numbers", field)
            if not abs(item) <= constants.vector_component_abs_max:
                raise ValidationError(
                    f"{field} has a component beyond ±{constants.vector_component_abs_max:g}",
                    field,
                )
        return value

    def mapping(self, name: str, default: Any = REQUIRED) -> Any:
        value = self._get(name, default)
        if value is None:
            return default
        if not isinstance(value, dict):
            raise ValidationError(f"{self.field(name)} must be a JSON object", self.field(name))
        return value

    def object_list(self, name: str, count_max: int) -> list[Any]:
        value = self._get(name, REQUIRED)
        field = self.field(name)
        if not isinstance(value, list):
            raise ValidationError(f"{field} must be a list", field)
        if len(value) > count_max:
            raise LimitError(f"{field} holds at most {count_max} items", field)
        return value


def _in_range(value: Any, minimum: float, maximum: float, field: str) -> Any:
    if value < minimum:
        raise ValidationError(f"{field} must be at least {minimum}", field)
    if value > maximum:
        raise LimitError(f"{field} must be at most {maximum}", field)
    return value


def _query_float(value: Any, field: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{field} must be a number", field) from None


def _text(value: Any, bytes_max: int, field: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be a string", field)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{field} is not valid Unicode", field) from None
    if size > bytes_max:
        raise LimitError(f"{field} is {size} bytes; the limit is {bytes_max}", field)
    if "\x00" in value:
        raise ValidationError(f"{field} must not contain NUL characters", field)
    return value
