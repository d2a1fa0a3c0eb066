"""The clean stage end to end: reconciliation, quarantine without raw ids, per-date re-runs,
random mixes of good and bad rows (hypothesis), and a run killed with SIGKILL then run again."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from recsys_spark import io, product_ids
from recsys_spark import schema
from recsys_spark.config import load_config
from recsys_spark.errors import ConfigError, DataQualityError, InputError
from recsys_spark.etl import clean
from recsys_spark.etl.counts import observe
from recsys_spark.etl.reconciliation import Outcome, bot_report, check_bot_share, check_rejected_share, rejection_report
from recsys_spark.etl.rules import BehaviourRules, clean_events
from recsys_spark.etl.validate import Rules, parse_events, valid_events

from tests.etl.test_validate import WINDOW, raw_frame, raw_row

pytestmark = pytest.mark.unit

KEY_ENV = "RECSYS_TEST_CLEAN_KEY"
REPO = Path(__file__).resolve().parents[2]
HEADER = ",".join(schema.RAW_COLUMNS)
DAY1 = [
    "2019-10-01 10:00:00 UTC,view,100,7,electronics.phone,acme,9.99,541312140,s1",
    "2019-10-01 10:00:00 UTC,view,100,7,electronics.phone,acme,9.99,541312140,s1",  # duplicate
    "2019-10-01 10:00:01 UTC,view,100,7,electronics.phone,acme,9.99,541312140,s1",  # near-duplicate
    "2019-10-01 10:05:00 UTC,cart,100,7,electronics.phone,acme,9.99,541312140,s1",
    "2019-10-01 23:00:00 UTC,view,200,,,,,541312141,",  # no session: generated
    "2019-10-01 10:00:00 UTC,view,300,8,,brandx,1.5,541312140,s2,extra-field",  # malformed: too many
    "2019-10-01 10:01:00 UTC,view,300,8,,brandx,1.5,5413",  # malformed: cut short in the user id
    "2019-10-01 10:02:00 UTC,click,300,8,,brandx,1.5,541312140,s2",  # unknown event
    "2019-09-30 23:59:00 UTC,view,300,8,,brandx,1.5,541312140,s2",  # not the file's date
]
DAY2 = [
    "2019-10-02 09:00:00 UTC,purchase,100,7,electronics.phone,acme,9.99,541312140,s3",
    "2019-10-02 11:00:00 UTC,view,400,9,,,2.5,,s3",  # no user
    "2019-10-02 11:00:00 UTC,transaction,400,9,,,2.5,541312142,s4",  # an alias of purchase
] + [f"2019-10-02 12:00:{i:02d} UTC,view,{500 + i},9,,,2.5,541312143,bot" for i in range(40)]  # 40 per minute


def write_raw(root: Path, day1=DAY1, day2=DAY2) -> None:
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "events-2019-10-01.csv").write_text("\n".join([HEADER, *day1]) + "\n")
    (raw / "events-2019-10-02.csv").write_text("\n".join([HEADER, *day2]) + "\n")


def overrides(root: Path, *more: str) -> list[str]:
    return [f"paths.root={root}", f"clean.pseudonym_key_env={KEY_ENV}", "spark.shuffle_partitions=2", *more]


def pseudonym(raw_id: str, key: bytes = b"e2e-key") -> str:
    return hmac.new(key, raw_id.encode(), hashlib.sha256).hexdigest()[:16]


def table_rows(spark, path: str) -> list[tuple]:
    df = spark.read.parquet(path)
    return sorted(tuple(str(v) for v in r) for r in df.select(*sorted(df.columns)).collect())


@pytest.mark.e2e
def test_run_reconciles_hides_raw_ids_and_replaces_only_its_dates(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    write_raw(root)
    # 5 of 52 rows rejected: above the default clean.max_rejected_share (see the gate's tests below).
    summary = clean.run(spark, load_config(None, overrides(root, "clean.max_rejected_share=0.5")))

    rejected = {**{code: 0 for code in schema.REASON_CODES}, schema.REASON_MALFORMED: 2, schema.REASON_UNKNOWN_EVENT: 1,
                schema.REASON_OUT_OF_WINDOW: 1, schema.REASON_NULL_USER: 1}
    assert (summary["rows_read"], summary["rows_kept"], summary["duplicates"], summary["near_duplicates"],
            summary["bot_rows"]) == (52, 5, 1, 1, 40)
    assert summary["rejected"] == rejected and summary["dates"] == ["2019-10-01", "2019-10-02"]
    assert json.loads(Path(summary["report_path"]).read_text()) == {k: v for k, v in summary.items()
                                                                      if k != "report_path"}
    kept = io.read_clean(spark, summary["clean_path"]).collect()
    assert sorted((r[schema.EVENT_TYPE], r[schema.PRODUCT_ID], r[schema.USER_ID], str(r[schema.EVENT_DATE])) for r in kept) == sorted([
        ("view", 100, pseudonym("541312140"), "2019-10-01"), ("cart", 100, pseudonym("541312140"), "2019-10-01"),
        ("view", 200, pseudonym("541312141"), "2019-10-01"), ("purchase", 100, pseudonym("541312140"), "2019-10-02"),
        ("purchase", 400, pseudonym("541312142"), "2019-10-02")])
    assert len([r for r in kept if r[schema.PRODUCT_ID] == 200][0][schema.SESSION_ID]) == 32

    quarantine = spark.read.parquet(summary["quarantine_path"])
    assert quarantine.columns == [*[f.name for f in schema.QUARANTINE_SCHEMA.fields], schema.LOAD_DATE]
    records = sorted((r[schema.REASON], str(r[schema.LOAD_DATE]), r[schema.RAW_RECORD]) for r in quarantine.collect())
    assert [(reason, day) for reason, day, _ in records] == [
        (schema.REASON_MALFORMED, "2019-10-01"), (schema.REASON_MALFORMED, "2019-10-01"), (schema.REASON_NULL_USER, "2019-10-02"),
        (schema.REASON_OUT_OF_WINDOW, "2019-10-01"), (schema.REASON_UNKNOWN_EVENT, "2019-10-01")]
    malformed = sorted(line for reason, _, line in records if reason == schema.REASON_MALFORMED)
    assert malformed == sorted([DAY1[5].replace("541312140", pseudonym("541312140")),
                                DAY1[6].replace("5413", pseudonym("5413"))])
    unknown = json.loads([line for reason, _, line in records if reason == schema.REASON_UNKNOWN_EVENT][0])
    assert unknown[schema.USER_ID] == pseudonym("541312140") and unknown[schema.EVENT_TYPE] == "click"
    # The raw user ids appear in no output file, quarantine included.
    for folder in ("clean", "quarantine", "reports"):
        for path in (root / folder).rglob("*"):
            if path.is_file():
                assert b"54131214" not in path.read_bytes(), path

    # Re-run 2 October only, from a changed file: that date (clean and quarantine) is replaced,
    # 1 October is untouched, nothing is duplicated.
    day1_files = {p: p.stat().st_mtime_ns for p in (root / "clean" / "event_date=2019-10-01").iterdir()}
    write_raw(root, day2=DAY2[:2])
    again = clean.run(spark, load_config(None, overrides(root, "clean.start_date=2019-10-02",
                                                         "clean.end_date=2019-10-02", "clean.max_rejected_share=0.5")))
    assert (again["rows_read"], again["rows_kept"], again["dates"]) == (2, 1, ["2019-10-02"])
    assert {p: p.stat().st_mtime_ns for p in (root / "clean" / "event_date=2019-10-01").iterdir()} == day1_files
    by_date = io.read_clean(spark, summary["clean_path"]).groupBy(schema.EVENT_DATE).count().collect()
    assert sorted((str(r[0]), r[1]) for r in by_date) == [("2019-10-01", 3), ("2019-10-02", 1)]
    assert spark.read.parquet(summary["quarantine_path"]).where(F.col(schema.LOAD_DATE) == "2019-10-02").count() == 1
    assert sorted(p.name for p in (root / "clean").iterdir()) == ["event_date=2019-10-01", "event_date=2019-10-02"]


def test_run_without_a_key_fails_before_reading(spark, tmp_path, monkeypatch):
    (tmp_path / "work" / "raw").mkdir(parents=True)
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(InputError, match=KEY_ENV):
        clean.run(spark, load_config(None, overrides(tmp_path / "work")))


@pytest.mark.parametrize("override, key", [("clean.output_files_per_day=0", "clean.output_files_per_day"),
                                           ("clean.session_gap_minutes=0", "clean.session_gap_minutes"),
                                           ("clean.event_aliases={x: y}", "clean.event_aliases.x")])
def test_run_rejects_bad_settings(spark, tmp_path, monkeypatch, override, key):
    monkeypatch.setenv(KEY_ENV, "k")
    (tmp_path / "work" / "raw").mkdir(parents=True)
    with pytest.raises(ConfigError, match=key):
        clean.run(spark, load_config(None, overrides(tmp_path / "work", override)))


def test_reconciliation_names_every_term():
    Outcome(rows_read=10, rows_kept=3, duplicates=2, near_duplicates=1, bot_rows=1,
            rejected={schema.REASON_BAD_ID: 3}).check()
    lost = Outcome(rows_read=10, rows_kept=3, duplicates=2, near_duplicates=1, bot_rows=0,
                   rejected={schema.REASON_BAD_ID: 3})
    with pytest.raises(DataQualityError, match=r"read 10 != kept 3 \+ rejected 3 .* bot rows 0 \(off by 1\)"):
        lost.check()


# ----------------------------------------------------------------------------- property-based

GOOD_TIMES = [f"2019-10-01 {h:02d}:00:00 UTC" for h in range(10)]
BAD_FIELDS = st.sampled_from([
    {"time": "2019-10-01 25:00:00 UTC"}, {"time": ""}, {"user": None}, {"user": "x1"}, {"product": " "},
    {"product": "1e3"}, {"kind": "wishlist"}, {"price": "-0.5"}, {"price": "1e99"}, {"category": "cat"},
    {"corrupt": "garbage,line"}, {"time": "2019-10-05 00:00:00 UTC"},
])


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(good=st.lists(st.tuples(st.sampled_from(GOOD_TIMES), st.sampled_from(["view", "cart", "purchase"]),
                               st.integers(1, 50)), min_size=1, max_size=8, unique=True),
       bad=st.lists(BAD_FIELDS, max_size=8), copies=st.integers(0, 2))
def test_random_mixes_reconcile_and_lose_no_good_row(spark, good, bad, copies):
    # Each good row is its own user (no bot, near-duplicate or session rule applies); some are
    # repeated exactly `copies` extra times.
    good_rows = [raw_row(f"g{i}", time=t, kind=k, product=str(p), user=str(1000 + i))
                 for i, (t, k, p) in enumerate(good)]
    bad_rows = [raw_row(f"b{i}", **fields) for i, fields in enumerate(bad)]
    extra = [good_rows[0]] * copies
    parsed = parse_events(raw_frame(spark, good_rows + bad_rows + extra), WINDOW, Rules(max_price=1000.0)).cache()
    rejected = parsed.where(F.col(schema.REASON).isNotNull()).count()
    events, counted = clean_events(valid_events(parsed), b"k", BehaviourRules())
    kept = events.collect()
    fates = counted.counts(timeout_s=30)
    Outcome(rows_read=parsed.count(), rows_kept=len(kept), duplicates=fates["duplicates"],
            near_duplicates=fates["near_duplicates"], bot_rows=fates["bot_rows"],
            rejected={"any": rejected}).check()
    assert rejected == len(bad_rows) and fates["duplicates"] == copies
    assert sorted((r[schema.USER_ID], r[schema.PRODUCT_ID]) for r in kept) == sorted(
        (pseudonym(str(1000 + i), b"k"), p) for i, (_, _, p) in enumerate(good))
    parsed.unpersist()


# ----------------------------------------------------------------------------- kill and re-run


def _generate(root: Path) -> None:
    from recsys_spark.data import generate

    cfg = load_config(None, [f"paths.root={root}", "generate.n_users=200", "generate.n_items=150",
                             "generate.n_categories=8", "generate.n_brands=10", "generate.days=3", "generate.n_bots=1"])
    generate.run(None, cfg)


def _staged_parquet(root: Path) -> bool:
    return any(p.suffix == ".parquet" for folder in ("clean", "quarantine")
               for p in (root / folder).rglob("*") if "_staging" in p.parts or "_temporary" in p.parts)


@pytest.mark.e2e
def test_a_run_killed_midway_then_run_again_equals_an_uninterrupted_run(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "kill-key")
    raw = tmp_path / "shared" / "raw"
    _generate(tmp_path / "shared")
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    common = [f"paths.raw={raw}"]

    env = {**os.environ, KEY_ENV: "kill-key", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "recsys_spark", "clean", *overrides(killed, *common), "spark.show_progress=false"]
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.time() + 600
        while process.poll() is None and not _staged_parquet(killed) and time.time() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, "clean finished before any output was seen: nothing to kill"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert _staged_parquet(killed)  # the killed run left partial output behind

    rerun = clean.run(spark, load_config(None, overrides(killed, *common)))
    uninterrupted = clean.run(spark, load_config(None, overrides(whole, *common)))
    assert {k: v for k, v in rerun.items() if not k.endswith("path")} == {
        k: v for k, v in uninterrupted.items() if not k.endswith("path")}
    assert table_rows(spark, str(killed / "clean")) == table_rows(spark, str(whole / "clean"))
    assert table_rows(spark, str(killed / "quarantine")) == table_rows(spark, str(whole / "quarantine"))
    assert not (killed / "clean" / "_staging").exists() and not (killed / "quarantine" / "_staging").exists()


# ----------------------------------------------------------------------------- logs without defects


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_run_finishes_on_a_log_without_a_single_bad_row(spark, tmp_path, monkeypatch):
    # Every row valid: the quarantine side of the plan is empty. Spark's adaptive execution used
    # to drop that side's observed counts, and clean waited for them for ever (SPARK-54620).
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    day1 = [DAY1[0], DAY1[3], DAY1[4]]
    day2 = [DAY2[0], DAY2[2]]
    write_raw(root, day1=day1, day2=day2)
    summary = clean.run(spark, load_config(None, overrides(root)))
    assert (summary["rows_read"], summary["rows_kept"], summary["duplicates"], summary["near_duplicates"],
            summary["bot_rows"]) == (5, 5, 0, 0, 0)
    assert summary["rejected"] == {code: 0 for code in schema.REASON_CODES}
    assert io.read_clean(spark, summary["clean_path"]).count() == 5
    assert io.read_quarantine(spark, summary["quarantine_path"]).count() == 0
    assert summary["bots"]["rows"] == 5 and summary["bots"]["user_days"] == 4 and not summary["bots"]["warning"]


@pytest.mark.timeout(120)
def test_an_observation_spark_never_reports_is_counted_directly(spark):
    # An observation whose frame never ran stands for one that Spark dropped from the plan: the
    # bounded wait gives up and the same aggregates are computed from the frame.
    frame = spark.createDataFrame([(1,), (2,), (3,)], "x int")
    _, counted = observe(frame, "never_run", F.count(F.when(F.col("x") > 1, 1)).alias("big"))
    started = time.monotonic()
    assert counted.counts(timeout_s=0.5) == {"big": 2}
    assert time.monotonic() - started < 60


@pytest.mark.timeout(120)
def test_observed_counts_of_an_empty_side_arrive(spark, tmp_path):
    # The session excludes AQE's empty-relation propagation: an observation behind a filter that
    # keeps nothing, under a shuffle, is still reported (it was not, and Observation.get hung).
    from recsys_spark import waits

    frame = spark.createDataFrame([(1, "a"), (2, "b")], "x int, y string")
    empty, counted = observe(frame.where(F.col("x") > 5), "empty_side", F.count(F.lit(1)).alias("n"))
    empty.repartition("y").write.parquet(str(tmp_path / "out"))
    assert waits.observed(counted.observation, timeout_s=30) == {"n": 0}


# ----------------------------------------------------------------------------- the bot rules' report

FATE = {"valid": 110, "duplicates": 6, "near_duplicates": 4, "user_days": 20, "item_bot_rows": 30,
        "item_bot_days": 2, "rate_bot_rows": 10, "rate_bot_days": 1, "bot_rows": 40, "kept": 60}


def test_bot_report_gives_each_rules_user_days_rows_and_shares():
    bots = bot_report(FATE, BehaviourRules(bot_max_events_per_minute=30,
                                           bot_max_distinct_items_per_session=100))
    assert bots == {
        "rows": 100, "user_days": 20, "row_share": 0.4, "warning": "",
        "rules": {
            "items_per_session": {"limit": 100, "user_days": 2, "rows": 30, "user_day_share": 0.1, "row_share": 0.3},
            "events_per_minute": {"limit": 30, "user_days": 1, "rows": 10, "user_day_share": 0.05, "row_share": 0.1},
        },
    }


def test_bot_share_over_the_limit_warns_or_stops_naming_the_keys():
    rules = BehaviourRules()
    cfg = load_config(None, ["clean.bot_max_row_share=0.5"]).clean
    quiet = bot_report(FATE, rules)
    check_bot_share(quiet, cfg)
    assert quiet["warning"] == ""

    warned = bot_report(FATE, rules)
    check_bot_share(warned, load_config(None, ["clean.bot_max_row_share=0.2"]).clean)
    assert "40.0% of the rows" in warned["warning"] and "clean.bot_max_distinct_items_per_session=100" in warned[
        "warning"] and "clean.bot_max_row_share=1.0" in warned["warning"]
    assert "\n" not in warned["warning"]

    stop = load_config(None, ["clean.bot_max_row_share=0.2", "clean.bot_share_action=stop"]).clean
    with pytest.raises(DataQualityError, match=r"flagged 40\.0% .*clean\.bot_max_row_share=0\.2"):
        check_bot_share(bot_report(FATE, rules), stop)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_log_of_bulk_ratings_gets_a_warning_and_a_stop_publishes_nothing(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    # One user rates 40 items in 40 seconds (a bot by the default rate rule), another views 2.
    day1 = [f"2019-10-01 12:00:{i:02d} UTC,purchase,{500 + i},9,,,2.5,777,r" for i in range(40)]
    day1 += [DAY1[0], DAY1[3]]
    write_raw(root, day1=day1, day2=[DAY2[0]])
    stopped = overrides(root, "clean.bot_share_action=stop")
    with pytest.raises(DataQualityError, match="clean.bot_max_events_per_minute=30"):
        clean.run(spark, load_config(None, stopped))
    assert not (root / "clean").exists() or not any((root / "clean").glob("event_date=*"))

    summary = clean.run(spark, load_config(None, overrides(root)))
    assert summary["bot_rows"] == 40 and summary["bots"]["rules"]["events_per_minute"]["rows"] == 40
    assert summary["warning"].startswith("the bot rules flagged 93.0% of the rows")


# ----------------------------------------------------------------------------- the rejection gate


def _distinct_users_day(n_good: int, bad: list[str]) -> list[str]:
    """``n_good`` valid rows of distinct users (no duplicate, session or bot rule applies) and
    the ``bad`` lines, on 1 October."""
    good = [f"2019-10-01 {i // 60:02d}:{i % 60:02d}:00 UTC,view,{100 + i},7,,acme,1.5,{600000 + i},s{i}"
            for i in range(n_good)]
    return good + bad


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for folder in ("clean", "quarantine")
            for p in (root / folder).rglob("*.parquet") if "_stopped" not in p.parts}


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_log_of_62_percent_bad_rows_stops_in_one_line_and_publishes_nothing(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    write_raw(root, day1=_distinct_users_day(20, []), day2=[DAY2[0]])
    clean.run(spark, load_config(None, overrides(root)))
    published = _files(root)
    assert published

    # 31 of 50 rows have a visitor id made from the session (not an integer user id): 62%.
    visitors = [f"2019-10-01 10:{i:02d}:30 UTC,view,{300 + i},7,,acme,1.5,s{617 + i},v{i}" for i in range(31)]
    write_raw(root, day1=_distinct_users_day(19, visitors), day2=[])
    with pytest.raises(DataQualityError) as stopped:
        clean.run(spark, load_config(None, overrides(root)))
    message = str(stopped.value)
    assert "\n" not in message
    # A sample of the offending values, the user ids as their pseudonyms, never raw.
    sample = ", ".join(f"user_id {p!r}" for p in sorted(pseudonym(f"s{617 + i}") for i in range(31))[:3])
    assert message.startswith(f"clean: 62.0% of the rows read were rejected (31); top reason bad_id: 31 rows, "
                              f"e.g. {sample} (user ids pseudonymised); if the ids are not whole numbers"), message
    assert "clean.id_types.user_id=string" in message and "s617" not in message
    assert "more than clean.max_rejected_share=0.05" in message
    assert message.endswith("(to accept it: clean.max_rejected_share=0.62)")
    # Nothing published: the live tables are those of the first run; this run's rejected rows are kept apart.
    assert _files(root) == published
    aside = root / "quarantine" / "_stopped"
    assert str(aside) in message
    assert spark.read.parquet(str(next(aside.iterdir()))).count() == 31
    assert not (root / "clean" / "_staging").exists() and not (root / "quarantine" / "_staging").exists()
    assert io.read_quarantine(spark, str(root / "quarantine")).count() == 0

    # Raised as the message says, the same log runs, and the quarantine keeps every rejected row.
    summary = clean.run(spark, load_config(None, overrides(root, "clean.max_rejected_share=0.62")))
    assert summary["rows_kept"] == 19 and summary["rejected"][schema.REASON_BAD_ID] == 31
    assert io.read_quarantine(spark, summary["quarantine_path"]).count() == 31


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_three_percent_bad_rows_go_on_with_a_warning_in_the_run_summary(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    bad = [f"2019-10-01 11:{i:02d}:00 UTC,view,{400 + i},7,,acme,-{i + 1},{700000 + i},b{i}" for i in range(3)]
    write_raw(root, day1=_distinct_users_day(96, bad), day2=[DAY2[0]])
    summary = clean.run(spark, load_config(None, overrides(root)))
    assert summary["rows_kept"] == 97 and summary["rejected"][schema.REASON_BAD_PRICE] == 3
    assert summary["rejections"]["share"] == 0.03 and summary["rejections"]["sample"] == [
        ["price", "-1"], ["price", "-2"], ["price", "-3"]]
    warning = summary["warning"]
    assert warning.startswith("3.0% of the rows read were rejected (3); top reason bad_price: 3 rows, "
                              "e.g. price '-1', price '-2', price '-3'"), warning
    assert "clean.max_rejected_share=0.05" in warning and "\n" not in warning
    assert io.read_quarantine(spark, summary["quarantine_path"]).count() == 3
    # The stage's summary carries it: `recsys run` repeats it last, as "WARNING (clean)" (pipeline.run).
    assert json.loads(Path(summary["report_path"]).read_text())["warning"] == warning


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_run_that_keeps_no_row_fails(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    write_raw(root, day1=[DAY1[7]], day2=[DAY2[1]])  # an unknown event type, a missing user
    with pytest.raises(DataQualityError, match=r"^clean: kept none of the 2 rows read \(2 rejected"):
        clean.run(spark, load_config(None, overrides(root, "clean.max_rejected_share=1.0")))
    assert not any((root / "clean").glob("event_date=*"))


def test_the_gate_names_the_top_reason_and_warns_between_one_percent_and_the_limit():
    cc = load_config(None, ["clean.max_rejected_share=0.1"]).clean
    outcome = Outcome(rows_read=1000, rows_kept=950, duplicates=0,
                      rejected={schema.REASON_UNKNOWN_EVENT: 20, schema.REASON_BAD_PRICE: 30})
    report = rejection_report(outcome, [["price", "-1"]])
    assert (report["share"], report["top_reason"], report["top_rows"]) == (0.05, schema.REASON_BAD_PRICE, 30)
    check_rejected_share(report, cc, "aside")
    assert report["warning"].startswith("5.0% of the rows read were rejected (50); top reason bad_price: 30 rows")
    quiet = rejection_report(Outcome(1000, 990, 0, rejected={schema.REASON_BAD_PRICE: 10}), [])
    check_rejected_share(quiet, cc, "aside")
    assert quiet["warning"] == ""
    over = rejection_report(Outcome(1000, 800, 0, rejected={schema.REASON_BAD_PRICE: 200}), [])
    with pytest.raises(DataQualityError, match=r"20\.0% .*bad_price: 200 rows; more than clean\.max_rejected_share=0\.1, .*in aside\) "
                                               r"\(to accept it: clean\.max_rejected_share=0\.2\)$"):
        check_rejected_share(over, cc, "aside")


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_string_user_ids_are_kept_and_pseudonymised_as_they_came_in(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    users = ["0b6f3c3e-8f1d-4c1e-9a57-2f6f1b2d9e01", "s617", "000123", "a" * 64]
    day1 = [f"2019-10-01 10:0{i}:00 UTC,view,{100 + i},7,,acme,1.5,{user},x{i}" for i, user in enumerate(users)]
    write_raw(root, day1=day1, day2=[DAY2[0]])
    summary = clean.run(spark, load_config(None, overrides(root, "clean.id_types.user_id=string")))
    assert summary["rows_kept"] == 5 and sum(summary["rejected"].values()) == 0
    kept = {r[schema.USER_ID] for r in io.read_clean(spark, summary["clean_path"]).collect()}
    # "000123" keeps its zeros: its pseudonym is not that of the integer 123.
    assert kept == {pseudonym(u) for u in [*users, "541312140"]} and pseudonym("123") not in kept
    with pytest.raises(ConfigError, match="clean.id_types.user_id: 'uuid' is not one of 'integer', 'string'"):
        load_config(None, ["clean.id_types.user_id=uuid"])


def _key(spark, text: str) -> int:
    return spark.range(1).select(product_ids.product_key(F.lit(text))).first()[0]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_string_product_ids_get_a_key_and_a_table_that_names_them_as_they_came_in(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    products = ["SKU-0035789-XL", "0035789", "35789", "A-1234-XL", " B07XJ8C8F5 "]
    day1 = [f"2019-10-01 10:0{i}:00 UTC,view,{p},7,,acme,1.5,{541312140 + i},x{i}" for i, p in enumerate(products)]
    write_raw(root, day1=day1, day2=[DAY2[0].replace(",100,", ",SKU-0035789-XL,")])
    summary = clean.run(spark, load_config(None, overrides(root, "clean.id_types.product_id=string")))
    assert summary["rows_kept"] == 6 and sum(summary["rejected"].values()) == 0
    texts = [p.strip() for p in products]  # trimmed, as every id; "0035789" and "35789" are two products
    keys = {t: _key(spark, t) for t in texts}
    assert len(set(keys.values())) == 5 and min(keys.values()) >= 0
    clean_keys = {r[schema.PRODUCT_ID] for r in io.read_clean(spark, summary["clean_path"]).collect()}
    assert clean_keys == set(keys.values())
    table = product_ids.read_table(spark, str(root / "product_ids"))
    assert sorted(tuple(r) for r in table.collect()) == sorted((k, t) for t, k in keys.items())
    # By event date, as the clean events: SKU-0035789-XL on both days.
    by_date = spark.read.parquet(str(root / "product_ids")).where(F.col(schema.ORIGINAL_ID) == "SKU-0035789-XL")
    assert by_date.count() == 2

    # Integer mode writes no such table.
    plain = tmp_path / "plain"
    write_raw(plain, day1=[DAY1[0]], day2=[DAY2[0]])
    clean.run(spark, load_config(None, overrides(plain)))
    assert not (plain / "product_ids").exists()


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_two_product_ids_with_one_key_stop_clean_naming_both(spark, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "e2e-key")
    root = tmp_path / "work"
    write_raw(root, day1=[DAY1[0].replace(",100,", ",SKU-1,")], day2=[DAY2[0].replace(",100,", ",SKU-2,")])
    config = load_config(None, overrides(root, "clean.id_types.product_id=string", "clean.start_date=2019-10-02",
                                         "clean.end_date=2019-10-02"))
    # A live partition of another date holds another id with SKU-2's key (a 63-bit collision, planted).
    planted = spark.createDataFrame([(_key(spark, "SKU-2"), "SKU-X", dt.date(2019, 10, 1))], schema.PRODUCT_IDS_SCHEMA)
    io.write_partitioned(planted, str(root / "product_ids"), schema.EVENT_DATE)
    with pytest.raises(DataQualityError) as stopped:
        clean.run(spark, config)
    message = str(stopped.value)
    assert message.startswith("clean: product ids 'SKU-2' and 'SKU-X' have the same 63-bit key ") and "\n" not in message
    assert not (root / "clean").exists() or not any((root / "clean").glob("event_date=*"))
    assert [p.name for p in (root / "product_ids").glob("event_date=*")] == ["event_date=2019-10-01"]
    assert not (root / "product_ids" / "_staging").exists()
