"""Logged feedback: the contract's checks against the served recommendations, the quarantine and
its reasons, the reconciliation, per-window re-runs, and the per-item counts that featurize
writes and score reads, on a few inline rows with hand-computed expectations."""

from __future__ import annotations

import datetime as dt
import json
import math

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import io, product_ids
from recsys_spark import schema
from recsys_spark.config import load_config
from recsys_spark.errors import DataQualityError, InputError
from recsys_spark.etl import clean, feedback
from recsys_spark.etl.reconciliation import Outcome, build_report
from recsys_spark.features import featurize
from recsys_spark.features import feedback as feedback_features
from recsys_spark.scoring import score

from tests.etl.test_clean import KEY_ENV, overrides as clean_overrides, write_raw
from tests.features.test_featurize import LOOSE_QUALITY, write_toy

pytestmark = pytest.mark.unit

D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
# The input as a shop may write it: every column may hold a null (clean quarantines them).
LOGGED = T.StructType([T.StructField(f.name, f.dataType, True) for f in schema.FEEDBACK_SCHEMA.fields])
ZERO = {code: 0 for code in schema.FEEDBACK_REASON_CODES}


def rec(user, slot, item, propensity, run_date):
    """One served row of RECOMMENDATION_SCHEMA."""
    return (user, slot + 1, slot, item, 1.0, "model", propensity, "epsilon", "7:abc", "two_tower", "7", run_date)


SERVED = [
    rec("u1", 0, 10, 1.0, D1), rec("u1", 1, 11, 0.25, D1), rec("u2", 0, 10, 0.5, D1),
    rec("u1", 0, 12, 1.0, D2), rec("u2", 0, 11, 0.8, D2),
]


def fb(user, item, run_date, slot, propensity, clicked=False, hour=10, purchased=None):
    """One logged exposure of LOGGED."""
    shown = dt.datetime(run_date.year, run_date.month, run_date.day, hour) if run_date else None
    return (user, item, run_date, slot, propensity, "epsilon", "7:abc", shown, clicked, purchased)


# (row, its fate): None = kept.
LOG = [
    (fb("u1", 10, D1, 0, 1.0, clicked=True), None),
    (fb("u1", 11, D1, 1, 0.25 * (1 + 1e-12)), None),  # within 1e-9 of the served 0.25
    (fb("u2", 10, D1, 0, 0.5, clicked=True, hour=10), None),  # the earlier of two copies is kept
    (fb("u2", 10, D1, 0, 0.5, clicked=False, hour=11), schema.FEEDBACK_DUPLICATE),
    (fb(None, 10, D1, 0, 1.0), schema.REASON_NULL_USER),
    (fb("u1", None, D1, 0, 1.0), schema.FEEDBACK_NULL_ITEM),
    (fb("u1", 10, None, 0, 1.0), schema.FEEDBACK_NULL_RUN_DATE),
    (fb("u1", 10, D1, None, 1.0), schema.FEEDBACK_NULL_SLOT),
    (fb("u1", 10, D1, -1, 1.0), schema.FEEDBACK_NEGATIVE_SLOT),
    (fb("u1", 10, D1, 0, None), schema.FEEDBACK_NULL_PROPENSITY),
    (fb("u1", 10, D1, 0, math.nan), schema.FEEDBACK_NULL_PROPENSITY),
    (fb("u1", 10, D1, 0, 0.0), schema.FEEDBACK_NONPOSITIVE_PROPENSITY),
    (fb("u1", 10, D1, 0, -0.1), schema.FEEDBACK_NONPOSITIVE_PROPENSITY),
    (fb("u1", 10, D1, 0, 1.5), schema.FEEDBACK_PROPENSITY_ABOVE_ONE),
    (fb("u1", 10, D1, 0, 1.0, clicked=None), schema.FEEDBACK_NULL_CLICKED),
    (fb("u1", 99, D1, 0, 1.0), schema.FEEDBACK_UNKNOWN_EXPOSURE),  # u1 got 10 in slot 0
    (fb("u3", 10, D3, 0, 1.0), schema.FEEDBACK_UNKNOWN_EXPOSURE),  # no recommendations of D3 at all
    (fb("u2", 11, D2, 0, 0.7), schema.FEEDBACK_PROPENSITY_DIFFERS),  # served 0.8
    (fb("u2", 11, D2, 0, 0.8 * (1 + 5e-10), clicked=True), None),  # within 1e-9: valid, so no duplicate
    (fb("u1", 12, D2, 0, 1.0, purchased=True), None),
]


def cfg_at(root, *more):
    return load_config(None, [f"paths.root={root}", "spark.shuffle_partitions=2", *more])


def write_served(spark, cfg, rows=SERVED):
    frame = spark.createDataFrame(rows, schema.RECOMMENDATION_SCHEMA)
    io.write_partitioned(frame, cfg.paths.resolve("recommendations"), schema.RUN_DATE)


def write_log(spark, cfg, rows, by_date=False):
    """The shop's Parquet: one folder, or one folder per run_date (``by_date``)."""
    writer = spark.createDataFrame(rows, LOGGED).write.mode("overwrite")
    (writer.partitionBy(schema.RUN_DATE) if by_date else writer).parquet(cfg.paths.resolve("feedback"))


def expected_quarantined(fates):
    counts = dict(ZERO)
    for fate in fates:
        if fate is not None:
            counts[fate] += 1
    return counts


def kept_rows(spark, cfg):
    df = io.read_clean_feedback(spark, cfg.paths.resolve("clean_feedback"))
    return sorted((r[schema.USER_ID], r[schema.ITEM_ID], str(r[schema.RUN_DATE]), r[schema.SLOT], r[schema.CLICKED])
                  for r in df.collect())


def quarantine_rows(spark, cfg):
    df = spark.read.schema(schema.FEEDBACK_QUARANTINE_SCHEMA).parquet(cfg.paths.resolve("feedback_quarantine"))
    return [(r[schema.REASON], str(r[schema.RUN_DATE]), json.loads(r[schema.RAW_RECORD])) for r in df.collect()]


def test_every_reason_is_given_and_the_counts_reconcile(spark, tmp_path):
    cfg = cfg_at(tmp_path)
    write_served(spark, cfg)
    write_log(spark, cfg, [row for row, _ in LOG])
    summary = feedback.clean_feedback(spark, cfg)

    quarantined = expected_quarantined(fate for _, fate in LOG)
    assert sum(quarantined.values()) == 15 and all(quarantined.values())  # every reason at least once
    assert summary["found"] is True
    assert (summary["rows_read"], summary["rows_kept"], summary["quarantined"]) == (20, 5, quarantined)
    assert summary["dates"] == ["2024-03-01", "2024-03-02", "2024-03-03"]  # D3: quarantined rows only
    assert kept_rows(spark, cfg) == [
        ("u1", 10, "2024-03-01", 0, True), ("u1", 11, "2024-03-01", 1, False), ("u1", 12, "2024-03-02", 0, False),
        ("u2", 10, "2024-03-01", 0, True), ("u2", 11, "2024-03-02", 0, True)]
    clean_feedback = io.read_clean_feedback(spark, cfg.paths.resolve("clean_feedback"))
    assert clean_feedback.schema.simpleString() == schema.CLEAN_FEEDBACK_SCHEMA.simpleString()
    [bought] = clean_feedback.where("item_id = 12").collect()
    assert (bought[schema.PURCHASED], bought[schema.PROPENSITY], bought[schema.SHOWN_AT]) == (
        True, 1.0, dt.datetime(2024, 3, 2, 10))

    records = quarantine_rows(spark, cfg)
    assert sorted(reason for reason, _, _ in records) == sorted(fate for _, fate in LOG if fate)
    by_reason = {reason: (day, record) for reason, day, record in records}
    # The run_date-less row sits in the null partition; the NaN is kept as read.
    assert by_reason[schema.FEEDBACK_NULL_RUN_DATE][0] == "None"
    nan = [record for reason, _, record in records if reason == schema.FEEDBACK_NULL_PROPENSITY
           and record[schema.PROPENSITY] is not None]
    assert [r[schema.PROPENSITY] for r in nan] == ["NaN"]
    day, duplicate = by_reason[schema.FEEDBACK_DUPLICATE]
    assert (day, duplicate[schema.USER_ID], duplicate[schema.CLICKED], duplicate[schema.SHOWN_AT][:19]) == (
        "2024-03-01", "u2", False, "2024-03-01T11:00:00")
    assert by_reason[schema.FEEDBACK_PROPENSITY_DIFFERS][1][schema.PROPENSITY] == 0.7


def test_a_rerun_of_a_window_replaces_its_dates_and_leaves_the_others(spark, tmp_path):
    cfg = cfg_at(tmp_path)
    write_served(spark, cfg)
    rows = [row for row, _ in LOG]
    write_log(spark, cfg, rows, by_date=True)  # the shop's layout: run_date=... folders
    first = feedback.clean_feedback(spark, cfg)
    assert (first["rows_read"], first["rows_kept"]) == (20, 5)
    out = tmp_path / "clean_feedback"
    d1_files = {p: p.stat().st_mtime_ns for p in (out / "run_date=2024-03-01").iterdir()}

    # 2 March again, with one row more (u1 shown 12 twice: a duplicate): 2 March is replaced,
    # nothing doubles, 1 and 3 March are untouched.
    window = ["clean.start_date=2024-03-02", "clean.end_date=2024-03-02"]
    write_log(spark, cfg, [*rows, fb("u1", 12, D2, 0, 1.0, hour=12)], by_date=True)
    again = feedback.clean_feedback(spark, cfg_at(tmp_path, *window))
    # Read: the 2 March rows (3 + 1) and the run_date-less one, which belongs to every window.
    assert (again["rows_read"], again["rows_kept"], again["dates"]) == (5, 2, ["2024-03-02"])
    assert again["quarantined"] == {**ZERO, schema.FEEDBACK_PROPENSITY_DIFFERS: 1, schema.FEEDBACK_DUPLICATE: 1,
                                    schema.FEEDBACK_NULL_RUN_DATE: 1}
    assert {p: p.stat().st_mtime_ns for p in (out / "run_date=2024-03-01").iterdir()} == d1_files
    assert kept_rows(spark, cfg) == [
        ("u1", 10, "2024-03-01", 0, True), ("u1", 11, "2024-03-01", 1, False), ("u1", 12, "2024-03-02", 0, False),
        ("u2", 10, "2024-03-01", 0, True), ("u2", 11, "2024-03-02", 0, True)]
    reasons = sorted((day, reason) for reason, day, _ in quarantine_rows(spark, cfg))
    assert reasons == sorted(
        [(str(row[2]), fate) for row, fate in LOG if fate and row[2] != D2]
        + [("2024-03-02", schema.FEEDBACK_PROPENSITY_DIFFERS), ("2024-03-02", schema.FEEDBACK_DUPLICATE)])
    assert not (out / "_staging").exists() and not (out / "_trash").exists()

    # The same window once more, unchanged: the same tables.
    before = (kept_rows(spark, cfg), sorted(map(str, quarantine_rows(spark, cfg))))
    feedback.clean_feedback(spark, cfg_at(tmp_path, *window))
    assert (kept_rows(spark, cfg), sorted(map(str, quarantine_rows(spark, cfg)))) == before


def test_a_missing_column_fails_in_one_line_naming_it_and_the_path(spark, tmp_path):
    cfg = cfg_at(tmp_path)
    write_served(spark, cfg)
    path = cfg.paths.resolve("feedback")
    spark.createDataFrame([row for row, _ in LOG[:3]], LOGGED).drop(schema.CLICKED).write.parquet(path)
    with pytest.raises(InputError, match=rf"^{path} lacks column\(s\) clicked \(config key paths.feedback\)$"):
        feedback.clean_feedback(spark, cfg)
    assert not (tmp_path / "clean_feedback").exists()


def test_values_of_another_type_convert_or_are_quarantined_as_read(spark, tmp_path):
    cfg = cfg_at(tmp_path)
    write_served(spark, cfg)
    text = T.StructType([T.StructField(f.name, T.StringType() if f.name == schema.RUN_DATE else f.dataType, True)
                         for f in LOGGED.fields])
    rows = [(*fb("u1", 10, D1, 0, 1.0, clicked=True)[:2], "2024-03-01", *fb("u1", 10, D1, 0, 1.0)[3:]),
            (*fb("u1", 11, D1, 1, 0.25)[:2], "1 March", *fb("u1", 11, D1, 1, 0.25)[3:])]
    spark.createDataFrame(rows, text).write.parquet(cfg.paths.resolve("feedback"))
    summary = feedback.clean_feedback(spark, cfg)
    assert (summary["rows_read"], summary["rows_kept"]) == (2, 1)
    [(reason, day, record)] = quarantine_rows(spark, cfg)
    assert (reason, day, record[schema.RUN_DATE]) == (schema.FEEDBACK_NULL_RUN_DATE, "None", "1 March")

    spark.createDataFrame([(True,)], "run_date boolean").crossJoin(
        spark.createDataFrame(rows, text).drop(schema.RUN_DATE)).write.mode("overwrite").parquet(
        cfg.paths.resolve("feedback"))
    with pytest.raises(InputError, match=r"column run_date is boolean, which does not convert to date "
                                         r"\(config key paths.feedback\)$"):
        feedback.clean_feedback(spark, cfg)


def test_absent_or_empty_feedback_is_skipped_with_zero_counts(spark, tmp_path):
    cfg = cfg_at(tmp_path)
    absent = feedback.clean_feedback(spark, cfg)
    assert (absent["found"], absent["rows_read"], absent["rows_kept"], absent["quarantined"], absent["dates"]) == (
        False, 0, 0, ZERO, [])
    (tmp_path / "feedback" / "_SUCCESS").parent.mkdir(parents=True)
    (tmp_path / "feedback" / "_SUCCESS").write_text("")  # a folder without a data file
    assert feedback.clean_feedback(spark, cfg) == absent
    assert not (tmp_path / "clean_feedback").exists() and not (tmp_path / "feedback_quarantine").exists()
    assert feedback.feedback_metrics(absent) == {"clean.feedback.rows_read": 0, "clean.feedback.rows_kept": 0,
                                                 **{f"clean.feedback.quarantined.{c}": 0 for c in ZERO}}


def test_without_recommendations_every_exposure_is_unknown(spark, tmp_path):
    cfg = cfg_at(tmp_path)
    write_log(spark, cfg, [LOG[0][0], LOG[1][0]])
    summary = feedback.clean_feedback(spark, cfg)
    assert (summary["rows_read"], summary["rows_kept"], summary["quarantined"]) == (
        2, 0, {**ZERO, schema.FEEDBACK_UNKNOWN_EXPOSURE: 2})


def listed(user, item, run_date, slot, propensity, answered_by="realtime"):
    """One row of a real-time or fallback list the service recorded (SERVED_LIST_SCHEMA)."""
    return (user, item, slot, propensity, "epsilon", "7:abc", 0.5, "model", "7", answered_by,
            dt.datetime(run_date.year, run_date.month, run_date.day, 9), run_date)


def test_an_exposure_matches_any_served_row_of_its_key_batch_or_service(spark):
    recommendations = spark.createDataFrame([rec("u1", 0, 10, 0.5, D1), rec("u2", 0, 10, 0.5, D1)],
                                            schema.RECOMMENDATION_SCHEMA)
    lists = spark.createDataFrame([listed("u1", 10, D1, 0, 1.0),  # the same key as the batch's, another propensity
                                   listed("u3", 20, D1, 0, 1.0, "fallback"), listed("u3", 21, D1, 1, 0.25, "fallback")],
                                  schema.SERVED_LIST_SCHEMA)
    served = feedback.served_exposures(recommendations, lists)
    assert sorted((r[schema.USER_ID], r[schema.ITEM_ID], r[schema.SLOT], r["_served_propensities"],
                   r[feedback.SERVED_PROPENSITY]) for r in served.collect()) == [
        ("u1", 10, 0, [0.5, 1.0], 0.5), ("u2", 10, 0, [0.5], 0.5), ("u3", 20, 0, [1.0], 1.0),
        ("u3", 21, 1, [0.25], 0.25)]
    log = [
        (fb("u1", 10, D1, 0, 0.5), None),  # the batch's propensity
        (fb("u4", 10, D1, 0, 0.5), schema.FEEDBACK_UNKNOWN_EXPOSURE),  # served to nobody
        (fb("u2", 10, D1, 0, 1.0), schema.FEEDBACK_PROPENSITY_DIFFERS),  # u2's key has 0.5 only
        (fb("u3", 20, D1, 0, 1.0, clicked=True), None),  # a fallback list's row
        (fb("u3", 21, D1, 1, 0.25 * (1 + 1e-12)), None),  # within 1e-9 of the served 0.25
        (fb("u3", 21, D1, 1, 0.5, hour=11), schema.FEEDBACK_PROPENSITY_DIFFERS),
        (fb("u3", 99, D1, 2, 1.0), schema.FEEDBACK_UNKNOWN_EXPOSURE),  # forged: never served
        (fb("u1", 10, D1, 0, 0.75, hour=11), schema.FEEDBACK_PROPENSITY_DIFFERS),  # neither 0.5 nor 1.0
        (fb("u1", 10, D1, 0, 1.0, hour=12), schema.FEEDBACK_DUPLICATE),  # the real-time one: valid, a second copy
    ]
    logged = spark.createDataFrame([row for row, _ in log], LOGGED).withColumn(schema.SOURCE_FILE, F.lit("f"))
    flagged = feedback.flag_feedback(logged, served)
    got = sorted((r[schema.USER_ID], r[schema.ITEM_ID], r[schema.SLOT], r[schema.PROPENSITY], r[schema.REASON])
                 for r in flagged.collect())
    assert got == sorted((row[0], row[1], row[3], row[4], fate) for row, fate in log)
    assert "_served_propensities" not in flagged.columns
    # Without the service's lists, the batch's rows alone: the fallback's exposures are unknown again.
    alone = feedback.flag_feedback(logged, feedback.served_exposures(recommendations))
    assert sorted(r[schema.REASON] or "kept" for r in alone.where("user_id = 'u3'").collect()) == [
        schema.FEEDBACK_UNKNOWN_EXPOSURE] * 4


def write_served_lists(spark, cfg, rows):
    """The service's recorded lists, where serving/exposures.py writes them under paths.feedback."""
    frame = spark.createDataFrame(rows, schema.SERVED_LIST_SCHEMA)
    io.write_partitioned(frame, io.served_lists_path(cfg.paths.resolve("feedback")), schema.RUN_DATE)


def test_clean_keeps_the_exposures_of_the_services_recorded_lists(spark, tmp_path):
    cfg = cfg_at(tmp_path)
    write_served(spark, cfg)
    # LOG, plus two exposures of a real-time list for u1 on D1 (slot 1 at another propensity
    # than the cached list's 0.25) and one with a propensity no list served.
    extra = [(fb("u1", 11, D1, 1, 0.5, hour=12), schema.FEEDBACK_DUPLICATE),  # valid, u1's slot 1 kept at 0.25
             (fb("u4", 30, D2, 0, 1.0), None),
             (fb("u4", 31, D2, 1, 0.3), schema.FEEDBACK_PROPENSITY_DIFFERS)]
    write_log(spark, cfg, [row for row, _ in LOG + extra])
    write_served_lists(spark, cfg, [listed("u1", 11, D1, 1, 0.5), listed("u3", 10, D3, 0, 1.0, "fallback"),
                                    listed("u4", 30, D2, 0, 1.0), listed("u4", 31, D2, 1, 0.2)])
    assert io.read_feedback(spark, cfg.paths.resolve("feedback")).count() == len(LOG) + 3  # the lists stay hidden
    summary = feedback.clean_feedback(spark, cfg)

    # LOG's u3 exposure of D3 is a recorded fallback list's now: kept, no longer unknown.
    fates = [None if row[0] == "u3" else fate for row, fate in LOG + extra]
    quarantined = expected_quarantined(fates)
    assert quarantined[schema.FEEDBACK_UNKNOWN_EXPOSURE] == 1  # u1's forged item 99 still is
    assert (summary["rows_read"], summary["rows_kept"], summary["quarantined"]) == (23, 7, quarantined)
    assert summary["rows_read"] == summary["rows_kept"] + sum(summary["quarantined"].values())
    assert kept_rows(spark, cfg) == [
        ("u1", 10, "2024-03-01", 0, True), ("u1", 11, "2024-03-01", 1, False), ("u1", 12, "2024-03-02", 0, False),
        ("u2", 10, "2024-03-01", 0, True), ("u2", 11, "2024-03-02", 0, True), ("u3", 10, "2024-03-03", 0, False),
        ("u4", 30, "2024-03-02", 0, False)]


def test_reconciliation_names_every_term():
    outcome = feedback.FeedbackOutcome(rows_read=5, rows_kept=2, quarantined={**ZERO, schema.FEEDBACK_DUPLICATE: 2})
    with pytest.raises(DataQualityError, match=r"^clean feedback does not reconcile: read 5 != kept 2 \+ quarantined 2 "
                                               r"\{.*'duplicate_exposure': 2\} \(off by 1\)$"):
        outcome.check()
    feedback.FeedbackOutcome(rows_read=4, rows_kept=2, quarantined={**ZERO, schema.FEEDBACK_DUPLICATE: 2}).check()


def clean_feedback_rows(spark, rows):
    """rows: (item, run_date, clicked) of distinct exposures -> CLEAN_FEEDBACK_SCHEMA."""
    full = [(f"u{i}", item, 0, 1.0, "epsilon", "7:abc", None, clicked, None, day)
            for i, (item, day, clicked) in enumerate(rows)]
    return spark.createDataFrame(full, schema.CLEAN_FEEDBACK_SCHEMA)


def test_counts_per_item_take_the_run_dates_before_the_cutoff_only(spark, tmp_path):
    rows = [(10, D1, True), (10, D1, False), (10, D2, True), (11, D2, False), (11, D3, True), (12, D3, True)]
    # Before D3: item 10 three exposures, two clicks; 11 one exposure, no click; 12 none.
    counts = feedback_features.count_feedback(clean_feedback_rows(spark, rows), D3)
    assert counts.schema.simpleString() == schema.FEEDBACK_COUNTS_SCHEMA.simpleString()
    assert sorted(tuple(r) for r in counts.collect()) == [(10, 3, 2), (11, 1, 0)]

    cfg = cfg_at(tmp_path)
    empty = feedback_features.feedback_counts(spark, cfg, dt.datetime(2024, 3, 3, tzinfo=dt.timezone.utc))
    assert empty.count() == 0 and empty.schema.simpleString() == schema.FEEDBACK_COUNTS_SCHEMA.simpleString()
    io.write_partitioned(clean_feedback_rows(spark, rows), cfg.paths.resolve("clean_feedback"), schema.RUN_DATE)
    # The serve snapshot is a midnight: D3's exposures are not before it, D2's are.
    at_d3 = feedback_features.feedback_counts(spark, cfg, dt.datetime(2024, 3, 3, tzinfo=dt.timezone.utc))
    assert [tuple(r) for r in at_d3.collect()] == [(10, 3, 2), (11, 1, 0)]
    # A cutoff inside a day leaves that day out (its exposures are not all before it).
    inside = feedback_features.feedback_counts(spark, cfg, dt.datetime(2024, 3, 3, 12, tzinfo=dt.timezone.utc))
    assert [tuple(r) for r in inside.collect()] == [(10, 3, 2), (11, 1, 0)]


def test_score_reads_the_counts_as_featurize_writes_them(spark, tmp_path):
    assert score.FEEDBACK_COUNTS == (schema.EXPOSURES, schema.CLICKS)  # score's names are the contract's
    cfg = load_config(None, [f"paths.root={tmp_path}", "evaluate.protocol=leave_last_out", "featurize.max_seq_len=3",
                             "featurize.min_item_count=1", "featurize.train_files=2", "featurize.row_group_mb=1",
                             "featurize.min_eval_users=1", *LOOSE_QUALITY])
    write_toy(spark, cfg)  # events 2024-01-01..04: the serve snapshot is 2024-01-05 00:00
    jan = [dt.date(2024, 1, d) for d in (3, 4, 5)]
    rows = [(100, jan[0], True), (100, jan[1], False), (200, jan[1], True), (300, jan[2], True)]
    io.write_partitioned(clean_feedback_rows(spark, rows), cfg.paths.resolve("clean_feedback"), schema.RUN_DATE)
    summary = featurize.run(spark, cfg)

    path = summary["feedback_counts"]
    assert path == io.feature_path(cfg.paths.resolve("features"), "feedback_counts")
    table = io.read_features(spark, cfg.paths.resolve("features"), "feedback_counts")
    assert table.schema.simpleString() == schema.FEEDBACK_COUNTS_SCHEMA.simpleString()
    # 300's exposure of 01-05 is not before the serve snapshot.
    read = score.read_feedback_counts(spark, path).sort_values(schema.PRODUCT_ID)
    assert read.columns.tolist() == [schema.PRODUCT_ID, *score.FEEDBACK_COUNTS]
    assert read.values.tolist() == [[100, 2, 1], [200, 1, 1]]

    # Without clean feedback the table is empty, and as readable.
    empty = tmp_path / "empty"
    io.write_table(feedback_features.feedback_counts(spark, cfg_at(empty), dt.date(2024, 1, 5)), str(empty / "counts"))
    assert score.read_feedback_counts(spark, str(empty / "counts")).values.tolist() == []


@pytest.mark.e2e
def test_clean_reports_the_feedback_of_its_run(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    write_raw(root)
    cfg = load_config(None, clean_overrides(root, "clean.max_rejected_share=0.5"))  # 5 of test_clean's 52 rows
    write_served(spark, cfg)
    write_log(spark, cfg, [row for row, _ in LOG])
    summary = clean.run(spark, cfg)
    assert summary["rows_kept"] == 5  # the events, as test_clean has them
    fed_back = summary["feedback"]
    assert (fed_back["rows_read"], fed_back["rows_kept"], fed_back["quarantined"]) == (
        20, 5, expected_quarantined(fate for _, fate in LOG))
    assert json.loads((root / "reports" / clean.REPORT_FILE).read_text())["feedback"] == fed_back


def test_string_product_ids_stay_strings_through_the_contract_and_the_counts(spark, tmp_path):
    cfg = cfg_at(tmp_path, "clean.id_types.product_id=string")
    strings = schema.with_product_ids(schema.RECOMMENDATION_SCHEMA, schema.ID_STRING)
    served = [rec("u1", 0, "SKU-0035789-XL", 1.0, D1), rec("u1", 1, "0035789", 0.5, D1)]
    io.write_partitioned(spark.createDataFrame(served, strings), cfg.paths.resolve("recommendations"), schema.RUN_DATE)
    logged = T.StructType([T.StructField(f.name, f.dataType, True)
                           for f in schema.with_product_ids(schema.FEEDBACK_SCHEMA, schema.ID_STRING).fields])
    rows = [fb("u1", "SKU-0035789-XL", D1, 0, 1.0, clicked=True), fb("u1", "0035789", D1, 1, 0.5),
            fb("u1", "35789", D1, 1, 0.5)]  # not what was served: the zeros count
    spark.createDataFrame(rows, logged).write.parquet(cfg.paths.resolve("feedback"))
    report = feedback.clean_feedback(spark, cfg)
    assert report["rows_kept"] == 2 and report["quarantined"][schema.FEEDBACK_UNKNOWN_EXPOSURE] == 1
    kept = io.read_clean_feedback(spark, cfg.paths.resolve("clean_feedback"), schema.ID_STRING)
    assert sorted(r[schema.ITEM_ID] for r in kept.collect()) == ["0035789", "SKU-0035789-XL"]

    counts = feedback_features.feedback_counts(spark, cfg, D2)
    assert counts.schema[schema.PRODUCT_ID].dataType == T.StringType()
    assert sorted(tuple(r) for r in counts.collect()) == [("0035789", 1, 0), ("SKU-0035789-XL", 1, 1)]
    # Score reads them back as the keys clean gave the products.
    path = str(tmp_path / "counts")
    io.write_table(counts, path)
    read = score.read_feedback_counts(spark, path, schema.ID_STRING)
    keys = spark.createDataFrame([("0035789",), ("SKU-0035789-XL",)], "t string").select(
        product_ids.product_key(F.col("t"))).toPandas().iloc[:, 0].tolist()
    assert sorted(read.values.tolist()) == sorted([[keys[0], 1, 0], [keys[1], 1, 1]])


def test_feedback_that_keeps_no_row_warns_in_the_report_and_the_clean_report():
    counts = {code: 0 for code in schema.FEEDBACK_REASON_CODES}
    none_kept = feedback.FeedbackOutcome(3, 0, {**counts, schema.FEEDBACK_UNKNOWN_EXPOSURE: 2,
                                                schema.FEEDBACK_NULL_CLICKED: 1})
    report = feedback.feedback_report(none_kept, True, ["2019-10-05"])
    assert report["warning"] == ("none of the 3 feedback rows was kept (most: 2 unknown_exposure; "
                                 "see paths.feedback_quarantine)")
    some_kept = feedback.FeedbackOutcome(3, 1, {**counts, schema.FEEDBACK_UNKNOWN_EXPOSURE: 2})
    assert "warning" not in feedback.feedback_report(some_kept, True, ["2019-10-05"])
    assert "warning" not in feedback.feedback_report(feedback.FeedbackOutcome(), False, [])
    # clean's report carries it on (its summary, the clean.warning tag).
    assert build_report(Outcome(10, 10, 0), [], "c", "q", {"warning": ""}, report)["warning"] == report["warning"]
