"""The service's exposures, appended to the feedback contract as batched Parquet files.

Every list the service answers with is logged, one row per shown item, as
``schema.FEEDBACK_SCHEMA`` (the pseudonym, the item as the shop names it, the run date and slot
of the list, its propensity, policy and policy version, ``shown_at``, ``clicked`` false) under
``paths.feedback`` in the shop's layout that clean reads (``run_date=YYYY-MM-DD/part-*.parquet``,
as ``data.feedback_sim.write_feedback`` writes it).

Requests only queue one record per list (:class:`Shown`, :meth:`ExposureWriter.append`); a
background thread turns them into rows and writes a file when ``serve.feedback_batch_rows`` rows
are waiting or ``serve.feedback_flush_seconds`` have passed (the columns built in slices of
:data:`SLICE_LISTS` lists, so that the thread never holds the GIL for long while requests wait;
cached lists parsed from their stored JSON by Arrow, without the GIL), each file first under a
hidden temporary name (readers skip names starting with ``.``) and then renamed: a reader never
sees half a file, and a writer killed mid-write loses the one batch it held. Rows that cannot be
written (a failed write, or more than ``serve.feedback_max_pending_rows`` waiting) are counted as lost, never retried into a
duplicate. A writer thread that died is started again by the next append, its batch counted as
lost. :meth:`ExposureWriter.close` flushes what is left and reports the counts.

A real-time or fallback list (``answered_by`` in :data:`RECORDED`) is not in the score stage's
recommendations that clean checks exposures against, so the thread also records the list itself,
one row per item as ``schema.SERVED_LIST_SCHEMA``, under ``{paths.feedback}/_served_lists``
(``run_date=YYYY-MM-DD/part-*.parquet``, the same file name as its exposures; hidden from the
readers of paths.feedback by the leading ``_``). In each batch the lists' file is written (and
renamed into place) before the exposures' file: an exposure on disk always has its list; a
failed or interrupted write of the lists writes no exposure of the batch.
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from recsys_spark import schema
from recsys_spark.config import is_uri

log = logging.getLogger(__name__)

# Lists turned into Arrow columns per step of the writer thread: one step is a few hundred
# microseconds of GIL, so a cached request (~0.1 ms of CPU) never waits behind a whole batch.
SLICE_LISTS = 200
# The answers whose lists are recorded under _served_lists (service.REALTIME, service.FALLBACK):
# a cached list is a row of the score stage's recommendations already.
RECORDED = ("realtime", "fallback")


class Shown(NamedTuple):
    """One served list: its exposures are one row per item (not clicked, purchase unknown).

    Args:
        user: the pseudonym.
        lists: the list (``items`` as the shop names them, ``slots``, ``propensities``, ``len``):
            a realtime.ServedList or a store.StoredList (decoded here, by the writer's thread).
        run_date: ISO date of the list; policy, policy_version: of the list; shown_at: aware datetime.
        answered_by: the service's answer (cache | realtime | fallback; a list of :data:`RECORDED`
            is also written to _served_lists); model_version: of the list.
    """

    user: str
    lists: object
    run_date: str
    policy: str | None
    policy_version: str | None
    shown_at: dt.datetime
    answered_by: str | None = None
    model_version: str | None = None


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
        self.schema = schema.partition_arrow_schema(schema.FEEDBACK_SCHEMA, id_type)
        self.served_schema = schema.partition_arrow_schema(schema.SERVED_LIST_SCHEMA, id_type)
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.max_pending_rows = max_pending_rows
        self._write = write or write_atomically
        self._pending: list[Shown] = []
        self._pending_rows = 0
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

    def append(self, shown: Shown) -> bool:
        """Queue the exposures of one list. Returns: False when they were dropped (counted as lost)."""
        rows = len(shown.lists)
        if not rows:
            return True
        with self._cond:
            if self._thread is not None and not self._thread.is_alive() and not self._closing:
                self._restarts += 1
                log.error("serve: the exposure writer had stopped; starting it again (%d rows lost so far)", self._lost)
                self.start()
            if self._closing or self._pending_rows + rows > self.max_pending_rows:
                self._lost += rows
                return False
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(shown)
            self._pending_rows += rows
            if self._pending_rows >= self.batch_rows:
                self._cond.notify()
        return True

    def counts(self) -> WriterCounts:
        with self._cond:
            return WriterCounts(self._written, self._files, self._lost, self._pending_rows + self._in_hand,
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
                self._lost += self._pending_rows
                self._pending.clear()
                self._pending_rows = 0
            counts = WriterCounts(self._written, self._files, self._lost, self._pending_rows + self._in_hand,
                                  self._restarts)
        log.info("serve: exposures written %d (%d files), lost %d, unwritten %d", counts.written, counts.files,
                 counts.lost, counts.pending)
        return counts

    def _run(self) -> None:
        batch: list[Shown] = []
        try:
            while True:
                with self._cond:
                    while not self._due():
                        self._cond.wait(self._wait_s())
                    if not self._pending and self._closing:
                        return
                    batch, rows = self._take()
                    self._in_hand = rows
                    if self._pending:
                        self._oldest = time.monotonic()
                try:
                    files = self._write_batch(batch)
                except Exception:  # noqa: BLE001 - any failed write: count the batch, keep serving
                    log.exception("serve: writing %d exposure rows to %s failed; they are lost", rows, self.root)
                    with self._cond:
                        self._lost += rows
                else:
                    with self._cond:
                        self._written += rows
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

    def _take(self) -> tuple[list[Shown], int]:
        """The waiting lists of the next batch (whole lists, at least batch_rows rows when as many
        wait) and their rows; called holding the lock."""
        rows = taken = 0
        while taken < len(self._pending) and rows < self.batch_rows:
            rows += len(self._pending[taken].lists)
            taken += 1
        batch = self._pending[:taken]
        del self._pending[:taken]
        self._pending_rows -= rows
        return batch, rows

    def _due(self) -> bool:
        if self._closing or self._pending_rows >= self.batch_rows:
            return True
        return bool(self._pending) and time.monotonic() - self._oldest >= self.flush_seconds

    def _wait_s(self) -> float:
        if not self._pending:
            return self.flush_seconds
        return max(0.001, self.flush_seconds - (time.monotonic() - self._oldest))

    def _write_batch(self, batch: list[Shown]) -> int:
        """One exposure file per run date of the batch, each after the file of its real-time and
        fallback lists (when it has any). Returns: the number of exposure files."""
        by_date: dict[str, list[Shown]] = {}
        for shown in batch:
            by_date.setdefault(shown.run_date, []).append(shown)
        for run_date, lists in sorted(by_date.items()):
            stored = [shown for shown in lists if stored_bytes(shown.lists) is not None]
            others = [shown for shown in lists if stored_bytes(shown.lists) is None]
            slices = [stored_exposures(stored, self.schema)] if stored else []
            slices += [exposure_table(others[i : i + SLICE_LISTS], self.schema)
                       for i in range(0, len(others), SLICE_LISTS)]
            name = f"{self._prefix}-{next(self._names):06d}.parquet"
            recorded = [shown for shown in lists if shown.answered_by in RECORDED]
            if recorded:  # first: an exposure never names a list not yet recorded
                served = [served_list_table(recorded[i : i + SLICE_LISTS], self.served_schema)
                          for i in range(0, len(recorded), SLICE_LISTS)]
                self._write(pa.concat_tables(served), f"{self.root}/{schema.SERVED_LISTS_FOLDER}/"
                            f"{schema.RUN_DATE}={run_date}/{name}", self.fs)
            self._write(pa.concat_tables(slices), f"{self.root}/{schema.RUN_DATE}={run_date}/{name}", self.fs)
        return len(by_date)


def write_atomically(table: pa.Table, path: str, filesystem: pafs.FileSystem) -> None:
    """Write ``table`` to a hidden temporary file beside ``path``, then rename it to ``path``."""
    folder, name = path.rsplit("/", 1)
    filesystem.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.tmp"
    pq.write_table(table, tmp, filesystem=filesystem)
    filesystem.move(tmp, path)


def exposure_table(lists: Sequence[Shown], arrow: pa.Schema) -> pa.Table:
    """The exposures of ``lists`` (one row per item) as a table of ``arrow`` (schema.partition_arrow_schema of FEEDBACK_SCHEMA)."""
    sizes = [len(shown.lists) for shown in lists]
    total = sum(sizes)

    def each(field: int) -> list:  # a list-level value, once per item
        return [value for shown, n in zip(lists, sizes) for value in itertools.repeat(shown[field], n)]

    def flat(name: str) -> list:  # an item-level sequence
        return [value for shown in lists for value in getattr(shown.lists, name)]

    columns = [each(0), flat("items"), [int(s) for s in flat("slots")], [float(p) for p in flat("propensities")],
               each(3), each(4), each(5), [False] * total, [None] * total]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, arrow)], schema=arrow)


def served_list_table(lists: Sequence[Shown], arrow: pa.Schema) -> pa.Table:
    """The items of ``lists`` (one row per item) as a table of ``arrow`` (schema.partition_arrow_schema of SERVED_LIST_SCHEMA)."""
    sizes = [len(shown.lists) for shown in lists]

    def each(name: str) -> list:  # a list-level value, once per item
        return [value for shown, n in zip(lists, sizes) for value in itertools.repeat(getattr(shown, name), n)]

    def flat(name: str) -> list:  # an item-level sequence
        return [value for shown in lists for value in getattr(shown.lists, name)]

    columns = {schema.USER_ID: each("user"), schema.ITEM_ID: flat("items"),
               schema.SLOT: [int(s) for s in flat("slots")],
               schema.PROPENSITY: [float(p) for p in flat("propensities")],
               schema.POLICY: each("policy"), schema.POLICY_VERSION: each("policy_version"),
               schema.SCORE: [float(v) for v in flat("scores")], schema.SOURCE: flat("sources"),
               schema.MODEL_VERSION: each("model_version"), schema.ANSWERED_BY: each("answered_by"),
               schema.SERVED_AT: each("shown_at")}
    return pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in arrow], schema=arrow)


def stored_bytes(lists) -> bytes | None:
    """A cached list's stored bytes (store.StoredList, the response's items layout), else None."""
    raw = getattr(lists, "raw", None)
    return raw if raw is not None and raw[:1] == b"[" else None


def stored_exposures(lists: Sequence[Shown], arrow: pa.Schema) -> pa.Table:
    """The exposures of cached lists as a table of ``arrow``: their stored JSON parsed by Arrow's
    JSON reader (C++, without the GIL: decoding them in Python cost the writer ~40 us a list, time
    the event loop waited for the GIL), the first ``len(lists)`` items of each."""
    item = pa.struct([(schema.ITEM_ID, arrow.field(schema.ITEM_ID).type), (schema.SLOT, pa.int32()),
                      (schema.PROPENSITY, pa.float64())])
    layout = pa.schema([("k", pa.int64()), ("items", pa.list_(item))])
    lines = b"\n".join(b'{"k":%d,"items":%s}' % (len(shown.lists), stored_bytes(shown.lists)) for shown in lists)
    parsed = pa_json.read_json(io.BytesIO(lines), parse_options=pa_json.ParseOptions(
        explicit_schema=layout, unexpected_field_behavior="ignore")).combine_chunks()
    nested = parsed.column("items").chunk(0)
    owner = pc.list_parent_indices(nested).to_numpy()
    offsets = nested.offsets.to_numpy()
    keep = np.arange(len(owner)) - offsets[owner] < parsed.column("k").to_numpy()[owner]
    flat = nested.flatten().filter(pa.array(keep))
    owner = pa.array(owner[keep])

    def each(field: int, dtype: pa.DataType) -> pa.Array:  # a list-level value, once per item
        return pa.array([shown[field] for shown in lists], dtype).take(owner)

    n = len(owner)
    columns = {schema.USER_ID: each(0, pa.string()), schema.ITEM_ID: flat.field(0), schema.SLOT: flat.field(1),
               schema.PROPENSITY: flat.field(2), schema.POLICY: each(3, pa.string()),
               schema.POLICY_VERSION: each(4, pa.string()), schema.SHOWN_AT: each(5, arrow.field(schema.SHOWN_AT).type),
               schema.CLICKED: pa.array(np.zeros(n, dtype=bool)), schema.PURCHASED: pa.nulls(n, pa.bool_())}
    return pa.Table.from_arrays([columns[f.name].cast(f.type) for f in arrow], schema=arrow)

