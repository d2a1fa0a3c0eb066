"""The service's exposures, appended to the feedback contract as batched Parquet files.

Every list the service answers with is logged, one row per shown item, as
``schema.FEEDBACK_SCHEMA`` (the pseudonym, the item as the shop names it, the run date and slot
of the list, its propensity, policy and policy version, ``shown_at``, ``clicked`` false) under
``paths.feedback`` in the shop's layout that clean reads (``run_date=YYYY-MM-DD/part-*.parquet``,
as ``data.feedback_sim.write_feedback`` writes it).

Requests only queue their rows (:meth:`ExposureWriter.append`); a background thread writes a
file when ``serve.feedback_batch_rows`` rows are waiting or ``serve.feedback_flush_seconds``
have passed, each file first under a hidden temporary name (readers skip names starting with
``.``) and then renamed: a reader never sees half a file, and a writer killed mid-write loses
the one batch it held. Rows that cannot be written (a failed write, or more than
``serve.feedback_max_pending_rows`` waiting) are counted as lost, never retried into a
duplicate. A writer thread that died is started again by the next append, its batch counted as
lost. :meth:`ExposureWriter.close` flushes what is left and reports the counts.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from recsys_spark import schema
from recsys_spark.config import is_uri

log = logging.getLogger(__name__)

# One exposure, in FEEDBACK_SCHEMA order: user_id, item_id, run_date (ISO text), slot,
# propensity, policy, policy_version, shown_at (aware datetime), clicked, purchased.
Exposure = tuple
_ARROW = {"string": pa.string(), "bigint": pa.int64(), "int": pa.int32(), "double": pa.float64(),
          "boolean": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC"), "date": pa.date32()}


def arrow_schema(id_type: str) -> pa.Schema:
    """FEEDBACK_SCHEMA without run_date (the folder names it), item_id typed by ``id_type``."""
    fields = schema.with_product_ids(schema.FEEDBACK_SCHEMA, id_type).fields
    return pa.schema([pa.field(f.name, _ARROW[f.dataType.simpleString()], nullable=f.nullable)
                      for f in fields if f.name != schema.RUN_DATE])


@dataclass(frozen=True)
class WriterCounts:
    """Exposure rows written (and their files), lost (a failed or interrupted write, or dropped
    while too many were waiting), and still waiting; the writer's restarts."""

    written: int
    files: int
    lost: int
    pending: int
    restarts: int


class ExposureWriter:
    """Appends exposures to ``root`` (paths.feedback) from a background thread.

    Args:
        root: the feedback folder (local, ``file:`` or any pyarrow file system URI).
        id_type: ``clean.id_types.product_id``.
        batch_rows: write when this many rows wait (``serve.feedback_batch_rows``).
        flush_seconds: ... or when the oldest waiting row is this old (``serve.feedback_flush_seconds``).
        max_pending_rows: rows beyond this many waiting are dropped and counted as lost.
        write: (pyarrow table, final path, file system) -> None; None = write a temporary file,
            then rename it (tests pass one that fails).
    """

    def __init__(self, root: str, id_type: str = schema.ID_INTEGER, batch_rows: int = 1000,
                 flush_seconds: float = 5.0, max_pending_rows: int = 100_000,
                 write: Callable[[pa.Table, str, pafs.FileSystem], None] | None = None):
        if is_uri(root) and not root.startswith("file:"):
            self.fs, self.root = pafs.FileSystem.from_uri(root)
        else:
            local = urlsplit(root).path if root.startswith("file:") else root
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(local)
        self.schema = arrow_schema(id_type)
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.max_pending_rows = max_pending_rows
        self._write = write or write_atomically
        self._pending: list[Exposure] = []
        self._oldest = 0.0  # monotonic time of the oldest waiting row
        self._cond = threading.Condition()
        self._closing = False
        self._in_hand = 0
        self._written = self._files = self._lost = self._restarts = 0
        self._names = itertools.count()
        self._prefix = f"part-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._thread: threading.Thread | None = None

    def start(self) -> "ExposureWriter":
        self._thread = threading.Thread(target=self._run, name="exposure-writer", daemon=True)
        self._thread.start()
        return self

    def append(self, rows: Sequence[Exposure]) -> bool:
        """Queue the rows of one answer. Returns: False when they were dropped (counted as lost)."""
        if not rows:
            return True
        with self._cond:
            if self._thread is not None and not self._thread.is_alive() and not self._closing:
                self._restarts += 1
                log.error("serve: the exposure writer had stopped; starting it again (%d rows lost so far)", self._lost)
                self.start()
            if self._closing or len(self._pending) + len(rows) > self.max_pending_rows:
                self._lost += len(rows)
                return False
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.extend(rows)
            if len(self._pending) >= self.batch_rows:
                self._cond.notify()
        return True

    def counts(self) -> WriterCounts:
        with self._cond:
            return WriterCounts(self._written, self._files, self._lost, len(self._pending) + self._in_hand,
                                self._restarts)

    def close(self, timeout_s: float = 30.0) -> WriterCounts:
        """Write what waits and stop; rows still unwritten after ``timeout_s`` are counted as lost."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._lost += len(self._pending)
                self._pending.clear()
            counts = WriterCounts(self._written, self._files, self._lost, len(self._pending) + self._in_hand,
                                  self._restarts)
        log.info("serve: exposures written %d (%d files), lost %d, unwritten %d", counts.written, counts.files,
                 counts.lost, counts.pending)
        return counts

    def _run(self) -> None:
        batch: list[Exposure] = []
        try:
            while True:
                with self._cond:
                    while not self._due():
                        self._cond.wait(self._wait_s())
                    if not self._pending and self._closing:
                        return
                    batch = self._pending[: self.batch_rows]
                    del self._pending[: self.batch_rows]
                    self._in_hand = len(batch)
                    if self._pending:
                        self._oldest = time.monotonic()
                try:
                    files = self._write_batch(batch)
                except Exception:  # noqa: BLE001 - any failed write: count the batch, keep serving
                    log.exception("serve: writing %d exposure rows to %s failed; they are lost", len(batch), self.root)
                    with self._cond:
                        self._lost += len(batch)
                else:
                    with self._cond:
                        self._written += len(batch)
                        self._files += files
                with self._cond:
                    self._in_hand = 0
                batch = []
        finally:
            # Interrupted with a batch in hand (the thread killed): that batch is lost.
            with self._cond:
                if self._in_hand:
                    self._lost += self._in_hand
                    self._in_hand = 0

    def _due(self) -> bool:
        if self._closing or len(self._pending) >= self.batch_rows:
            return True
        return bool(self._pending) and time.monotonic() - self._oldest >= self.flush_seconds

    def _wait_s(self) -> float:
        if not self._pending:
            return self.flush_seconds
        return max(0.001, self.flush_seconds - (time.monotonic() - self._oldest))

    def _write_batch(self, batch: list[Exposure]) -> int:
        """One file per run date of the batch. Returns: the number of files."""
        by_date: dict[str, list[Exposure]] = {}
        for row in batch:
            by_date.setdefault(row[2], []).append(row)
        names = [f.name for f in self.schema]
        for run_date, rows in sorted(by_date.items()):
            columns = list(zip(*[r[:2] + r[3:] for r in rows]))
            table = pa.Table.from_arrays([pa.array(c, type=self.schema.field(n).type) for n, c in zip(names, columns)],
                                         schema=self.schema)
            name = f"{self._prefix}-{next(self._names):06d}.parquet"
            self._write(table, f"{self.root}/{schema.RUN_DATE}={run_date}/{name}", self.fs)
        return len(by_date)


def write_atomically(table: pa.Table, path: str, filesystem: pafs.FileSystem) -> None:
    """Write ``table`` to a hidden temporary file beside ``path``, then rename it to ``path``."""
    folder, name = path.rsplit("/", 1)
    filesystem.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.tmp"
    pq.write_table(table, tmp, filesystem=filesystem)
    filesystem.move(tmp, path)


def exposure_rows(user: str, items: Sequence, run_date: str, slots: Sequence[int], propensities: Sequence[float],
                  policy: str | None, policy_version: str | None, shown_at: dt.datetime) -> list[Exposure]:
    """The exposures of one served list: one row per item, not clicked, purchase unknown."""
    return [(user, item, run_date, int(slot), float(p), policy, policy_version, shown_at, False, None)
            for item, slot, p in zip(items, slots, propensities)]
