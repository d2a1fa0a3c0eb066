"""The service against the stages it serves: one Spark run of score and publish over hand-made clean
events and features, with the tiny model registered as the champion, then:

- a session posted with a user's whole clean history gets, in real time, the list the score stage
  wrote for them (items, slots, sources, scores, propensities), exploration included;
- the cached answer is the score stage's Parquet;
- the exposures the service writes come back through clean's feedback path, read = kept +
  quarantined: the cached, real-time and fallback lists' rows kept (the latter two recorded under
  paths.feedback/_served_lists), a forged item or propensity quarantined.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from recsys_spark import io, schema
from recsys_spark.config import from_dict
from recsys_spark.etl.pseudonym import pseudonym_key
from recsys_spark.features.sequences import add_gap_buckets, collapse_steps, encode_items, history_rows
from recsys_spark.scoring import score
from recsys_spark.serving import ids, publish
from recsys_spark.serving.app import create_app
from recsys_spark.serving.realtime import load_context
from recsys_spark.serving.service import build_service

from tests.scoring.test_score import register, write_clean
from tests.scoring.tiny import CATEGORY, MAX_SEQ_LEN, event_rows, tiny_bundle

pytestmark = pytest.mark.e2e

DAY = "2019-11-01"
K = 5
T0 = dt.datetime(2019, 10, 25, 8, tzinfo=dt.timezone.utc)

# Raw user id -> (event type, product, seconds after T0): runs on one product collapse into a
# step, gaps span several buckets, purchases are excluded, 2000 and 3001 are outside the model's
# vocabulary (out-of-vocabulary steps), more steps than the model's MAX_SEQ_LEN.
SESSIONS = {
    101: [("view", 1002, 0), ("cart", 1002, 5), ("view", 1003, 70), ("purchase", 1005, 4000), ("view", 1006, 90_000),
          ("view", 2000, 90_050), ("remove_from_cart", 1007, 200_000), ("view", 1008, 200_001)],
    102: [("view", 1009, 0), ("view", 1009, 1), ("view", 1004, 3), ("purchase", 1004, 3)],
    103: [("view", 1003, 10), ("view", 1002, 10), ("view", 1003, 10), ("cart", 1006, 30_000)],
    104: [("view", 2000, 0), ("view", 3001, 60)],  # nothing the model knows: the fallback, category 88 first
    105: [("view", 1007, 500_000)],
}


def clean_rows(key: bytes) -> list[tuple]:
    rows = list(event_rows())
    for raw, events in SESSIONS.items():
        user = ids.pseudonym(raw, key)
        for kind, product, seconds in events:
            at = T0 + dt.timedelta(seconds=seconds, microseconds=raw)
            rows.append((at, kind, product, CATEGORY.get(product), None, None, 10.0, user, f"{user}-s", at.date()))
    return rows


@pytest.fixture(scope="module")
def pipeline(spark, redis_server, tmp_path_factory):
    """Clean events, features (built by featurize's own transforms), the tiny model @champion,
    then score and publish for DAY: a config, the service over it, and the written lists."""
    root = tmp_path_factory.mktemp("serve") / "work"
    redis_server.start()
    redis_server.flush()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        cfg = from_dict({
            "paths": {"root": str(root)},
            "score": {"top_k": K, "block_size": 2, "run_date": DAY, "explore_share": 0.3},
            "serve": {"redis_url": redis_server.url, "feedback_batch_rows": 7, "feedback_flush_seconds": 0.2},
        })
        key = pseudonym_key(cfg.clean.pseudonym_key_env, cfg.clean.allow_dev_key)
        bundle = tiny_bundle(seed=3)
        write_clean(spark, cfg.paths.resolve("clean"), clean_rows(key))
        features = cfg.paths.resolve("features")
        vocab = spark.createDataFrame(bundle.item_vocab, schema.ITEM_VOCAB_SCHEMA)
        steps = encode_items(add_gap_buckets(collapse_steps(io.read_clean(spark, cfg.paths.resolve("clean")))), vocab)
        io.write_table(schema.conform(history_rows(steps, None, MAX_SEQ_LEN), schema.USER_HISTORY_SCHEMA),
                       io.feature_path(features, "user_history"))
        io.write_table(vocab, io.feature_path(features, "item_vocab"))
        io.write_json(None, io.feature_path(features, schema.FEATURE_METADATA), {"max_seq_len": MAX_SEQ_LEN})
        register(cfg, bundle, "champion")
        scored = score.run(spark, cfg)
        published = publish.run(spark, cfg)
        context = load_context(spark, cfg)
        service = build_service(cfg, context)
        recs = pq.read_table(cfg.paths.resolve("recommendations")).to_pandas()
        yield cfg, key, service, recs, (scored, published)
        service.close()


def listed(recs: pd.DataFrame, user: str) -> pd.DataFrame:
    rows = recs[recs[schema.USER_ID] == user].sort_values(schema.SLOT)
    return rows[[schema.ITEM_ID, schema.SLOT, schema.SOURCE, schema.SCORE, schema.PROPENSITY]].reset_index(drop=True)


def answered(body: dict) -> pd.DataFrame:
    frame = pd.DataFrame(body["items"])[["item_id", "slot", "source", "score", "propensity"]]
    return frame.astype({"item_id": np.int64, "slot": np.int32, "score": np.float32})


def test_a_posted_history_gets_the_score_stages_list_and_the_cache_serves_its_parquet(pipeline):
    cfg, key, service, recs, (scored, published) = pipeline
    assert scored["rows_propensity_below_1"] > 0 and published["users"] == recs[schema.USER_ID].nunique()
    client = TestClient(create_app(service))
    for raw, events in SESSIONS.items():
        user = ids.pseudonym(raw, key)
        posted = [{"product_id": product, "event_type": kind, "category_id": CATEGORY.get(product),
                   "event_time": (T0 + dt.timedelta(seconds=seconds, microseconds=raw)).isoformat()}
                  for kind, product, seconds in events]
        body = client.post("/v1/recommendations", json={"user_id": raw, "events": posted[::-1]}).json()
        expected = listed(recs, user)
        assert len(expected) == K
        assert body["answered_by"] == ("fallback" if raw == 104 else "realtime"), body
        assert (body["run_date"], body["model_version"]) == (DAY, scored["model_version"])
        assert body["policy_version"] == scored["policy_version"]
        pd.testing.assert_frame_equal(answered(body), expected, check_dtype=False, rtol=1e-6)

        cached = client.get(f"/v1/recommendations/{raw}").json()
        assert cached["answered_by"] == "cache" and cached["policy_version"] == scored["policy_version"]
        pd.testing.assert_frame_equal(answered(cached), expected, check_dtype=False, rtol=0)
    # Exploration was on: the lists compared carry propensities below 1, not only certain placements.
    assert (recs[recs[schema.USER_ID].isin([ids.pseudonym(u, key) for u in SESSIONS])][schema.PROPENSITY] < 1).any()


def test_the_exposures_come_back_through_cleans_feedback_path(pipeline, spark):
    from recsys_spark.etl.feedback import clean_feedback

    cfg, key, service, recs, _ = pipeline
    client = TestClient(create_app(service))
    assert client.get("/v1/recommendations/101", params={"k": 3}).json()["answered_by"] == "cache"
    new = client.get("/v1/recommendations/999").json()  # no such row was scored
    assert new["answered_by"] == "fallback" and len(new["items"]) == K
    posted = [{"product_id": 1009, "event_type": "view", "category_id": CATEGORY.get(1009),
               "event_time": T0.isoformat()}]
    realtime = client.post("/v1/recommendations", json={"user_id": 998, "events": posted}).json()
    assert realtime["answered_by"] == "realtime" and realtime["items"]
    counts = service.writer.close()
    assert counts.lost == 0 and counts.pending == 0
    # What a shop could forge beside them: an item the service never served the new user, and one
    # of its served items at another propensity.
    user, served = ids.pseudonym(999, key), new["items"][0]
    forged = [(user, 424242, 0, 1.0), (user, served["item_id"], served["slot"], served["propensity"] / 2)]
    shown = dt.datetime.now(dt.timezone.utc)
    table = pa.Table.from_pylist([dict(zip(schema.partition_arrow_schema(schema.FEEDBACK_SCHEMA).names, (
        u, item, slot, p, new["policy"], new["policy_version"], shown, False, None))) for u, item, slot, p in forged],
        schema=schema.partition_arrow_schema(schema.FEEDBACK_SCHEMA))
    pq.write_table(table, f"{cfg.paths.resolve('feedback')}/run_date={DAY}/part-forged.parquet")

    report = clean_feedback(spark, cfg)
    quarantined = report["quarantined"]
    assert report["rows_read"] == counts.written + 2 == report["rows_kept"] + sum(quarantined.values())
    # Every list served (cached, real-time, fallback) is a served row: only the forged rows are
    # quarantined, beside the second copies of an exposure (the first test served the same lists).
    assert quarantined[schema.FEEDBACK_UNKNOWN_EXPOSURE] == 1
    assert quarantined[schema.FEEDBACK_PROPENSITY_DIFFERS] == 1
    assert sum(quarantined.values()) == 2 + quarantined[schema.FEEDBACK_DUPLICATE]
    kept = spark.read.parquet(cfg.paths.resolve("clean_feedback")).toPandas()
    by_user = kept.groupby(schema.USER_ID).size()
    assert by_user[user] == K and by_user[ids.pseudonym(998, key)] == len(realtime["items"])  # fallback and real-time lists: kept
    assert by_user[ids.pseudonym(101, key)] >= 3
    lists = io.read_served_lists(spark, cfg.paths.resolve("feedback")).toPandas()
    assert set(lists[lists[schema.USER_ID] == user][schema.ANSWERED_BY]) == {"fallback"}
    assert set(lists[lists[schema.USER_ID] == ids.pseudonym(998, key)][schema.ANSWERED_BY]) == {"realtime"}


@pytest.mark.timeout(300)
def test_recsys_serve_answers_then_stops_on_sigterm_and_reports_its_exposures(pipeline, tmp_path):
    """The stage as a user starts it: Spark reads the context, uvicorn serves, SIGTERM stops it
    and the summary counts the exposures written and lost."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.redis_server import free_port

    cfg, key, service, recs, (scored, _) = pipeline
    port = free_port()
    feedback = tmp_path / "feedback"
    command = [sys.executable, "-m", "recsys_spark", "serve", f"paths.root={cfg.paths.root}",
               f"paths.feedback={feedback}", f"serve.redis_url={cfg.serve.redis_url}", f"serve.port={port}",
               f"score.top_k={K}", f"score.run_date={DAY}", "score.explore_share=0.3", "spark.show_progress=false",
               "spark.shuffle_partitions=2"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, process.communicate()[1][-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "recsys serve was not ready within 240 s"
            time.sleep(0.5)
        body = httpx.get(f"http://127.0.0.1:{port}/v1/recommendations/101").json()
        pd.testing.assert_frame_equal(answered(body), listed(recs, ids.pseudonym(101, key)), check_dtype=False, rtol=0)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-3000:]
    assert "== recsys serve: done" in out and "answers_cache: 1" in out, out
    assert f"exposures_written: {K}" in out and "exposures_lost: 0" in out, out
    assert len(pq.read_table(str(feedback)).to_pandas()) == K
