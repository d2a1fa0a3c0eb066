"""Bounded waits: every place a stage waits on something it does not control has a bound here.

A hang is worse than a crash: a scheduler cannot retry a job that never ends, and a user
cannot tell a slow job from a stuck one. So no stage waits forever:

* :func:`observed` reads a Spark ``Observation`` with a bound. ``Observation.get`` waits
  without one, and Spark never fulfils an observation whose ``CollectMetrics`` node left the
  executed plan (SPARK-54620: adaptive execution replaced a finished stage whose output was
  empty by an empty relation, and the node with it). The caller gets ``None`` and counts the
  rows another way.
* :func:`result` waits for a future (a write on a helper thread) with a bound.
* :func:`stage_deadline` bounds a whole stage: past ``spark.stage_timeout_minutes`` it cancels
  the running Spark jobs (then, if need be, interrupts the stage's thread) and raises
  :class:`WaitTimeout`.

A stage that times out raises before it publishes anything (clean and featurize write to
staging folders and swap them in only at the end), so what was published stays as it was.
"""

from __future__ import annotations

import _thread
import logging
import signal
import threading
import time
from concurrent.futures import Future, TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any, Iterator, TypeVar

from recsys_spark.errors import RecsysError

log = logging.getLogger(__name__)

T = TypeVar("T")
_POLL_S = 0.05


class WaitTimeout(RecsysError):
    """A bounded wait ran out; the message names what was waited for and the key of the bound."""


def observed(observation: Any, timeout_s: float) -> dict[str, Any] | None:
    """The values of a Spark ``Observation`` once its action has run, or ``None`` when Spark does
    not report them within ``timeout_s``.

    Spark fills an observation from a listener event sent when the action ends: normally
    milliseconds after it. Only an observation whose plan node was optimised away never
    arrives, so the caller falls back to counting directly; it never waits without bound.
    """
    future = observation._jo.future()
    deadline = time.monotonic() + timeout_s
    while not future.isCompleted():
        if time.monotonic() >= deadline:
            log.warning("observation %s was not reported within %.0f s (its side of the plan was empty "
                        "or optimised away); counting directly", observation._name, timeout_s)
            return None
        time.sleep(_POLL_S)
    return observation.get


def result(future: Future[T], timeout_s: float, what: str, key: str) -> T:
    """``future.result()`` within ``timeout_s`` seconds.

    Raises:
        WaitTimeout: naming ``what`` and the config ``key`` of the bound.
    """
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        future.cancel()
        raise WaitTimeout(f"gave up waiting for {what} after {timeout_s:.0f} s (bound: {key})") from None


@contextmanager
def stage_deadline(spark: Any, stage: str, timeout_minutes: float, grace_s: float = 10.0) -> Iterator[None]:
    """Bound a stage run in this thread to ``timeout_minutes`` (``spark.stage_timeout_minutes``).

    At the deadline a watchdog cancels every running Spark job of the application (one stage
    runs at a time): the action the stage waits on fails, and :class:`WaitTimeout` is raised
    from here. A stage still running ``grace_s`` later (Python work, no Spark job: local
    training) is interrupted as by Ctrl-C at its next Python instruction. No signal is sent
    (one arriving while py4j reads its socket breaks the connection). Call it from the main
    thread. ``timeout_minutes <= 0`` is refused by the config: the bound is always finite.

    For the stage's duration SIGINT gets Python's default handler (KeyboardInterrupt) on the main
    thread: ``_thread.interrupt_main`` calls whatever handler is installed, and one that a
    library set to ignore SIGINT, or to do something else, would swallow the interrupt.
    """
    fired, ended = threading.Event(), threading.Event()
    lock = threading.Lock()
    # Only the main thread can be interrupted; elsewhere cancelling the Spark jobs must do.
    in_main = threading.current_thread() is threading.main_thread()

    def fire() -> None:
        with lock:
            if ended.is_set():
                return
            fired.set()
        log.error("recsys %s: %g minute(s) passed (spark.stage_timeout_minutes): cancelling its Spark jobs",
                  stage, timeout_minutes)
        if spark is not None:
            try:
                spark.sparkContext.cancelAllJobs()
            except Exception:  # the context may be gone already; the interrupt below still comes
                log.debug("cancelAllJobs failed", exc_info=True)
        if in_main and not ended.wait(grace_s):
            with lock:
                if not ended.is_set():
                    _thread.interrupt_main()

    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler) if in_main else None
    timer = threading.Timer(timeout_minutes * 60.0, fire)
    timer.daemon = True
    timer.start()
    message = (f"stage {stage} did not finish within spark.stage_timeout_minutes={timeout_minutes:g} "
               "(its Spark jobs were cancelled; nothing was published)")
    try:
        try:
            yield
        except BaseException as exc:
            _end(lock, ended, timer)
            if fired.is_set():
                raise WaitTimeout(message) from exc
            raise
        _end(lock, ended, timer)
        if fired.is_set():
            raise WaitTimeout(message)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous_handler)


def _end(lock: threading.Lock, ended: threading.Event, timer: threading.Timer) -> None:
    timer.cancel()
    with lock:
        ended.set()
