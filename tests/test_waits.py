"""Bounded waits: a future, an observation and a whole stage give up with a one-line error."""

from __future__ import annotations

import threading
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from recsys_spark import waits

pytestmark = pytest.mark.unit


def test_result_returns_a_finished_value_and_names_a_wait_that_ran_out():
    with ThreadPoolExecutor(1) as pool:
        assert waits.result(pool.submit(lambda: 3), 5, "three", "spark.stage_timeout_minutes") == 3
        release = threading.Event()
        slow = pool.submit(release.wait, 30)
        with pytest.raises(waits.WaitTimeout, match=r"^gave up waiting for the slow write after 0 s "
                                                    r"\(bound: spark.stage_timeout_minutes\)$"):
            waits.result(slow, 0.2, "the slow write", "spark.stage_timeout_minutes")
        release.set()


def test_stage_deadline_interrupts_python_work_that_outlives_it():
    started = time.monotonic()
    with pytest.raises(waits.WaitTimeout, match="stage train did not finish within spark.stage_timeout_minutes=0.005"):
        with waits.stage_deadline(None, "train", 0.005, grace_s=0.2):  # 0.3 s, then 0.2 s of grace
            while time.monotonic() - started < 60:  # a training loop, say
                time.sleep(0.01)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("handler", [signal.SIG_IGN, lambda signum, frame: None], ids=["ignored", "custom"])
def test_stage_deadline_interrupts_even_where_a_library_took_over_sigint(handler):
    previous = signal.signal(signal.SIGINT, handler)
    try:
        started = time.monotonic()
        with pytest.raises(waits.WaitTimeout, match="stage train did not finish"):
            with waits.stage_deadline(None, "train", 0.005, grace_s=0.2):
                while time.monotonic() - started < 60:
                    time.sleep(0.01)
        assert time.monotonic() - started < 30
        assert signal.getsignal(signal.SIGINT) is handler  # the library's handler is back
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stage_deadline_lets_a_quick_stage_through():
    with waits.stage_deadline(None, "clean", 1.0):
        value = sum(range(10))
    time.sleep(0.1)
    assert value == 45


def test_stage_deadline_cancels_spark_jobs(spark):
    from pyspark.errors import PySparkException
    from py4j.protocol import Py4JJavaError

    slow = spark.sparkContext.parallelize(range(2), 2).map(lambda x: time.sleep(60) or x)
    started = time.monotonic()
    with pytest.raises(waits.WaitTimeout) as raised:
        with waits.stage_deadline(spark, "featurize", 0.05):  # 3 s
            slow.collect()
    assert isinstance(raised.value.__cause__, (Py4JJavaError, PySparkException))  # the job was cancelled
    assert time.monotonic() - started < 50
    assert spark.range(3).count() == 3  # the session still works
