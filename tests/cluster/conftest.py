"""A two-worker Spark standalone cluster on loopback, stopped after the test, also on failure."""

from __future__ import annotations

import pytest

from tests.cluster.standalone import StandaloneCluster


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def standalone_cluster(request, tmp_path):
    """Master + 2 workers of 1 core and 1 GiB each; their logs are printed when the test fails."""
    cluster = StandaloneCluster(tmp_path / "cluster", workers=2, cores=1, memory="1g")
    try:
        cluster.start()
        yield cluster
    finally:
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed:
            print(cluster.logs())
        cluster.stop()
