"""The optional arguments the MCP tools share, and how errors become tool errors.

Every write tool takes `session_id`, `source`, `confidence`, `valid_from` and `valid_to`; every
read tool takes `as_of`. Times are ISO 8601 (`2025-03-01`, `2025-03-01T09:30:00Z`; a time
without a zone is UTC) or milliseconds since the epoch. A `MemoraError` becomes a tool error
(`isError: true`): after the SDK's "Error executing tool NAME: " its text starts with the error's
stable code, then says what is wrong and which argument it was.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from memora.core import constants, validate
from memora.core.errors import MemoraError
from memora.core.types import Provenance
from memora.service.times import time_ms

SessionArg = Annotated[
    str | None,
    Field(
        description="The conversation or task session this write belongs to (see session_start)",
        max_length=constants.session_bytes_max,
    ),
]
SourceArg = Annotated[
    str | None,
    Field(
        description="Where the fact came from: a URL, a document, 'user said', ...",
        max_length=constants.source_bytes_max,
    ),
]
ConfidenceArg = Annotated[
    float | None, Field(description="How sure the writer is, from 0 to 1 (default 1)", ge=0, le=1)
]
TimeArg = Annotated[
    str | int | None,
    Field(description="ISO 8601 date or time (UTC unless it has a zone), or ms since the epoch"),
]
AsOfArg = Annotated[
    int | None,
    Field(description="Read the memory as it was at this commit index (time travel)", ge=0),
]


def provenance(
    source: str | None,
    confidence: float | None,
    valid_from: str | int | None,
    valid_to: str | int | None,
) -> Provenance:
    value = Provenance(
        source=source,
        confidence=1.0 if confidence is None else confidence,
        valid_from_ms=time_ms(valid_from, "valid_from"),
        valid_to_ms=time_ms(valid_to, "valid_to"),
    )
    return validate.provenance(value)


def tool_error(error: MemoraError) -> ToolError:
    where = f" (argument {error.field})" if error.field else ""
    return ToolError(f"{error.code}: {error.message}{where}")


@contextmanager
def errors_as_tool_errors() -> Iterator[None]:
    try:
        yield
    except MemoraError as error:
        raise tool_error(error) from error


@asynccontextmanager
async def async_errors_as_tool_errors() -> AsyncIterator[None]:
    try:
        yield
    except MemoraError as error:
        raise tool_error(error) from error


def json_text(value: Any) -> str:
    """JSON as the reference server writes it (`JSON.stringify(value, null, 2)`)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def result(text_value: Any, structured: dict[str, Any]) -> CallToolResult:
    """A tool result with `text_value` as JSON text and `structured` as structured content."""
    text = text_value if isinstance(text_value, str) else json_text(text_value)
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=structured
    )
