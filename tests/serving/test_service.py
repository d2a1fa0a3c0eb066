"""recsys serve over the tiny catalogue with a real redis-server: the order of answers, bad input,
authentication, health and metrics, and the faults: Redis stopped and the alias moved in the middle
of a load, the exposure writer killed."""

from __future__ import annotations

import datetime as dt
import glob
import json
import time

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from recsys_spark import schema
from recsys_spark.serving import ids
from recsys_spark.serving.app import create_app
from recsys_spark.serving.exposures import ExposureWriter, Shown
from recsys_spark.serving.realtime import ServedList, SessionEvent, micros_of

from tests.redis_server import RedisServer
from tests.serving import kit

pytestmark = pytest.mark.unit

AT = dt.datetime(2019, 10, 31, 12, tzinfo=dt.timezone.utc)
SESSION = [
    {"product_id": 1002, "event_type": "view", "event_time": "2019-10-31T12:00:00Z"},
    {"product_id": "1003", "event_type": "View", "event_time": "2019-10-31 12:00:07"},  # naive: UTC
    {"product_id": 1004, "event_type": "purchase", "event_time": "2019-10-31T13:00:09+01:00", "category_id": 77},
    {"product_id": 424242, "event_type": "view", "event_time": "2019-10-31T12:00:30Z"},  # not in the vocabulary
]


def session_events():
    return [SessionEvent(1002, "view", micros_of(AT)), SessionEvent(1003, "view", micros_of(AT) + 7_000_000),
            SessionEvent(1004, "purchase", micros_of(AT) + 9_000_000, 77),
            SessionEvent(424242, "view", micros_of(AT) + 30_000_000)]


def exposures_written(cfg) -> list[dict]:
    files = sorted(glob.glob(f"{cfg.paths.resolve('feedback')}/run_date=*/part-*.parquet"))
    rows = []
    for path in files:
        run_date = path.split("run_date=")[1].split("/")[0]
        rows += [{**r, schema.RUN_DATE: run_date} for r in pq.read_table(path).to_pylist()]
    return rows


@pytest.fixture
def served(tmp_path, redis_url):
    cfg = kit.config(tmp_path, redis_url)
    kit.publish(cfg)
    service = kit.service(cfg)
    yield cfg, service
    service.close()


def test_get_answers_from_the_cache_and_falls_back_for_a_user_it_does_not_know(served):
    cfg, service = served
    client = TestClient(create_app(service))
    body = client.get("/v1/recommendations/1", params={"k": 2}).json()
    items, scores, sources, propensities = kit.LISTS["1"]
    assert body == {
        "user_id": ids.pseudonym("1", kit.KEY), "answered_by": "cache", "model_version": "1", "policy": "epsilon",
        "policy_version": "1:cafe0123", "run_date": kit.RUN_DATE,
        "items": [{"item_id": items[s], "slot": s, "score": scores[s], "source": sources[s],
                   "propensity": propensities[s]} for s in range(2)]}
    # " +0001" is user 1 under integer ids, as clean reads it.
    assert client.get("/v1/recommendations/%20+0001").json()["items"] == client.get("/v1/recommendations/1").json()["items"]

    new = client.get("/v1/recommendations/777").json()
    champion = service.champions.current
    assert (new["answered_by"], new["model_version"], new["policy_version"]) == (
        "fallback", "1", champion.policy_version)
    assert [i["item_id"] for i in new["items"]] == [2000, 1004, 1005] == champion.lists.fallback().items
    assert {i["source"] for i in new["items"]} == {"fallback"} and {i["propensity"] for i in new["items"]} == {1.0}

    counts = service.writer.close()
    assert (counts.written, counts.lost) == (2 + 3 + 3 + 3, 0)
    rows = exposures_written(cfg)
    first = [r for r in rows if r[schema.USER_ID] == ids.pseudonym("1", kit.KEY)][:2]
    assert [(r[schema.ITEM_ID], r[schema.SLOT], r[schema.PROPENSITY], r[schema.RUN_DATE], r[schema.CLICKED])
            for r in first] == [(1005, 0, 0.8, kit.RUN_DATE, False), (1002, 1, 0.05, kit.RUN_DATE, False)]
    assert {r[schema.POLICY_VERSION] for r in rows} == {"1:cafe0123", champion.policy_version}
    assert pq.read_schema(glob.glob(f"{cfg.paths.resolve('feedback')}/run_date=*/*.parquet")[0]).names == [
        f.name for f in schema.FEEDBACK_SCHEMA.fields if f.name != schema.RUN_DATE]


def test_post_ranks_the_session_with_the_champion_in_real_time(served):
    cfg, service = served
    client = TestClient(create_app(service))
    body = client.post("/v1/recommendations", json={"user_id": 1, "events": SESSION}).json()
    expected = service.champions.current.lists.rank(ids.pseudonym("1", kit.KEY), session_events())
    assert body["answered_by"] == "realtime" and body["unknown_products"] == 1
    assert [i["item_id"] for i in body["items"]] == expected.items and 1004 not in expected.items  # bought
    assert [i["propensity"] for i in body["items"]] == expected.propensities
    assert [i["slot"] for i in body["items"]] == [0, 1, 2] and body["run_date"] == kit.RUN_DATE
    # Exploration is seeded by the user: the same session gets the same list.
    assert client.post("/v1/recommendations", json={"user_id": "1", "events": SESSION[::-1]}).json() == body

    only_unknown = client.post("/v1/recommendations", json={"user_id": 5, "events": SESSION[3:], "k": 2}).json()
    assert only_unknown["answered_by"] == "fallback" and len(only_unknown["items"]) == 2
    anonymous = client.post("/v1/recommendations", json={"events": SESSION[:2]}).json()
    assert anonymous["answered_by"] == "realtime" and anonymous["user_id"] is None
    no_events = client.post("/v1/recommendations", json={"user_id": 1, "k": 1}).json()
    assert no_events["answered_by"] == "cache" and [i["item_id"] for i in no_events["items"]] == [1005]

    counts = service.writer.close()
    assert counts.written == 3 + 3 + 2 + 1  # the anonymous session is not logged


def test_bad_input_gets_a_4xx_with_one_line_and_changes_nothing(served):
    cfg, service = served
    client = TestClient(create_app(service))
    cases = [
        (client.get("/v1/recommendations/1", params={"k": 0}), 422, "k must lie in 1..3 (score.top_k), got 0"),
        (client.get("/v1/recommendations/1", params={"k": 4}), 422, "k must lie in 1..3"),
        (client.get("/v1/recommendations/1", params={"k": "two"}), 422, "k: 'two' is not an integer"),
        (client.get("/v1/recommendations/12x"), 422, "user_id: '12x' is not a whole number"),
        (client.post("/v1/recommendations", content=b"{not json"), 422, "body: "),
        (client.post("/v1/recommendations", json={"user_id": 1, "events": [{"product_id": 1002}]}), 422,
         "events[0].event_type: Field required (and 1 more)"),
        (client.post("/v1/recommendations", json={"user_id": 1, "events": [{**SESSION[0], "event_type": "clik"}]}),
         422, "events[0].event_type: 'clik' is not one of view, cart, remove_from_cart, purchase"),
        (client.post("/v1/recommendations", json={"user_id": 1, "events": [{**SESSION[0], "event_time": "yesterday"}]}),
         422, "events[0].event_time: Input should be a valid datetime"),
        (client.post("/v1/recommendations", json={"user_id": 1, "events": [{**SESSION[0], "product_id": "SKU-1"}]}),
         422, "events[0].product_id: 'SKU-1' is not a whole number"),
        (client.post("/v1/recommendations", json={"user_id": "x", "events": SESSION}), 422, "user_id: 'x'"),
        (client.post("/v1/recommendations", json={"events": []}), 422, "give a user_id, events, or both"),
        (client.post("/v1/recommendations", json={"user_id": 1, "events": SESSION, "k": 9}), 422, "k must lie in 1..3"),
        (client.post("/v1/recommendations", json={"user_id": 1, "events": SESSION * 200}), 413,
         "events: 800 events, at most 500 (serve.max_events)"),
        (client.get("/v1/nothing"), 404, "Not Found"),
        (client.post("/v1/recommendations", content=b" " * 300_000), 413,
         "the body is 300,000 bytes, at most 262,144 (serve.max_body_bytes)"),
    ]
    for response, status, message in cases:
        assert (response.status_code, message in response.json()["error"]) == (status, True), response.json()
        assert "\n" not in response.json()["error"]
    counts = service.writer.counts()
    assert counts.written + counts.pending + counts.lost == 0
    assert service.metrics.value("recsys_serve_answers_total", answered_by="cache") == 0
    assert service.metrics.value("recsys_serve_requests_total", route="/v1/recommendations", status="413") == 2


def test_an_api_key_when_configured(served, monkeypatch):
    cfg, service = served
    client = TestClient(create_app(service, api_key="s3cret"))
    assert client.get("/v1/recommendations/1").status_code == 401
    assert client.get("/v1/recommendations/1", headers={"X-API-Key": "wrong"}).json() == {
        "error": "missing or wrong X-API-Key header"}
    assert client.post("/v1/recommendations", json={"user_id": 1, "events": SESSION}).status_code == 401
    assert client.get("/v1/recommendations/1", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
    from recsys_spark.serving.service import api_key

    monkeypatch.setenv("RECSYS_SERVE_API_KEY", "")
    assert api_key(cfg) is None
    monkeypatch.setenv("RECSYS_SERVE_API_KEY", "abc")
    assert api_key(cfg) == "abc"


def test_health_readiness_and_metrics(served):
    cfg, service = served
    client = TestClient(create_app(service))
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "model_version": "1", "redis": "ok"}
    client.get("/v1/recommendations/1")
    client.get("/v1/recommendations/2")
    client.get("/v1/recommendations/3")
    text = client.get("/metrics").text
    for line in ['recsys_serve_answers_total{answered_by="cache"} 2.0', 'recsys_serve_cache_hit_ratio 0.666',
                 'recsys_serve_cache_lookups_total{result="miss"} 1.0', 'recsys_serve_fallbacks_total{reason="cache_miss"} 1.0',
                 'recsys_serve_request_seconds_bucket{answered_by="cache",le="0.5",route="/v1/recommendations/{user_id}"} 2.0',
                 'recsys_serve_model_version 1.0', 'recsys_serve_exposures_lost 0.0']:
        assert line in text, line


@pytest.mark.timeout(120)
def test_redis_stopped_in_a_load_falls_back_without_an_error_and_recovers(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    try:
        cfg = kit.config(tmp_path, redis.url)
        kit.publish(cfg)
        service = kit.service(cfg)
        events = []

        def fault(elapsed: float) -> None:
            began = time.monotonic()  # the times recorded are when the stop or start had ended
            if elapsed > 1.0 and not events:
                redis.stop()
                events.append(("stopped", elapsed + time.monotonic() - began))
            elif elapsed > 2.5 and len(events) == 1:
                events.append(("starting", elapsed))
                redis.start()
                kit.publish(cfg)  # a restarted Redis is empty: publish again, as make serve does
                events.append(("started", elapsed + time.monotonic() - began))

        with kit.running(create_app(service)) as url:
            outcomes = kit.load(url, lambda c, i: c.get(f"/v1/recommendations/{1 + i % 2}"), seconds=4.0,
                                during=fault)
            ready = __import__("httpx").get(f"{url}/readyz").json()
        service.close()
    finally:
        redis.stop()
    (_, stopped), (_, starting), (_, started) = events
    seen = [(round(o.at, 2), o.status, o.body.get("answered_by"), round(o.seconds, 3)) for o in outcomes]
    assert len(outcomes) > 50 and {o.status for o in outcomes} == {200}, seen
    assert max(o.seconds for o in outcomes) < 2.0, seen  # bounded: socket time-outs, no retry
    during = [o for o in outcomes if stopped + 0.1 < o.at < starting]
    assert during and {o.body["answered_by"] for o in during} == {"fallback"}, (stopped, started, seen)
    after = [o for o in outcomes if o.at > started + cfg.serve.redis_retry_seconds + 0.3]
    assert after and {o.body["answered_by"] for o in after} == {"cache"}, (stopped, started, seen)
    assert ready["ready"] is True
    assert service.metrics.value("recsys_serve_errors_total", kind="redis") >= 1


@pytest.mark.timeout(120)
def test_the_alias_moved_in_a_load_swaps_the_model_without_a_failed_request(tmp_path, redis_url):
    cfg = kit.config(tmp_path, redis_url)
    kit.publish(cfg)
    registry = kit.Registry(seeds={"1": 1, "2": 2}, slow_s=0.3)  # a load takes a while: requests go on
    service = kit.service(cfg, registry)
    service.champions.start()
    moved = []

    def move(elapsed: float) -> None:
        if elapsed > 0.8 and not moved:
            registry.alias = "3"  # a version that fails to load: the champion stays
        if elapsed > 1.5 and not moved:
            registry.alias = "2"
            moved.append(elapsed)

    body = {"user_id": 1, "events": SESSION}
    with kit.running(create_app(service)) as url:
        outcomes = kit.load(url, lambda c, i: c.post("/v1/recommendations", json=body) if i % 2 else
                            c.get("/v1/recommendations/777"), seconds=3.5, during=move)
    service.close()
    assert len(outcomes) > 50 and {o.status for o in outcomes} == {200}
    (at,) = moved
    assert {o.body["model_version"] for o in outcomes if o.at < at} == {"1"}
    assert {o.body["model_version"] for o in outcomes if o.at > at + 1.0} == {"2"}  # polled, loaded, swapped
    # A request uses one champion from start to end: its list and its versions are the same model's.
    assert all(o.body["policy_version"].startswith(o.body["model_version"] + ":") for o in outcomes)
    assert "3" in registry.loads and service.metrics.value("recsys_serve_model_loads_total", outcome="failed") >= 1
    assert service.metrics.value("recsys_serve_model_loads_total", outcome="loaded") == 2
    realtime = [o.body for o in outcomes if o.body["answered_by"] == "realtime"]
    assert {b["policy_version"].split(":")[0] for b in realtime} == {"1", "2"}


class Killed(BaseException):
    """Ends the writer thread as a kill would: no except clause of the writer catches it."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_killed_exposure_writer_loses_one_batch_and_reports_it(tmp_path, redis_url):
    from recsys_spark.serving.exposures import write_atomically

    calls = []

    def write(table, path, filesystem):
        calls.append(table.num_rows)
        if len(calls) == 2:
            raise Killed()
        write_atomically(table, path, filesystem)

    cfg = kit.config(tmp_path, redis_url)
    kit.publish(cfg)
    writer = ExposureWriter(cfg.paths.resolve("feedback"), batch_rows=6, flush_seconds=60, write=write).start()
    service = kit.service(cfg, writer=writer)
    client = TestClient(create_app(service))
    for i in range(10):  # 3 items each: batches of 6 rows
        assert client.get(f"/v1/recommendations/{1 + i % 2}").status_code == 200
        if i == 3:
            writer._thread.join(timeout=10)  # the second batch killed it
            assert not writer._thread.is_alive()
    assert writer.counts().restarts == 1  # the next append started it again
    assert 'recsys_serve_exposures_lost 6.0' in client.get("/metrics").text
    counts = service.close()
    assert (counts["exposures_written"], counts["exposures_lost"], counts["exposures_unwritten"]) == (24, 6, 0)
    assert len(exposures_written(cfg)) == 24 == 30 - 6


def test_the_writer_flushes_on_time_and_hides_half_written_files(tmp_path):
    writer = ExposureWriter(str(tmp_path / "feedback"), batch_rows=1000, flush_seconds=0.2).start()
    shown = dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone.utc)
    writer.append(Shown("u", ServedList([1002], [0.5], ["model"], [0.5]), "2024-01-02", "epsilon", "1:x", shown))
    writer.append(Shown("u", ServedList([1003], [0.1], ["model"], [1.0]), "2024-01-03", "epsilon", "1:x", shown))
    deadline = dt.datetime.now() + dt.timedelta(seconds=10)
    while writer.counts().written < 2 and dt.datetime.now() < deadline:
        __import__("time").sleep(0.05)
    assert writer.counts().written == 2 and writer.counts().files == 2  # one file per run date
    assert sorted(p.parent.name for p in (tmp_path / "feedback").rglob("*.parquet")) == [
        "run_date=2024-01-02", "run_date=2024-01-03"]
    assert not list((tmp_path / "feedback").rglob(".*"))  # no temporary file left
    row = pq.read_table(next((tmp_path / "feedback").rglob("*.parquet"))).to_pylist()[0]
    assert row[schema.SHOWN_AT] == shown and row[schema.PURCHASED] is None
    full = ExposureWriter(str(tmp_path / "other"), batch_rows=2, flush_seconds=60, max_pending_rows=2)
    assert full.append(Shown("u", ServedList([1, 2, 3], [0.0] * 3, ["fallback"] * 3, [1.0] * 3), "2024-01-02", None,
                             None, shown)) is False
    assert full.counts().lost == 3
    assert json.dumps(writer.close().__dict__)


def test_realtime_and_fallback_lists_are_recorded_before_their_exposures(tmp_path):
    from recsys_spark.serving import service as service_module
    from recsys_spark.serving.exposures import RECORDED, write_atomically

    assert RECORDED == (service_module.REALTIME, service_module.FALLBACK)
    paths = []

    def write(table, path, filesystem):
        paths.append(path.removeprefix(str(tmp_path / "feedback") + "/"))
        write_atomically(table, path, filesystem)

    writer = ExposureWriter(str(tmp_path / "feedback"), batch_rows=5, flush_seconds=60, write=write).start()
    shown = dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone.utc)
    writer.append(Shown("u", ServedList([1002, 1003], [0.5, 0.25], ["model", "explore"], [0.9, 0.1]), "2024-01-02",
                        "epsilon", "1:x", shown, "realtime", "1"))
    writer.append(Shown("v", ServedList([1004], [0.0], ["fallback"], [1.0]), "2024-01-02", "epsilon", "1:x", shown,
                        "fallback", "1"))
    writer.append(Shown("w", ServedList([1005, 1006], [0.0, 0.0], ["model"] * 2, [1.0, 1.0]), "2024-01-02",
                        "epsilon", "1:x", shown, "cache", "1"))  # 5 rows: one batch
    assert writer.close().written == 5
    [lists, exposures] = paths  # the lists' file first, under the same name
    assert lists.startswith("_served_lists/run_date=2024-01-02/part-") and exposures == lists.split("/", 1)[1]
    recorded = pq.read_table(tmp_path / "feedback" / lists).to_pylist()
    assert [(r[schema.USER_ID], r[schema.ITEM_ID], r[schema.SLOT], r[schema.PROPENSITY], r[schema.SCORE],
             r[schema.SOURCE], r[schema.ANSWERED_BY], r[schema.MODEL_VERSION]) for r in recorded] == [
        ("u", 1002, 0, 0.9, 0.5, "model", "realtime", "1"), ("u", 1003, 1, 0.1, 0.25, "explore", "realtime", "1"),
        ("v", 1004, 0, 1.0, 0.0, "fallback", "fallback", "1")]  # the cached list is not recorded
    assert recorded[0][schema.SERVED_AT] == shown and recorded[0][schema.POLICY_VERSION] == "1:x"
    assert pq.read_table(tmp_path / "feedback").num_rows == 5  # pyarrow's reader skips _served_lists


def test_a_failed_write_of_the_lists_writes_none_of_their_exposures(tmp_path):
    from recsys_spark.serving.exposures import write_atomically

    def write(table, path, filesystem):
        if "/_served_lists/" in path:
            raise OSError("disk full")  # a crash between the two files: the lists' file comes first
        write_atomically(table, path, filesystem)

    writer = ExposureWriter(str(tmp_path / "feedback"), batch_rows=1, flush_seconds=60, write=write).start()
    shown = dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone.utc)
    writer.append(Shown("u", ServedList([1002], [0.5], ["model"], [0.9]), "2024-01-02", "epsilon", "1:x", shown,
                        "realtime", "1"))
    counts = writer.close()
    assert (counts.written, counts.lost, counts.files) == (0, 1, 0)
    assert not list((tmp_path / "feedback").rglob("*.parquet"))  # no exposure without its list


def test_serve_settings_out_of_range_fail_by_name():
    from recsys_spark.config import from_dict
    from recsys_spark.errors import ConfigError

    for serve, message in [({"port": 0}, "serve.port must be >= 1"), ({"port": 70000}, "serve.port must be <= 65535"),
                           ({"max_events": 0}, "serve.max_events must be >= 1"),
                           ({"max_body_bytes": 10}, "serve.max_body_bytes must be >= 1024"),
                           ({"feedback_batch_rows": 10, "feedback_max_pending_rows": 5},
                            r"serve.feedback_max_pending_rows \(5\) must be >= serve.feedback_batch_rows \(10\)"),
                           ({"feedback_flush_seconds": 0}, "serve.feedback_flush_seconds must be > 0"),
                           ({"model_poll_seconds": -1}, "serve.model_poll_seconds must be > 0"),
                           ({"realtime_timeout_s": 0}, "serve.realtime_timeout_s must be > 0")]:
        with pytest.raises(ConfigError, match=message):
            from_dict({"serve": serve})


def test_sessions_posted_at_once_are_ranked_in_one_block_with_the_lists_they_get_alone(served):
    """Concurrent sessions share one Recommender block (realtime.RealtimeRanker): each gets the list
    it gets alone, propensities included, and fewer blocks than sessions run."""
    import threading

    cfg, service = served
    ranker = service.champions.current.lists
    sessions = [(ids.pseudonym(str(u), kit.KEY), session_events()[: 1 + u % 4]) for u in range(16)]
    alone = [ranker.rank(user, events) for user, events in sessions]
    blocks = []
    rank_block = ranker._rank_block

    def counted(rows):
        blocks.append(len(rows))
        time.sleep(0.05)  # a slow block: the others queue behind it
        return rank_block(rows)

    ranker._rank_block = counted
    together: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ranker.rank(*sessions[i])))
               for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [together[i] for i in range(len(sessions))] == alone
    assert sum(blocks) == len(sessions) and len(blocks) < len(sessions) and max(blocks) > 1
    assert any(p < 1 for served in alone for p in served.propensities)  # exploration was on


def test_a_session_queued_behind_a_stuck_block_gets_the_fallback_within_the_bound(served):
    """No real-time wait is unbounded: a request queued behind a block that does not finish stops
    waiting after serve.realtime_timeout_s, and the service answers it with the fallback."""
    import threading

    cfg, service = served
    ranker = service.champions.current.lists
    release = threading.Event()
    rank_block = ranker._rank_block

    def stuck(rows):
        release.wait(timeout=30)
        return rank_block(rows)

    ranker._rank_block, ranker.timeout_s = stuck, 0.3
    user, events = ids.pseudonym("7", kit.KEY), session_events()
    first = threading.Thread(target=lambda: ranker.rank(user, events))
    first.start()
    time.sleep(0.1)  # the first request leads a block that hangs
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="serve.realtime_timeout_s=0.3"):
        ranker.rank(user, events)
    assert 0.2 <= time.monotonic() - started < 2.0
    answer = service.for_session(None, [events[0]], 5)
    assert answer.answered_by == "fallback"
    release.set()
    first.join(timeout=30)
    assert not first.is_alive() and ranker._queue == []
