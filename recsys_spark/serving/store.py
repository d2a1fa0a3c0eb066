"""The Redis store of the served lists: one value per user and version, one pointer to the
version served.

Key space (``prefix`` = ``serve.redis_prefix``)::

    {prefix}:current                 the version served (a string)
    {prefix}:versions                the published versions, newest first (a list, at most
                                     serve.keep_versions long)
    {prefix}:v:{version}:meta        a hash: run_date, model_name, model_version, policy,
                                     policy_version, users, rows, k, published_at, source_path
    {prefix}:v:{version}:u:{user_id} one user's whole list: the response's items, compact JSON
                                     (encode_list)

A version's keys are all written before ``current`` names it (:meth:`RecommendationStore.switch`),
and a reader takes ``current`` and the user's key in one Lua script (atomic in Redis), so a reader
racing a switch or a rollback gets the old list or the new one, never a mix and never a miss.
The script builds the user's key from ``current``: a key it does not declare, fine on one
Redis server (not on Redis Cluster).

Connection failures surface as :class:`redis.exceptions.RedisError` (``ConnectionError``,
``TimeoutError``): the service falls back on them. A store that breaks its own layout (a
version without meta, a value that is no list) raises :class:`StoreError`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from recsys_spark.config import ServeConfig
from recsys_spark.errors import RecsysError

# The fields of a version's meta hash; users, rows and k are integers, the others text.
META_FIELDS = ("run_date", "model_name", "model_version", "policy", "policy_version", "users", "rows", "k",
               "published_at", "source_path")
META_INTEGERS = ("users", "rows", "k")
# The arrays of one user's value, each ordered by slot (encode_list).
LIST_FIELDS = ("items", "scores", "slots", "sources", "propensities")
# The key of each of LIST_FIELDS in an item of a stored list (the response's item fields).
ITEM_KEYS = ("item_id", "score", "slot", "source", "propensity")
_ITEM_MARK = b'{"item_id":'  # begins each item of a stored list (a quote inside a string is escaped)
# Keys deleted per UNLINK when a version is dropped, and keys asked per SCAN step.
DELETE_BATCH = 1000

# KEYS: current. ARGV: "{prefix}:v:", ":u:{user_id}". Returns [version, value or nil], or nil
# when no version is current.
_GET = """
local version = redis.call('GET', KEYS[1])
if not version then return false end
return {version, redis.call('GET', ARGV[1] .. version .. ARGV[2])}
"""
# KEYS: current, versions. Returns [version rolled back from, version now current], or an error.
_ROLLBACK = """
local current = redis.call('GET', KEYS[1])
if not current then return redis.error_reply('no version is current') end
local listed = redis.call('LRANGE', KEYS[2], 0, -1)
for i, version in ipairs(listed) do
  if version == current then
    local previous = listed[i + 1]
    if not previous then return redis.error_reply('no version before ' .. current) end
    redis.call('SET', KEYS[1], previous)
    redis.call('LREM', KEYS[2], 0, current)
    return {current, previous}
  end
end
return redis.error_reply('the current version ' .. current .. ' is not among the published versions')
"""


_GET_SHA = hashlib.sha1(_GET.encode()).hexdigest()


class StoreError(RecsysError):
    """The store is not as publish leaves it: no version to roll back to, a version without meta,
    a value that is not a list."""


@dataclass(frozen=True)
class CachedList:
    """One user's served list of one published version; the arrays are ordered by slot.

    items hold the product ids as the recommendations' Parquet has them (int, or str under
    string product ids); scores and propensities are floats (a score is the float32 of the
    Parquet, widened exactly); sources are "model", "fallback" or "explore".
    """

    version: str
    items: tuple[int | str, ...]
    scores: tuple[float, ...]
    slots: tuple[int, ...]
    sources: tuple[str, ...]
    propensities: tuple[float, ...]
    policy: str
    policy_version: str
    model_version: str
    run_date: str


def encode_list(items: Sequence[Any], scores: Sequence[float], slots: Sequence[int], sources: Sequence[str],
                propensities: Sequence[float]) -> bytes:
    """One user's value: the list as the response's ``items`` (compact JSON, ordered by slot):
    ``[{"item_id": ..., "slot": ..., "score": ..., "source": ..., "propensity": ...}, ...]``, so
    that the service answers with the stored bytes as they are.

    JSON keeps an int an int at any size (ids above 2^53 included) and a str a str; floats are
    written as Python's shortest exact repr.
    """
    return json.dumps([{"item_id": i, "slot": s, "score": c, "source": o, "propensity": p}
                       for i, s, c, o, p in zip(items, slots, scores, sources, propensities)],
                      separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


def decode_list(raw: bytes | str) -> dict[str, list]:
    """The arrays (LIST_FIELDS) of an :func:`encode_list` value, or of the earlier layout (an
    object of the five arrays). Raises: StoreError if ``raw`` is neither."""
    try:
        value = json.loads(raw)
        if isinstance(value, list):
            arrays = {name: [entry[key] for entry in value] for name, key in zip(LIST_FIELDS, ITEM_KEYS)}
        else:
            arrays = {name: value[name] for name in LIST_FIELDS}
    except (ValueError, TypeError, KeyError):
        raise StoreError(f"a stored list is not the JSON of {', '.join(LIST_FIELDS)}: {raw[:80]!r}") from None
    if len({len(a) for a in arrays.values()}) != 1:
        raise StoreError(f"a stored list has arrays of different lengths: {raw[:80]!r}")
    return arrays


class StoredList:
    """A user's cached list as Redis holds it, its first ``k`` entries: answered with the stored
    bytes (:meth:`items_json`), decoded only when read (the exposure writer reads it, off the
    request's path).

    Raises:
        StoreError: ``raw`` is not a stored list (checked by its ends; the whole by the decoding).
    """

    def __init__(self, raw: bytes, k: int | None = None):
        head = raw[:1]
        if not ((head == b"[" and raw.endswith(b"]")) or (head == b"{" and raw.endswith(b"}"))):
            raise StoreError(f"a stored list is not the JSON of {', '.join(LIST_FIELDS)}: {raw[:80]!r}")
        self.raw = raw
        self.k = k
        whole = raw.count(_ITEM_MARK) if head == b"[" else len(self._decoded()["items"])
        self.size = whole if k is None else min(k, whole)
        self._whole = whole

    def __len__(self) -> int:
        return self.size

    def _decoded(self) -> dict[str, list]:
        arrays = self.__dict__.get("_arrays")
        if arrays is None:
            arrays = self.__dict__["_arrays"] = {n: a[: self.k] for n, a in decode_list(self.raw).items()}
        return arrays

    items = property(lambda self: self._decoded()["items"])
    scores = property(lambda self: self._decoded()["scores"])
    slots = property(lambda self: self._decoded()["slots"])
    sources = property(lambda self: self._decoded()["sources"])
    propensities = property(lambda self: self._decoded()["propensities"])

    def items_json(self) -> bytes:
        """The response's ``items`` array: the stored bytes when the whole list is asked for."""
        if self.raw[:1] == b"[" and self.size == self._whole:
            return self.raw
        return encode_list(self.items, self.scores, self.slots, self.sources, self.propensities)


def redis_password(sc: ServeConfig) -> str | None:
    """The password in the environment variable named by ``serve.redis_password_env`` (None: unset or empty)."""
    return (os.environ.get(sc.redis_password_env) or None) if sc.redis_password_env else None


def connect(sc: ServeConfig, *, for_publish: bool = False, password: str | None = None) -> redis.Redis:
    """A client of ``serve.redis_url``, every wait bounded.

    Args:
        sc: the serve section.
        for_publish: the writer's bounds (``serve.publish_timeout_s``, ``serve.publish_retries``
            with backoff) instead of the service's (``serve.socket_timeout_s`` /
            ``socket_connect_timeout_s``, no retry: a slow Redis means a fallback, not a wait).
        password: None = :func:`redis_password` of this process (a Spark task gets the driver's).
    """
    password = password or redis_password(sc)
    if for_publish:
        return client(sc.redis_url, password, sc.publish_timeout_s, sc.publish_timeout_s, sc.publish_retries)
    return client(sc.redis_url, password, sc.socket_timeout_s, sc.socket_connect_timeout_s, 0)


def client(url: str, password: str | None, timeout_s: float, connect_timeout_s: float, retries: int) -> redis.Redis:
    """A redis-py client with explicit bounds (redis-py's own default retries 10 times with backoff).

    Args:
        url: redis://host:port/db; password: None for none; timeout_s: per read or write;
        connect_timeout_s: per connection attempt; retries: further tries of a command after a
        connection error or time-out (exponential backoff from 50 ms, at most 1 s apart).
    """
    backoff = ExponentialBackoff(cap=1.0, base=0.05) if retries else NoBackoff()
    return redis.Redis.from_url(url, password=password, socket_timeout=timeout_s,
                                socket_connect_timeout=connect_timeout_s, retry=Retry(backoff, retries))


class ListReader:
    """The service's read of one user's list (the ``_GET`` script), without redis-py's per-command
    machinery: a request's RESP bytes are built with one join, the reply parsed in place, over one
    socket per thread. redis-py's path was most of the cached GET's CPU.

    The bounds are the client's (its socket timeout and connect timeout, no retry); a failure
    closes the thread's socket (the next read opens a new one) and raises redis-py's
    ``ConnectionError`` / ``TimeoutError``, so callers handle it as any Redis error.

    Args:
        host, port, db, password: the server (``serve.redis_url``; the password from the environment).
        timeout_s, connect_timeout_s: per read or write, per connection attempt.
    """

    def __init__(self, host: str, port: int, db: int, password: str | None, timeout_s: float | None,
                 connect_timeout_s: float | None):
        self.address = (host, port)
        self.db, self.password = db, password
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self._local = threading.local()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    @classmethod
    def of(cls, client: redis.Redis) -> "ListReader | None":
        """The reader of a redis-py client's server and bounds; None (the service then reads
        through redis-py) for a connection it does not speak: a Unix socket, TLS (rediss://, whose
        certificate settings are redis-py's) or an ACL user (a username in the URL)."""
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        if ("host" not in kwargs or "path" in kwargs or kwargs.get("username")
                or issubclass(pool.connection_class, redis.SSLConnection)):
            return None
        return cls(kwargs["host"], int(kwargs.get("port", 6379)), int(kwargs.get("db", 0) or 0),
                   kwargs.get("password"), kwargs.get("socket_timeout"), kwargs.get("socket_connect_timeout"))

    def get(self, current_key: str, user_prefix: str, user_suffix: str) -> list | None:
        """The ``_GET`` script's reply: [version, value] (value None when the user has no list),
        or None when no version is current."""
        words = [b"EVALSHA", _GET_SHA.encode(), b"1", current_key.encode(), user_prefix.encode(), user_suffix.encode()]
        reply = self.command(words)
        if isinstance(reply, StoreError) and str(reply).startswith("NOSCRIPT"):
            reply = self.command([b"EVAL", _GET.encode(), *words[2:]])  # loads the script for the next EVALSHA
        if isinstance(reply, StoreError):
            raise redis.exceptions.ResponseError(str(reply))
        if reply is None:
            return None
        return [reply[0], reply[1] if len(reply) > 1 else None]

    def command(self, words: list[bytes]):
        """One command's reply (an error reply as a StoreError value). Raises: redis-py's
        ConnectionError or TimeoutError (the socket is closed)."""
        conn = getattr(self._local, "conn", None)
        try:
            if conn is None:
                conn = self._connect()
            conn.sock.sendall(encode_command(words))
            return conn.reply()
        except (OSError, ValueError, IndexError) as exc:
            self._drop(conn)
            if isinstance(exc, socket.timeout):
                raise redis.exceptions.TimeoutError(
                    f"Timeout reading from {self.address[0]}:{self.address[1]}") from None
            raise redis.exceptions.ConnectionError(f"Redis at {self.address[0]}:{self.address[1]}: {exc}") from None

    def _connect(self) -> "_Connection":
        sock = socket.create_connection(self.address, timeout=self.connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout_s)
        conn = _Connection(sock)
        try:
            for words in ([b"AUTH", self.password.encode()] if self.password else None,
                          [b"SELECT", str(self.db).encode()] if self.db else None):
                if words is not None:
                    sock.sendall(encode_command(words))
                    if isinstance(conn.reply(), StoreError):
                        raise OSError(f"{words[0].decode()} failed")
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._sockets.append(sock)
        self._local.conn = conn
        return conn

    def _drop(self, conn: "_Connection | None") -> None:
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn.sock in self._sockets:
                    self._sockets.remove(conn.sock)
            conn.sock.close()

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()


def encode_command(words: list[bytes]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    return b"".join([b"*%d\r\n" % len(words), *[b"$%d\r\n%s\r\n" % (len(w), w) for w in words]])


class _Connection:
    """One socket and its unread bytes; :meth:`reply` parses one RESP2 reply."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""
        self.at = 0

    def reply(self):
        """bytes, int, None (nil), a list of these, or a StoreError for an error reply."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._bytes(size)
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.reply() for _ in range(size)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest
        if kind == b"-":
            return StoreError(rest.decode(errors="replace"))
        raise ValueError(f"not a RESP reply: {line[:40]!r}")

    def _line(self) -> bytes:
        end = self.buffer.find(b"\r\n", self.at)
        while end < 0:
            self._fill()
            end = self.buffer.find(b"\r\n", self.at)
        line, self.at = self.buffer[self.at:end], end + 2
        return line

    def _bytes(self, size: int) -> bytes:
        while len(self.buffer) - self.at < size + 2:
            self._fill()
        data, self.at = self.buffer[self.at:self.at + size], self.at + size + 2
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("connection closed by the server")
        self.buffer, self.at = self.buffer[self.at:] + chunk, 0


class RecommendationStore:
    """The served lists in one Redis database under one key prefix (module docstring).

    The read side (:meth:`get`, :meth:`current_version`, :meth:`meta`, :meth:`versions`) is what
    ``recsys serve`` calls, from any thread; the write side (:meth:`write_meta`,
    :meth:`write_batch`, :meth:`switch`, :meth:`rollback`) is ``recsys publish``'s.

    Args:
        client: a redis-py client (:func:`connect`), bytes replies (``decode_responses`` off).
        prefix: ``serve.redis_prefix``.
    """

    def __init__(self, client: redis.Redis, prefix: str):
        self.client = client
        self.prefix = prefix
        self._get = client.register_script(_GET)
        self._reader = ListReader.of(client)
        self._rollback = client.register_script(_ROLLBACK)
        # A version's meta never changes once written (the version id is its content): cached.
        self._metas: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ keys

    @property
    def current_key(self) -> str:
        return f"{self.prefix}:current"

    @property
    def versions_key(self) -> str:
        return f"{self.prefix}:versions"

    def meta_key(self, version: str) -> str:
        return f"{self.prefix}:v:{version}:meta"

    def user_key(self, version: str, user_id: str) -> str:
        return f"{self.prefix}:v:{version}:u:{user_id}"

    # ------------------------------------------------------------------ read

    def current_version(self) -> str | None:
        """The version served, or None before the first publish."""
        value = self.client.get(self.current_key)
        return None if value is None else value.decode()

    def versions(self) -> list[str]:
        """The published versions kept, newest first (the current one is normally the first)."""
        return [v.decode() for v in self.client.lrange(self.versions_key, 0, -1)]

    def meta(self, version: str) -> dict[str, Any]:
        """A version's meta (META_FIELDS; users, rows and k as int).

        Raises:
            StoreError: the version has no meta hash (never published, or dropped).
        """
        cached = self._metas.get(version)
        if cached is not None:
            return cached
        raw = self.client.hgetall(self.meta_key(version))
        if not raw:
            raise StoreError(f"version {version} has no meta in Redis (key {self.meta_key(version)})")
        meta: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        for name in META_INTEGERS:
            meta[name] = int(meta[name])
        if len(self._metas) >= 16:  # a long-running service sees a new version a day
            self._metas.clear()
        self._metas[version] = meta
        return meta

    def get_value(self, user_id: str) -> tuple[str, bytes] | None:
        """(the current version, the user's :func:`encode_list` value in it), read atomically.

        Returns:
            None when no version is published or the user has no list in it.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable or slower than the client's timeout.
        """
        if self._reader is not None:
            found = self._reader.get(self.current_key, f"{self.prefix}:v:", f":u:{user_id}")
        else:
            found = self._get(keys=[self.current_key], args=[f"{self.prefix}:v:", f":u:{user_id}"])
        if not found or found[1] is None:
            return None
        return found[0].decode(), found[1]

    def get(self, user_id: str, k: int | None = None) -> CachedList | None:
        """The user's list in the current version, its first ``k`` entries (all when None).

        Args:
            user_id: the pseudonym, exactly as in the recommendations.

        Returns:
            None when no version is published or the user has no list in it.

        Raises:
            redis.exceptions.RedisError: Redis is unreachable or slower than the client's timeout.
            StoreError: the value or the version's meta is not as publish writes them.
        """
        if k is not None and k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        found = self.get_value(user_id)
        if found is None:
            return None
        version, raw = found
        arrays = decode_list(raw)
        meta = self.meta(version)
        return CachedList(
            version=version,
            **{name: tuple(arrays[name][:k]) for name in LIST_FIELDS},
            policy=meta["policy"], policy_version=meta["policy_version"], model_version=meta["model_version"],
            run_date=meta["run_date"],
        )

    # ------------------------------------------------------------------ write

    def write_meta(self, version: str, meta: dict[str, Any]) -> None:
        """Write a version's meta before its lists (META_FIELDS but published_at, which is set here).

        Publishing a version again leaves its first ``published_at``: the same store either way.
        """
        missing = [f for f in META_FIELDS if f != "published_at" and f not in meta]
        if missing:
            raise ValueError(f"meta of version {version} lacks {', '.join(missing)}")
        key = self.meta_key(version)
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={f: str(meta[f]) for f in META_FIELDS if f != "published_at"})
        pipe.hsetnx(key, "published_at", now)
        pipe.execute()
        self._metas.pop(version, None)

    def write_batch(self, version: str, rows: Iterable[tuple[str, bytes]]) -> int:
        """Write users' values of ``version`` in one pipelined round trip (not a transaction).

        Args:
            rows: (user_id, :func:`encode_list` value) pairs.

        Returns:
            the number of keys Redis acknowledged (every SET of the batch, normally).
        """
        pipe = self.client.pipeline(transaction=False)
        for user_id, value in rows:
            pipe.set(self.user_key(version, user_id), value)
        return sum(1 for reply in pipe.execute() if reply is True)

    def switch(self, version: str, keep: int) -> list[str]:
        """Serve ``version``: set ``current`` and put it first in ``versions`` in one MULTI/EXEC,
        keep the newest ``keep`` there, then delete the keys of every version no longer listed.

        Call it only after every user key of ``version`` is written and counted.

        Returns:
            the versions whose keys were deleted (those dropped from the list, and any left by a
            publish that stopped before its switch). One publish at a time per prefix: one that
            runs beside this one could lose the keys it has written so far.

        Raises:
            StoreError: ``version`` has no meta (write_meta first); keep < 1.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if not self.client.exists(self.meta_key(version)):
            raise StoreError(f"cannot serve version {version}: it has no meta in Redis (key {self.meta_key(version)})")
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.current_key, version)
        pipe.lrem(self.versions_key, 0, version)
        pipe.lpush(self.versions_key, version)
        pipe.ltrim(self.versions_key, 0, keep - 1)
        pipe.execute()
        return self.delete_unlisted()

    def rollback(self) -> tuple[str, str]:
        """Serve the version published before the current one, atomically; the current one leaves
        the list (its keys are deleted by the next switch).

        Returns:
            (the version rolled back from, the version now current).

        Raises:
            StoreError: no version is current, or none was published before it.
        """
        try:
            left, now = self._rollback(keys=[self.current_key, self.versions_key])
        except redis.exceptions.ResponseError as exc:
            raise StoreError(f"cannot roll back {self.prefix}:current: {exc} "
                             f"(published versions: {', '.join(self.versions()) or 'none'})") from None
        return left.decode(), now.decode()

    def delete_unlisted(self) -> list[str]:
        """Delete the keys of every version neither listed in ``versions`` nor current.

        Returns:
            those versions, sorted.
        """
        kept = set(self.versions())
        current = self.current_version()
        if current is not None:
            kept.add(current)
        start = len(self.prefix) + len(":v:")
        dropped: set[str] = set()
        doomed: list[bytes] = []
        for key in self.client.scan_iter(match=f"{self.prefix}:v:*", count=DELETE_BATCH):
            version = key[start:].split(b":", 1)[0].decode()
            if version in kept:
                continue
            dropped.add(version)
            doomed.append(key)
            if len(doomed) >= DELETE_BATCH:
                self.client.unlink(*doomed)
                doomed.clear()
        if doomed:
            self.client.unlink(*doomed)
        for version in dropped:
            self._metas.pop(version, None)
        return sorted(dropped)

    def ping(self) -> None:
        """Raises: redis.exceptions.RedisError when Redis does not answer within the client's bounds."""
        self.client.ping()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self.client.close()
