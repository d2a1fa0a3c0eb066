"""What the service tests share: a service over the tiny catalogue of tests/scoring/tiny.py (no
Spark), a real uvicorn server in a thread, and a bounded load of concurrent requests."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from recsys_spark import schema
from recsys_spark.config import Config, from_dict
from recsys_spark.scoring.score import PlanInputs
from recsys_spark.serving import ids
from recsys_spark.serving.champion import ChampionHolder
from recsys_spark.serving.exposures import ExposureWriter
from recsys_spark.serving.metrics import ServiceMetrics
from recsys_spark.serving.realtime import RealtimeContext
from recsys_spark.serving.service import Service
from recsys_spark.serving.store import RecommendationStore, connect, encode_list

from tests.redis_server import free_port
from tests.scoring.test_recommender import stats_frame
from tests.scoring.tiny import tiny_bundle

KEY = b"test-key-not-secret"
K = 3
RUN_DATE = "2019-11-01"
PREFIX = "recsys"


def config(root, redis_url: str, **serve) -> Config:
    return from_dict({
        "paths": {"root": str(root)},
        "clean": {"allow_dev_key": True},
        "score": {"top_k": K, "explore_share": 0.3, "run_date": RUN_DATE},
        "serve": {"redis_url": redis_url, "redis_prefix": PREFIX, "feedback_batch_rows": 4,
                  "feedback_flush_seconds": 0.2, "redis_retry_seconds": 0.2, "model_poll_seconds": 0.05, **serve},
    })


def context() -> RealtimeContext:
    vocab = tiny_bundle().item_vocab[[schema.ITEM_IDX, schema.PRODUCT_ID]]
    return RealtimeContext(PlanInputs(vocab, stats_frame(), np.zeros(0, np.int64)), RUN_DATE, 4)


@dataclass
class Registry:
    """A registry of tiny bundles: version -> seed, and the version the alias names."""

    seeds: dict[str, int] = field(default_factory=lambda: {"1": 1, "2": 2})
    alias: str = "1"
    loads: list[str] = field(default_factory=list)
    slow_s: float = 0.0

    def load(self, version: str | None):
        version = version or self.alias
        self.loads.append(version)
        time.sleep(self.slow_s)
        if version not in self.seeds:
            raise RuntimeError(f"no version {version}")
        return tiny_bundle(seed=self.seeds[version]), version

    def resolve(self) -> str:
        return self.alias


def service(cfg: Config, registry: Registry | None = None, writer: ExposureWriter | None = None) -> Service:
    """A Service of the tiny catalogue: champion from ``registry``, store at ``serve.redis_url``."""
    registry = registry or Registry()
    metrics = ServiceMetrics()
    holder = ChampionHolder(cfg, context(), registry.load, registry.resolve,
                            on_load=lambda outcome, version: metrics.model_loads.labels(outcome).inc())
    holder.load()
    writer = writer or ExposureWriter(cfg.paths.resolve("feedback"), batch_rows=cfg.serve.feedback_batch_rows,
                                      flush_seconds=cfg.serve.feedback_flush_seconds).start()
    store = RecommendationStore(connect(cfg.serve), cfg.serve.redis_prefix)
    return Service(cfg, store, holder, writer, KEY, metrics)


# The published lists: raw user id -> (items, scores, sources, propensities).
LISTS = {
    "1": ([1005, 1002, 1009], [0.9, 0.5, 0.1], ["model", "explore", "model"], [0.8, 0.05, 0.6]),
    "2": ([2000, 1004, 1005], [8.9, 7.8, 5.8], ["fallback", "fallback", "fallback"], [1.0, 1.0, 1.0]),
}


def publish(cfg: Config, lists=LISTS, version: str = f"{RUN_DATE}-1-abc") -> None:
    """Write ``lists`` as a published version of the store, as recsys publish leaves it."""
    store = RecommendationStore(connect(cfg.serve, for_publish=True), cfg.serve.redis_prefix)
    rows = sum(len(v[0]) for v in lists.values())
    store.write_meta(version, {"run_date": RUN_DATE, "model_name": "recsys_two_tower", "model_version": "1",
                               "policy": "epsilon", "policy_version": "1:cafe0123", "users": len(lists), "rows": rows,
                               "k": K, "source_path": "inline"})
    store.write_batch(version, [(ids.pseudonym(u, KEY), encode_list(items, scores, range(len(items)), sources, props))
                                for u, (items, scores, sources, props) in lists.items()])
    store.switch(version, keep=3)
    store.close()


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 20 s")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


@dataclass
class Outcome:
    at: float  # seconds since the load started
    status: int
    seconds: float
    body: dict


def load(url: str, request: Callable[[object, int], object], seconds: float, threads: int = 4,
         during: Callable[[float], None] | None = None) -> list[Outcome]:
    """``threads`` clients sending ``request(client, i)`` back to back for ``seconds`` (bounded:
    a 5 s client time-out); ``during(elapsed)`` runs in the caller's thread every 50 ms."""
    import httpx

    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop = threading.Event()

    def client_loop(n: int) -> None:
        with httpx.Client(base_url=url, timeout=5.0) as client:
            i = n
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    response = request(client, i)
                    outcome = Outcome(sent - start, response.status_code, time.monotonic() - sent, response.json())
                except httpx.HTTPError as exc:
                    outcome = Outcome(sent - start, 0, time.monotonic() - sent, {"error": repr(exc)})
                with lock:
                    outcomes.append(outcome)
                i += threads

    workers = [threading.Thread(target=client_loop, args=(n,), daemon=True) for n in range(threads)]
    for w in workers:
        w.start()
    while (elapsed := time.monotonic() - start) < seconds:
        if during is not None:
            during(elapsed)
        time.sleep(0.05)
    stop.set()
    for w in workers:
        w.join(timeout=10)
    return sorted(outcomes, key=lambda o: o.at)
