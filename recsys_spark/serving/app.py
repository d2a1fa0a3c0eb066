"""The HTTP API of ``recsys serve``: routes, input checks, authentication, errors.

Routes (README, "Serve", has curl examples and every field):

- ``GET /v1/recommendations/{user_id}?k=``: the user's list (service.Service.for_user).
- ``POST /v1/recommendations`` with ``{"user_id": ..., "events": [...], "k": ...}``: a session's
  list (service.Service.for_session).
- ``GET /healthz`` (the process answers), ``GET /readyz`` (Redis answers and a model is loaded,
  else 503), ``GET /metrics`` (Prometheus).

Bad input gets a 4xx and a one-line ``{"error": "..."}``, and changes nothing (no exposure is
logged): a malformed id or event (422), k outside 1..score.top_k (422), a body over
``serve.max_body_bytes`` or more than ``serve.max_events`` events (413), a missing or wrong
``X-API-Key`` when ``serve.api_key_env`` names a set variable (401).

The GET is the hot path (a Redis read, 1,000 requests/s on 2 cores): :class:`CachedRoute`
answers it as a bare ASGI app in front of FastAPI, which serves every other route. FastAPI's
routing, parameter solving and middleware were half of the GET's CPU.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import time
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys_spark.serving import ids
from recsys_spark.serving.metrics import CONTENT_TYPE
from recsys_spark.serving.realtime import SessionEvent, micros_of
from recsys_spark.serving.service import Service

GET_ROUTE = "/v1/recommendations/{user_id}"
POST_ROUTE = "/v1/recommendations"
API_KEY_HEADER = "X-API-Key"
_GET_PREFIX = "/v1/recommendations/"
_JSON_HEADERS = [(b"content-type", b"application/json")]


class EventIn(BaseModel):
    """One posted event: the raw contract's fields clean needs (others are ignored)."""

    product_id: int | str
    event_type: str
    event_time: dt.datetime
    category_id: int | None = None


class SessionIn(BaseModel):
    user_id: int | str | None = None
    events: list[EventIn] = []
    k: int | None = None


class BadRequest(Exception):
    """A 4xx with a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class Checks:
    """What every request route checks and records: the API key, k, the metrics of an answer."""

    def __init__(self, service: Service, api_key: str | None):
        self.service = service
        self.metrics = service.metrics
        self.expected_key = api_key.encode() if api_key else None

    def key(self, given: bytes | None) -> None:
        """Raises: BadRequest (401) unless ``given`` is the API key (when one is set)."""
        if self.expected_key is not None and not hmac.compare_digest(given or b"", self.expected_key):
            raise BadRequest(401, f"missing or wrong {API_KEY_HEADER} header")

    def k(self, k: int | None) -> int:
        """The list length asked for (score.top_k when None). Raises: BadRequest (422)."""
        if k is None:
            return self.service.max_k
        if not 1 <= k <= self.service.max_k:
            raise BadRequest(422, f"k must lie in 1..{self.service.max_k} (score.top_k), got {k}")
        return k

    def failed(self, route: str, status: int, message: str, started: float) -> tuple[int, bytes]:
        self.metrics.child(self.metrics.requests, route, str(status)).inc()
        self.metrics.child(self.metrics.latency, route, "error").observe(time.perf_counter() - started)
        return status, json.dumps({"error": message}).encode()

    def answered(self, route: str, answered_by: str, started: float) -> None:
        self.metrics.child(self.metrics.requests, route, "200").inc()
        self.metrics.child(self.metrics.latency, route, answered_by).observe(time.perf_counter() - started)


class CachedRoute:
    """``GET /v1/recommendations/{user_id}`` as a bare ASGI app; every other request goes to ``app``.

    The path parameter is Starlette's (one non-empty segment of the decoded path), ``k`` the last
    ``k=`` of the query string, the API key the ``X-API-Key`` header. The work runs on the event
    loop, not in the thread pool: one Redis round trip (~0.1 ms), less than a thread hop's CPU; a
    slow or absent Redis blocks the loop at most serve.socket_timeout_s, once per
    serve.redis_retry_seconds (then it is skipped).
    """

    def __init__(self, app: FastAPI, service: Service, checks: Checks):
        self.app = app
        self.service = service
        self.checks = checks

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        user_id = path[len(_GET_PREFIX):] if path.startswith(_GET_PREFIX) else ""
        if not user_id or "/" in user_id or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        status, body = self.answer(user_id, scope)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def answer(self, user_id: str, scope) -> tuple[int, bytes]:
        started = time.perf_counter()
        checks = self.checks
        try:
            if checks.expected_key is not None:
                checks.key(next((v for n, v in scope["headers"] if n == b"x-api-key"), None))
            answer = self.service.for_user(user_id, checks.k(query_k(scope.get("query_string", b""))))
        except BadRequest as exc:
            return checks.failed(GET_ROUTE, exc.status, exc.message, started)
        except ids.IdError as exc:
            return checks.failed(GET_ROUTE, 422, str(exc), started)
        body = answer.json()
        checks.answered(GET_ROUTE, answer.answered_by, started)
        return 200, body


def create_app(service: Service, api_key: str | None = None) -> CachedRoute:
    """The ASGI app of ``service``: :class:`CachedRoute` in front of the FastAPI app of the others.

    Args:
        api_key: the key requests must send as X-API-Key; None = no authentication.
    """
    app = FastAPI(title="recsys_spark", description="Recommendations: cached, real-time, fallback.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    checks = Checks(service, api_key)
    sc = service.cfg.serve
    naive_zone = ZoneInfo(service.cfg.clean.naive_timezone)
    kinds = ids.event_types(service.cfg.clean.event_aliases)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.post(POST_ROUTE)
    async def recommend_session(request: Request) -> Response:
        started = time.perf_counter()
        try:
            checks.key(request.headers.get(API_KEY_HEADER, "").encode())
            body = await read_body(request, sc.max_body_bytes)
            try:
                posted = SessionIn.model_validate_json(body)
            except ValidationError as exc:
                raise BadRequest(422, one_line(exc.errors())) from None
            if len(posted.events) > sc.max_events:
                raise BadRequest(413, f"events: {len(posted.events)} events, at most {sc.max_events} "
                                      f"(serve.max_events)")
            k = checks.k(posted.k)
            events = [session_event(e, i, service.product_type, kinds, naive_zone) for i, e in enumerate(posted.events)]
            if posted.user_id is not None:
                service.pseudonym(posted.user_id)  # a bad id fails before any work
            answer = await run_in_threadpool(service.for_session, posted.user_id, events, k)
        except (BadRequest, ids.IdError) as exc:
            status, message = (exc.status, exc.message) if isinstance(exc, BadRequest) else (422, str(exc))
            return Response(checks.failed(POST_ROUTE, status, message, started)[1], status,
                            media_type="application/json")
        checks.answered(POST_ROUTE, answer.answered_by, started)
        return Response(answer.json(), media_type="application/json")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready, state = service.readiness()
        return JSONResponse(state, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    return CachedRoute(app, service, checks)


def query_k(query_string: bytes) -> int | None:
    """The ``k`` query parameter (the last one given) as an int, None when absent. Raises: BadRequest (422)."""
    if not query_string:
        return None
    text = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)).get("k")
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise BadRequest(422, f"k: {text[:40]!r} is not an integer") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (413) past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the body is {int(declared):,} bytes, at most {limit:,} (serve.max_body_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"the body is over {limit:,} bytes (serve.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def session_event(event: EventIn, index: int, product_type: str, kinds, naive_zone: ZoneInfo) -> SessionEvent:
    """A posted event as clean would keep it (``kinds``: :func:`ids.event_types`). Raises:
    BadRequest (422) naming the event and field."""
    try:
        product = ids.product_key(event.product_id, product_type)
        kind = kinds(event.event_type)
    except ids.IdError as exc:
        raise BadRequest(422, f"events[{index}].{exc}") from None
    moment = event.event_time if event.event_time.tzinfo else event.event_time.replace(tzinfo=naive_zone)
    return SessionEvent(product, kind, micros_of(moment.astimezone(dt.timezone.utc)), event.category_id)


def one_line(errors) -> str:
    """The first validation error as ``where: what`` (e.g. ``events[2].event_time: Input should be ...``)."""
    if not errors:
        return "invalid request"
    first = errors[0]
    where = ""
    for part in first.get("loc", ()):
        if part in ("body", "query", "path"):
            continue
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where or 'body'}: {first.get('msg', 'invalid')}{more}"
