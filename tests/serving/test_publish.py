"""The publish stage in Spark against a real redis-server: the cached lists equal the Parquet,
publishing twice gives the same store, rollback, a count that does not reconcile."""

from __future__ import annotations

import datetime as dt

import pytest

from recsys_spark import io, schema
from recsys_spark.config import load_config
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.serving import publish
from recsys_spark.serving.store import RecommendationStore, connect

from tests.serving.test_store import dump

pytestmark = [pytest.mark.unit, pytest.mark.timeout(300)]

D1, D2 = dt.date(2019, 10, 11), dt.date(2019, 10, 12)
BIG = 2**53 + 1


def rec(user, slot, item, score, source, propensity, run_date, model_version="7"):
    """One row of RECOMMENDATION_SCHEMA."""
    return (user, slot + 1, slot, item, score, source, propensity, "epsilon", f"{model_version}:abc", "two_tower",
            model_version, run_date)


# Slots given out of order on purpose: the cached list is ordered by slot.
ROWS = [
    rec("a1", 1, BIG, 0.5, "explore", 0.05, D2), rec("a1", 0, 11, 0.75, "model", 1.0, D2),
    rec("a1", 2, 12, 0.25, "model", 1.0, D2),
    rec("b2", 0, 12, 0.1, "fallback", 1.0, D2), rec("b2", 1, 2**63 - 1, 0.05, "fallback", 1.0, D2),
    rec("c3", 0, 13, 3.0, "model", 0.8, D2),
    rec("a1", 0, 21, 1.0, "model", 1.0, D1, model_version="6"),
    rec("d4", 0, 22, 1.0, "model", 1.0, D1, model_version="6"),
]


def config(root, redis_url, *more):
    return load_config(None, [f"paths.root={root}", "spark.shuffle_partitions=2", f"serve.redis_url={redis_url}",
                              "serve.publish_batch=2", *more])


def reader(cfg) -> RecommendationStore:
    return RecommendationStore(connect(cfg.serve), cfg.serve.redis_prefix)


def test_publish_serves_the_parquet_lists_and_is_idempotent_and_rolls_back(spark, tmp_path, redis_url):
    cfg = config(tmp_path, redis_url)
    io.write_partitioned(spark.createDataFrame(ROWS, schema.RECOMMENDATION_SCHEMA),
                         cfg.paths.resolve("recommendations"), schema.RUN_DATE)

    # No date given: the latest one.
    summary = publish.run(spark, cfg)
    version = summary["version"]
    assert version.startswith("2019-10-12-7-") and summary["run_date"] == "2019-10-12"
    assert (summary["users"], summary["rows"], summary["k"], summary["users_per_s"] > 0) == (3, 6, 3, True)
    store = reader(cfg)
    assert store.current_version() == version and store.versions() == [version]
    a1 = store.get("a1")
    assert (a1.items, a1.scores, a1.slots, a1.sources, a1.propensities) == (
        (11, BIG, 12), (0.75, 0.5, 0.25), (0, 1, 2), ("model", "explore", "model"), (1.0, 0.05, 1.0))
    assert (a1.policy, a1.policy_version, a1.model_version, a1.run_date) == ("epsilon", "7:abc", "7", "2019-10-12")
    # Every list equals the Parquet's rows, read back through Spark (float32 scores widened as Spark does).
    written = io.read_recommendations(spark, cfg.paths.resolve("recommendations")).where(f"run_date = '{D2}'")
    expected: dict[str, list] = {}
    for r in sorted(written.collect(), key=lambda r: (r.user_id, r.slot)):
        expected.setdefault(r.user_id, []).append((r.item_id, r.score, r.slot, r.source, r.propensity))
    got = {u: list(zip(c.items, c.scores, c.slots, c.sources, c.propensities))
           for u in expected for c in [store.get(u)]}
    assert got == expected
    assert store.get("d4") is None  # only in the other date
    meta = store.meta(version)
    assert {k: meta[k] for k in ("run_date", "model_name", "users", "rows", "k", "source_path")} == {
        "run_date": "2019-10-12", "model_name": "two_tower", "users": 3, "rows": 6, "k": 3,
        "source_path": cfg.paths.resolve("recommendations")}

    # The same date again: the same keys, values and current version.
    before = dump(store.client)
    assert publish.run(spark, cfg)["version"] == version
    assert dump(store.client) == before

    # An older date is not served (a backfill) unless asked for; then a rollback to the version before it.
    skipped = publish.run(spark, config(tmp_path, redis_url, "publish.run_date=2019-10-11"))
    assert skipped["skipped"].endswith("run_date=2019-10-11: older than the date served, 2019-10-12 "
                                       "(publish.allow_older=true serves it)")
    assert dump(store.client) == before
    older = publish.run(spark, config(tmp_path, redis_url, "publish.run_date=2019-10-11",
                                      "publish.allow_older=true"))["version"]
    assert older.startswith("2019-10-11-6-") and store.get("d4").items == (22,) and store.get("b2") is None
    assert store.versions() == [older, version]
    rolled = publish.run(None, config(tmp_path, redis_url, "publish.rollback=true"))
    assert rolled["rolled_back"] == f"{redis_url} recsys:current {older} -> {version}"
    assert store.current_version() == version and store.get("b2").items == (12, 2**63 - 1)
    store.close()

    with pytest.raises(InputError, match=r"has no run_date=2019-10-13 partition \(config key publish.run_date\); "
                                         r"latest dates: 2019-10-11, 2019-10-12"):
        publish.run(spark, config(tmp_path, redis_url, "publish.run_date=2019-10-13"))


def test_keys_that_do_not_reconcile_raise_and_leave_the_served_version(spark, tmp_path, redis_url, monkeypatch):
    cfg = config(tmp_path, redis_url, "clean.id_types.product_id=string")
    strings = schema.with_product_ids(schema.RECOMMENDATION_SCHEMA, schema.ID_STRING)
    rows = [rec("a1", 0, "SKU-0035789-XL", 1.0, "model", 1.0, D1), rec("a1", 1, "0035789", 0.5, "model", 1.0, D1),
            rec("b2", 0, "0035789", 1.0, "model", 1.0, D2), rec("c3", 0, "7", 1.0, "model", 1.0, D2)]
    io.write_partitioned(spark.createDataFrame(rows, strings), cfg.paths.resolve("recommendations"), schema.RUN_DATE)
    served = publish.run(spark, config(tmp_path, redis_url, "clean.id_types.product_id=string",
                                       "publish.run_date=2019-10-11"))["version"]
    store = reader(cfg)
    assert store.get("a1").items == ("SKU-0035789-XL", "0035789")  # zero-padded ids stay text

    # A task that loses a key: the count does not reconcile, nothing is switched.
    real = publish.write_lists
    monkeypatch.setattr(publish, "write_lists", lambda *a: real(*a) - 1)
    with pytest.raises(DataQualityError) as err:
        publish.run(spark, cfg)
    version = publish.describe(io.read_recommendations(spark, cfg.paths.resolve("recommendations"), schema.ID_STRING)
                               .where(f"run_date = '{D2}'"), "2019-10-12", cfg.paths.resolve("recommendations")).version
    assert str(err.value) == (f"publish: 1 user keys written for version {version} but "
                              f"{cfg.paths.resolve('recommendations')}/run_date=2019-10-12 holds 2 users: "
                              f"not switched, {served} stays current")
    assert store.current_version() == served and store.versions() == [served]
    assert store.get("a1").version == served and store.get("b2") is None
    store.close()


def test_an_unreachable_redis_is_one_line_naming_the_key(tmp_path):
    from tests.redis_server import free_port

    cfg = load_config(None, [f"serve.redis_url=redis://127.0.0.1:{free_port()}/0", "serve.publish_retries=0"])
    with pytest.raises(InputError, match=r"^cannot reach Redis at redis://127\.0\.0\.1:\d+/0 \(config key "
                                         r"serve\.redis_url\): Error 111 connecting"):
        publish.open_store(cfg.serve)


def test_redis_gone_while_the_tasks_write_is_one_line_and_switches_nothing(spark, tmp_path, monkeypatch):
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        cfg = config(tmp_path, server.url, "serve.publish_retries=0")
        io.write_partitioned(spark.createDataFrame(ROWS, schema.RECOMMENDATION_SCHEMA),
                             cfg.paths.resolve("recommendations"), schema.RUN_DATE)
        real = publish.write_lists

        def redis_dies_first(*args):
            server.stop()
            return real(*args)

        monkeypatch.setattr(publish, "write_lists", redis_dies_first)
        with pytest.raises(InputError) as err:
            publish.run(spark, cfg)
        assert str(err.value).startswith("publish: writing version 2019-10-12-7-")
        assert str(err.value).endswith(f"to Redis at {server.url} failed (config key serve.redis_url): "
                                       f"redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:"
                                       f"{server.port}. Connection refused; not switched, no version stays current")


NO_SPARK = ("import sys, recsys_spark.spark as s\n"
            "def refuse(*a, **k): raise SystemExit('Spark was started')\n"
            "s.get_session = refuse\n"
            "from recsys_spark.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")


def test_recsys_publish_rollback_runs_without_spark_and_errors_in_one_line(tmp_path, redis_url):
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.serving.test_store import publish as put

    cfg = config(tmp_path, redis_url)
    store = RecommendationStore(connect(cfg.serve, for_publish=True), "recsys")
    put(store, "2019-10-11-6-aaa", ["a"], tag=1)
    put(store, "2019-10-12-7-bbb", ["a"], tag=2)

    def rollback():
        return subprocess.run([sys.executable, "-c", NO_SPARK, "publish", "--rollback", f"paths.root={tmp_path}",
                               f"serve.redis_url={redis_url}"], capture_output=True, text=True, cwd=REPO, timeout=120)

    out = rollback()
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"  rolled_back: {redis_url} recsys:current 2019-10-12-7-bbb -> 2019-10-11-6-aaa\n" in out.stdout
    assert store.current_version() == "2019-10-11-6-aaa"
    out = rollback()
    assert out.returncode == 2
    assert out.stderr.strip() == ("recsys publish: error: cannot roll back recsys:current: no version "
                                  "before 2019-10-11-6-aaa (published versions: 2019-10-11-6-aaa)")
    store.close()
