"""``recsys serve``: what the service answers, in which order, and what it logs.

Order of answers (the response's ``answered_by``):

- ``GET /v1/recommendations/{user_id}``: the user's list in the published version (``cache``);
  on a miss (a user the last score did not list: new, or Redis unreachable) the champion's
  popular-items list (``fallback``), the score stage's list for a user without history. An
  unknown user is no error: a shop asks for every visitor, and a new visitor gets the popular
  items.
- ``POST /v1/recommendations`` with events: the session ranked by the champion in real time
  (``realtime``, serving/realtime.py): the cached list was made before these events. A session
  with no product the model knows gets the popular items, its latest category first
  (``fallback``). Without events it is the GET.
- Whatever fails on the way (Redis down or slow, a model error) ends in the fallback, never in a
  5xx; Redis is then skipped for ``serve.redis_retry_seconds`` so that an outage costs no wait.

Every answer for a user (a ``user_id`` given) appends its exposures to ``paths.feedback``
(serving/exposures.py) with the list's run date, slots, propensities, policy and version.

The stage itself (``recsys serve``) is serving/server.py: it reads the real-time context with Spark,
builds this service, and runs the app (serving/app.py) on it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import redis

from recsys_spark import schema
from recsys_spark.config import Config
from recsys_spark.errors import InputError
from recsys_spark.etl.pseudonym import pseudonym_key
from recsys_spark.serving import ids
from recsys_spark.serving.champion import Champion, ChampionHolder
from recsys_spark.serving.exposures import ExposureWriter, Shown
from recsys_spark.serving.metrics import ServiceMetrics
from recsys_spark.serving.realtime import RealtimeContext, ServedList, SessionEvent
from recsys_spark.serving.store import RecommendationStore, StoredList, StoreError, connect

log = logging.getLogger(__name__)

CACHE, REALTIME, FALLBACK = "cache", "realtime", "fallback"
ANSWERS = (CACHE, REALTIME, FALLBACK)


@dataclass(frozen=True)
class Answer:
    """One response's list and what it carries (README, "Serve").

    ``lists`` is a real-time or fallback list (realtime.ServedList) or a cached one as Redis holds
    it (store.StoredList): items, scores, slots, sources, propensities and ``items_json()``.
    """

    answered_by: str
    user_id: str | None  # the pseudonym
    lists: ServedList | StoredList
    model_version: str
    policy: str
    policy_version: str
    run_date: str
    extra: dict[str, Any] = field(default_factory=dict)

    def head(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "answered_by": self.answered_by, "model_version": self.model_version,
                "policy": self.policy, "policy_version": self.policy_version, "run_date": self.run_date}

    def json(self) -> bytes:
        """The response's bytes: :meth:`head`, the items, then ``extra`` (compact UTF-8 JSON, as
        Starlette's JSONResponse); a cached list's items are the stored bytes."""
        head = json.dumps(self.head(), ensure_ascii=False, separators=(",", ":")).encode()
        extra = json.dumps(self.extra, ensure_ascii=False, separators=(",", ":")).encode()[1:-1]
        return b"".join((head[:-1], b',"items":', self.lists.items_json(), b"," if extra else b"", extra, b"}"))


class Service:
    """The service's parts and the order of answers (module docstring).

    Args:
        cfg: the config (clean's id rules, score's list length, serve's limits).
        store: the Redis store (serving/store.py), or None to answer without a cache.
        champions: the champion holder, with a champion loaded.
        writer: the exposure writer, started.
        key: the pseudonymisation key.
        metrics: the service's metrics.
    """

    def __init__(self, cfg: Config, store: RecommendationStore | None, champions: ChampionHolder,
                 writer: ExposureWriter, key: bytes, metrics: ServiceMetrics | None = None):
        if champions.current is None:
            raise InputError("serve: no champion loaded")
        self.cfg = cfg
        self.store = store
        self.champions = champions
        self.writer = writer
        self.key = key
        self.metrics = metrics or ServiceMetrics()
        self.metrics.watch_writer(writer.counts)
        self.metrics.model_version.set_function(self._version_number)
        self.max_k = cfg.score.top_k
        self.user_type = cfg.clean.id_types[schema.USER_ID]
        self.product_type = cfg.clean.id_types[schema.PRODUCT_ID]
        self._skip_redis_until = 0.0

    # ------------------------------------------------------------------ answers

    def pseudonym(self, user_id: str | int) -> str:
        """Raises: ids.IdError for an id clean would reject."""
        return ids.pseudonym(user_id, self.key, self.user_type)

    def for_user(self, user_id: str | int, k: int) -> Answer:
        """GET: the cached list, else the fallback. Raises: ids.IdError."""
        user = self.pseudonym(user_id)
        champion = self.champions.current
        answer, reason = self._cached(user, k)
        if answer is None:
            answer = self._fallback(user, k, champion, reason)
        self._log(answer)
        return answer

    def for_session(self, user_id: str | int | None, events: Sequence[SessionEvent], k: int) -> Answer:
        """POST: the session in real time (the GET without events). Raises: ids.IdError."""
        if not events:
            if user_id is None:
                raise ids.IdError("give a user_id, events, or both")
            return self.for_user(user_id, k)
        user = self.pseudonym(user_id) if user_id is not None else None
        champion = self.champions.current
        try:
            lists = champion.lists.rank(user, events)
        except Exception:  # noqa: BLE001 - a model error must not fail the request: the fallback answers
            log.exception("serve: real-time ranking failed (version %s); answering with the fallback", champion.version)
            self.metrics.errors.labels("model").inc()
            answer = self._fallback(user, k, champion, "model_error")
        else:
            self.metrics.unknown_products.inc(lists.unknown_products)
            realtime = any(source != FALLBACK for source in lists.sources)
            if not realtime:
                self.metrics.fallbacks.labels("no_known_item").inc()
            answer = Answer(REALTIME if realtime else FALLBACK, user, lists.head(k), champion.version, champion.policy,
                            champion.policy_version, champion.lists.context.run_date,
                            {"unknown_products": lists.unknown_products})
        self._log(answer)
        return answer

    def _cached(self, user: str, k: int) -> tuple[Answer | None, str]:
        """The user's cached list, or (None, why not)."""
        if self.store is None:
            return None, "no_cache"
        if time.monotonic() < self._skip_redis_until:
            self.metrics.lookup("error")
            return None, "redis_unavailable"
        try:
            found = self.store.get_value(user)
            if found is not None:
                version, raw = found
                meta = self.store.meta(version)
                lists = StoredList(raw, k)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._skip_redis_until = time.monotonic() + self.cfg.serve.redis_retry_seconds
            self.metrics.lookup("error")
            self.metrics.child(self.metrics.errors, "redis").inc()
            log.warning("serve: Redis read failed (%s); answering without the cache for %.1f s",
                        type(exc).__name__, self.cfg.serve.redis_retry_seconds)
            return None, "redis_error"
        except StoreError as exc:
            self.metrics.lookup("error")
            self.metrics.child(self.metrics.errors, "store").inc()
            log.error("serve: %s", exc)
            return None, "store_error"
        if found is None:
            self.metrics.lookup("miss")
            return None, "cache_miss"
        self.metrics.lookup("hit")
        return Answer(CACHE, user, lists, meta["model_version"], meta["policy"], meta["policy_version"],
                      meta["run_date"]), "hit"

    def _fallback(self, user: str | None, k: int, champion: Champion, reason: str) -> Answer:
        self.metrics.child(self.metrics.fallbacks, reason).inc()
        return Answer(FALLBACK, user, champion.lists.fallback().head(k), champion.version, champion.policy,
                      champion.policy_version, champion.lists.context.run_date)

    def _log(self, answer: Answer) -> None:
        self.metrics.child(self.metrics.answers, answer.answered_by).inc()
        if answer.user_id is None:
            return  # an anonymous session: the feedback contract needs a user
        self.writer.append(Shown(answer.user_id, answer.lists, answer.run_date, answer.policy, answer.policy_version,
                                 dt.datetime.now(dt.timezone.utc), answer.answered_by, answer.model_version))

    # ------------------------------------------------------------------ state

    def _version_number(self) -> float:
        champion = self.champions.current
        return float(champion.version) if champion is not None and champion.version.isdigit() else 0.0

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when Redis answers a PING (within the client's bounds) and a champion is loaded."""
        champion = self.champions.current
        state: dict[str, Any] = {"model_version": champion.version if champion else None}
        ok = champion is not None
        if self.store is None:
            state["redis"] = "not configured"
            ok = False
        else:
            try:
                self.store.ping()
                state["redis"] = "ok"
            except (redis.exceptions.RedisError, OSError) as exc:
                state["redis"] = f"unreachable: {type(exc).__name__}"
                ok = False
        if self.champions.last_error:
            state["model_error"] = self.champions.last_error
        return ok, {"ready": ok, **state}

    def close(self) -> dict[str, Any]:
        """Stop polling, flush the exposures. Returns: the counts, for the stage's summary."""
        self.champions.stop()
        counts = self.writer.close()
        if self.store is not None:
            self.store.close()
        champion = self.champions.current
        return {
            "served_model_version": champion.version if champion else None,
            **{f"answers_{a}": int(self.metrics.value("recsys_serve_answers_total", answered_by=a)) for a in ANSWERS},
            "exposures_written": counts.written, "exposure_files": counts.files, "exposures_lost": counts.lost,
            "exposures_unwritten": counts.pending, "feedback": self.writer.root,
        }


def build_service(cfg: Config, context: RealtimeContext, store=None) -> Service:
    """The service's parts: the champion (loaded now: no champion, no service), the exposure
    writer, the store (``serve.redis_url``, every wait bounded; None = connect), the metrics."""
    sc = cfg.serve
    metrics = ServiceMetrics()
    holder = ChampionHolder(cfg, context, on_load=lambda outcome, version: metrics.model_loads.labels(outcome).inc())
    holder.load()
    key = pseudonym_key(cfg.clean.pseudonym_key_env, cfg.clean.allow_dev_key)
    writer = ExposureWriter(cfg.paths.resolve("feedback"), cfg.clean.id_types[schema.PRODUCT_ID],
                            sc.feedback_batch_rows, sc.feedback_flush_seconds, sc.feedback_max_pending_rows).start()
    if store is None:
        store = RecommendationStore(connect(sc), sc.redis_prefix)
    service = Service(cfg, store, holder.start(), writer, key, metrics)
    return service


def api_key(cfg: Config) -> str | None:
    """The key requests must send (``serve.api_key_env``'s variable), or None: no authentication."""
    name = cfg.serve.api_key_env
    return (os.environ.get(name) or None) if name else None
