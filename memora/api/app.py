"""`create_app(node, settings)`: the REST API as a QuartTrio app over a `NodeApi`.

What lives here: registering every endpoint of `memora.api.openapi.ENDPOINTS` with Quart, and
the steps every request goes through in order: authenticate, choose the namespace, check the
role, read the client session headers and the JSON body, run the handler under the request
timeout, and turn any typed error into its JSON answer. The app also counts requests and error
answers for the metrics endpoints. What must not: endpoint logic (the handler modules) or
serving HTTP (`memora.api.http_server` runs the app on hypercorn).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from memora.api import auth, openapi, schemas
from memora.api.arguments import Arguments, parse_json_body
from memora.api.errors import (
    BodyTooLargeError,
    MethodNotAllowedError,
    RequestTimeoutError,
    RouteNotFoundError,
    UnprocessableError,
    error_body,
    error_headers,
    status_of,
)
from memora.api.routing import (
    CLIENT_ID_HEADER,
    SEQUENCE_HEADER,
    Answer,
    Call,
    Endpoint,
    Tenancy,
    sequence_max,
)
from memora.api.settings import ApiSettings
from memora.core import constants, validate
from memora.core.errors import MemoraError, ValidationError
from memora.net.node_api import NodeApi

logger = logging.getLogger(__name__)

COUNTER_NAMES: Final = (
    "http_requests_total",
    "http_responses_4xx_total",
    "http_responses_5xx_total",
    "http_request_timeouts_total",
)


def create_app(node: NodeApi, settings: ApiSettings) -> QuartTrio:
    """The REST API over `node`, configured by `settings`; serve it with hypercorn's trio worker
    (`memora.api.http_server.serve_http`) or test it with `app.test_client()`."""
    assert settings.body_bytes_max > 0 and settings.request_timeout_s > 0, settings
    app = QuartTrio(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.body_bytes_max
    app.config["BODY_TIMEOUT"] = settings.request_timeout_s
    app.url_map.merge_slashes = False  # "//" is no path of ours: a 404, never a redirect.
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    for endpoint in openapi.ENDPOINTS:
        app.add_url_rule(
            endpoint.quart_rule(),
            endpoint.operation_id,
            _view(endpoint, node, settings, counters),
            methods=[endpoint.method],
            provide_automatic_options=False,
        )
    app.register_error_handler(HTTPException, _http_exception_answer)
    app.register_error_handler(Exception, _unexpected_exception_answer)
    app.after_request(_counting(counters))
    return app


def _view(
    endpoint: Endpoint, node: NodeApi, settings: ApiSettings, counters: dict[str, int]
) -> Callable[..., Awaitable[Response]]:
    async def view(**path: str) -> Response:
        try:
            with trio.fail_after(settings.request_timeout_s):
                answer = await _serve(endpoint, node, settings, counters, path)
        except trio.TooSlowError:
            counters["http_request_timeouts_total"] += 1
            message = f"the request did not finish within {settings.request_timeout_s} s"
            return error_response(RequestTimeoutError(message))
        except MemoraError as error:
            return error_response(error)
        except HTTPException as error:  # The body was too large, or too slow to arrive.
            return _http_exception_answer(error)
        assert answer.status == endpoint.status, (endpoint.operation_id, answer.status)
        return _answer_response(answer)

    view.__name__ = endpoint.operation_id
    return view


async def _serve(
    endpoint: Endpoint,
    node: NodeApi,
    settings: ApiSettings,
    counters: dict[str, int],
    path: dict[str, str],
) -> Answer:
    caller = auth.PUBLIC_CALLER
    if endpoint.role is not None:
        caller = auth.identify(settings, request.headers.get("Authorization"))
    namespace = _namespace(endpoint, settings, path)
    if endpoint.role is not None:
        caller.require(endpoint.role, None if endpoint.tenancy is Tenancy.NODE else namespace)
    client_id, sequence = _client_session(endpoint)
    call = Call(
        node=node,
        caller=caller,
        namespace=namespace,
        path=path,
        query=Arguments(request.args, from_query=True),
        body=await _json_body(endpoint),
        client_id=client_id,
        sequence=sequence,
        api_counters=counters,
    )
    return await endpoint.handler(call)


def _namespace(endpoint: Endpoint, settings: ApiSettings, path: dict[str, str]) -> str:
    if endpoint.tenancy is Tenancy.PATH:
        return validate.namespace_name(path["name"])
    given = request.args.get("namespace")
    if given is None:
        return settings.default_namespace
    return validate.namespace_name(given)


def _client_session(endpoint: Endpoint) -> tuple[str | None, int]:
    """The client id and sequence of a write, from its headers: both or neither."""
    if not endpoint.writes:
        return None, 0
    headers = Arguments(request.headers, from_query=True)
    client_id = headers.text(CLIENT_ID_HEADER, constants.client_id_bytes_max, None)
    sequence = headers.integer(SEQUENCE_HEADER, 1, sequence_max, None)
    if (client_id is None) != (sequence is None):
        message = f"{CLIENT_ID_HEADER} and {SEQUENCE_HEADER} go together: give both or neither"
        field = SEQUENCE_HEADER if sequence is None else CLIENT_ID_HEADER
        raise UnprocessableError(message, field)  # OpenAPI cannot tie two headers together.
    if client_id == "":
        raise ValidationError(f"{CLIENT_ID_HEADER} must not be empty", CLIENT_ID_HEADER)
    return client_id, sequence or 0


async def _json_body(endpoint: Endpoint) -> Arguments | None:
    if endpoint.body is None:
        return None
    data = await request.get_data(cache=False)
    assert isinstance(data, bytes)
    value = parse_json_body(data)
    return Arguments.json_object(value, schemas.body_fields(endpoint.body))


def _json_response(body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    text = json.dumps(body, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return Response(text, status, headers, content_type="application/json")


def _answer_response(answer: Answer) -> Response:
    if isinstance(answer.body, str):
        return Response(answer.body, answer.status, content_type=answer.content_type)
    return _json_response(answer.body, answer.status)


def error_response(error: MemoraError) -> Response:
    return _json_response(error_body(error), status_of(error), error_headers(error))


def _http_exception_answer(error: HTTPException) -> Response:
    """Quart's own refusals (no route, wrong method, body too large or too slow) as JSON."""
    status = error.code or 400
    if isinstance(error, MethodNotAllowed):
        allowed = tuple(sorted(set(error.valid_methods or ()) - {"HEAD", "OPTIONS"}))
        return error_response(MethodNotAllowedError("this path does not take that method", allowed))
    if status == 404:
        return error_response(RouteNotFoundError(f"no endpoint at {request.path}"))
    if status == 413:
        return error_response(BodyTooLargeError("the request body is too large", "body"))
    if status == 408:
        return error_response(RequestTimeoutError("the request body did not arrive in time"))
    message = error.description or error.name
    return _json_response({"error": {"code": "invalid", "message": message, "field": None}}, status)


def _unexpected_exception_answer(error: Exception) -> Response:
    """A bug: logged with its traceback, answered as a JSON 500 (bad input never gets here)."""
    logger.error("unexpected error serving %s %s", request.method, request.path, exc_info=error)
    body = {"error": {"code": "internal", "message": "internal error", "field": None}}
    return _json_response(body, 500)


def _counting(counters: dict[str, int]) -> Callable[[Response], Awaitable[Response]]:
    async def count(response: Response) -> Response:
        counters["http_requests_total"] += 1
        if 400 <= response.status_code < 500:
            counters["http_responses_4xx_total"] += 1
        elif response.status_code >= 500:
            counters["http_responses_5xx_total"] += 1
        return response

    return count
