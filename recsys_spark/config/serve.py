"""The publish and serve sections: the Redis store of the served lists and ``recsys serve``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from recsys_spark.config.base import _at_least, _bounded_waits, iso_date
from recsys_spark.errors import ConfigError


@dataclass(frozen=True)
class PublishConfig:
    """The ``publish`` stage: a run date's recommendations into the Redis store (serving/publish.py)."""

    # The recommendations partition published (ISO date); empty = the latest run_date present.
    run_date: str = ""
    # A date older than the one served is not published (a backfill re-scores a past date and must
    # not replace the newer lists served); true publishes and serves it.
    allow_older: bool = False
    # Instead of publishing: make the version published before the current one current again
    # (`recsys publish --rollback`); the current one leaves the list, its keys go at the next publish.
    rollback: bool = False

    def __post_init__(self) -> None:
        iso_date("publish.run_date", self.run_date)
        if self.rollback and self.run_date:
            raise ConfigError(f"publish.rollback=true switches back to the previous version: it publishes no run date "
                              f"(drop publish.run_date={self.run_date})")


# A Redis key prefix: a SCAN pattern is built from it, so no glob characters.
REDIS_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


@dataclass(frozen=True)
class ServeConfig:
    """The Redis store of the served lists (serving/store.py), written by ``recsys publish`` and read
    by ``recsys serve``. Key layout: README, "Publish to Redis"."""

    # redis://host:port/db (rediss:// for TLS). No password here: it is read from the environment
    # variable named by redis_password_env (unset or empty = none).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_env: str = "RECSYS_REDIS_PASSWORD"
    redis_prefix: str = "recsys"
    # The service's bound on one Redis read and on opening a connection: past it the request falls
    # back instead of waiting (no retry).
    socket_timeout_s: float = 0.05
    socket_connect_timeout_s: float = 0.05
    # Published versions kept (the current one included); older ones are deleted after a switch.
    # At least 2: the previous version is what `recsys publish --rollback` returns to.
    keep_versions: int = 3
    # Users per pipelined write of a publish task, and the bound on one such write (a batch of
    # 500 lists of 20 items is ~150 KB); a timed-out write is retried up to publish_retries times.
    publish_batch: int = 500
    publish_timeout_s: float = 10.0
    publish_retries: int = 3
    # `recsys serve` (serving/server.py): the HTTP address it listens on.
    host: str = "127.0.0.1"
    port: int = 8000
    # A POST's limits: events in one session, and bytes of the body (larger: 413, nothing done).
    # A list's k is at most score.top_k, the length of the lists score writes.
    max_events: int = 500
    max_body_bytes: int = 262_144
    # The environment variable holding the API key that requests must send as X-API-Key; unset
    # or empty (or this key empty) = no authentication. /healthz, /readyz and /metrics are open.
    api_key_env: str = "RECSYS_SERVE_API_KEY"
    # Exposures (every served item) are written to paths.feedback as a Parquet file when this many
    # rows wait or the oldest has waited this long; beyond feedback_max_pending_rows waiting (a
    # stalled disk), new rows are dropped and counted as lost instead of growing memory.
    feedback_batch_rows: int = 1000
    feedback_flush_seconds: float = 5.0
    feedback_max_pending_rows: int = 100_000
    # How often the service asks the registry which version holds score.model_alias (a moved
    # alias is loaded in the background and swapped in; score.model_version > 0 pins one).
    model_poll_seconds: float = 30.0
    # After a failed Redis read, requests skip Redis (and fall back) for this long, then try again.
    redis_retry_seconds: float = 1.0
    # How long a real-time request waits for its list (queued behind the block being ranked, then
    # its own); past it the fallback answers (reason model_error).
    realtime_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        """Raise ConfigError naming the first invalid serve setting."""
        _at_least("serve", self, {"keep_versions": 2, "publish_batch": 1, "publish_retries": 0, "port": 1,
                                  "max_events": 1, "max_body_bytes": 1024, "feedback_batch_rows": 1,
                                  "redis_retry_seconds": 0})
        if self.port > 65535:
            raise ConfigError(f"serve.port must be <= 65535, got {self.port}")
        if self.feedback_max_pending_rows < self.feedback_batch_rows:
            raise ConfigError(f"serve.feedback_max_pending_rows ({self.feedback_max_pending_rows}) must be >= "
                              f"serve.feedback_batch_rows ({self.feedback_batch_rows})")
        _bounded_waits("serve", self, ("socket_timeout_s", "socket_connect_timeout_s", "publish_timeout_s",
                                       "feedback_flush_seconds", "model_poll_seconds", "realtime_timeout_s"))
        url = urlsplit(self.redis_url)
        if url.scheme not in ("redis", "rediss") or not url.hostname:
            raise ConfigError(f"serve.redis_url: {self.redis_url!r} is not a redis://host:port/db URL")
        if url.password or url.username:
            raise ConfigError(f"serve.redis_url holds credentials: put the password in the environment variable "
                              f"{self.redis_password_env or 'named by serve.redis_password_env'} instead")
        if not self.redis_prefix or not set(self.redis_prefix) <= REDIS_PREFIX_CHARS:
            raise ConfigError(f"serve.redis_prefix: {self.redis_prefix!r} must be non-empty letters, digits, _ . : -")
