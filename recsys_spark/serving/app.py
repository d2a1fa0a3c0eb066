"""The HTTP API of ``recsys serve`` (FastAPI): routes, input checks, authentication, errors.

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
"""

from __future__ import annotations

import datetime as dt
import hmac
import time
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


def create_app(service: Service, api_key: str | None = None) -> FastAPI:
    """The FastAPI app of ``service``.

    Args:
        api_key: the key requests must send as X-API-Key; None = no authentication.
    """
    app = FastAPI(title="recsys_spark", description="Recommendations: cached, real-time, fallback.",
                  docs_url=None, redoc_url=None, openapi_url=None)
    metrics = service.metrics
    sc = service.cfg.serve
    naive_zone = ZoneInfo(service.cfg.clean.naive_timezone)
    aliases = service.cfg.clean.event_aliases
    expected_key = api_key.encode() if api_key else None

    def fail(route: str, status: int, message: str, started: float) -> JSONResponse:
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route, "error").observe(time.perf_counter() - started)
        return JSONResponse({"error": message}, status_code=status)

    def answered(route: str, answer, started: float) -> JSONResponse:
        response = JSONResponse(answer.body())
        metrics.requests.labels(route, "200").inc()
        metrics.latency.labels(route, answer.answered_by).observe(time.perf_counter() - started)
        return response

    def check(request: Request, k: int | None) -> int:
        if expected_key is not None:
            given = request.headers.get(API_KEY_HEADER, "").encode()
            if not hmac.compare_digest(given, expected_key):
                raise BadRequest(401, f"missing or wrong {API_KEY_HEADER} header")
        if k is None:
            return service.max_k
        if not 1 <= k <= service.max_k:
            raise BadRequest(422, f"k must lie in 1..{service.max_k} (score.top_k), got {k}")
        return k

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    # On the event loop, not in the thread pool: the work is one Redis round trip (~0.1 ms), less
    # than the thread hop's CPU; a slow or absent Redis blocks the loop at most
    # serve.socket_timeout_s, once per serve.redis_retry_seconds (then it is skipped). The
    # parameters are read by hand: FastAPI's parameter solving was a fifth of this path's CPU.
    @app.get(GET_ROUTE)
    async def recommend_user(request: Request) -> Response:
        started = time.perf_counter()
        try:
            answer = service.for_user(request.path_params["user_id"], check(request, query_k(request)))
        except BadRequest as exc:
            return fail(GET_ROUTE, exc.status, exc.message, started)
        except ids.IdError as exc:
            return fail(GET_ROUTE, 422, str(exc), started)
        return answered(GET_ROUTE, answer, started)

    @app.post(POST_ROUTE)
    async def recommend_session(request: Request) -> Response:
        started = time.perf_counter()
        try:
            check(request, None)
            body = await read_body(request, sc.max_body_bytes)
            try:
                posted = SessionIn.model_validate_json(body)
            except ValidationError as exc:
                raise BadRequest(422, one_line(exc.errors())) from None
            if len(posted.events) > sc.max_events:
                raise BadRequest(413, f"events: {len(posted.events)} events, at most {sc.max_events} "
                                      f"(serve.max_events)")
            k = check(request, posted.k)
            events = [session_event(e, i, service.product_type, aliases, naive_zone) for i, e in enumerate(posted.events)]
            if posted.user_id is not None:
                service.pseudonym(posted.user_id)  # a bad id fails before any work
            answer = await run_in_threadpool(service.for_session, posted.user_id, events, k)
        except BadRequest as exc:
            return fail(POST_ROUTE, exc.status, exc.message, started)
        except ids.IdError as exc:
            return fail(POST_ROUTE, 422, str(exc), started)
        return answered(POST_ROUTE, answer, started)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready, state = service.readiness()
        return JSONResponse(state, status_code=200 if ready else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def query_k(request: Request) -> int | None:
    """The ``k`` query parameter as an int (None when absent). Raises: BadRequest (422)."""
    text = request.query_params.get("k")
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


def session_event(event: EventIn, index: int, product_type: str, aliases, naive_zone: ZoneInfo) -> SessionEvent:
    """A posted event as clean would keep it. Raises: BadRequest (422) naming the event and field."""
    try:
        product = ids.product_key(event.product_id, product_type)
        kind = ids.event_type(event.event_type, aliases)
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
