"""The synthetic clickstream: the raw contract, determinism, dirt counts and its structure."""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.config import Config, GenerateConfig, PathsConfig, load_config
from recsys_spark.data import clickstream, generate, raw_text
from recsys_spark.data.world import World, build_world, category_heads
from recsys_spark.errors import ConfigError
from recsys_spark.etl import adapters
from recsys_spark.etl.validate import parse_event_time

pytestmark = pytest.mark.unit

TINY = dict(n_users=150, n_items=120, n_categories=8, n_brands=15, days=6, n_bots=1, sessions_per_user=5.0)
NO_DIRT = dict(
    n_bots=0, duplicate_rate=0.0, malformed_rate=0.0, null_id_rate=0.0, unknown_event_rate=0.0, missing_session_rate=0.0
)
DIRTY = dict(
    duplicate_rate=0.02, malformed_rate=0.01, null_id_rate=0.01, unknown_event_rate=0.01, missing_session_rate=0.03
)
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _config(root: Path | str, **generate) -> Config:
    return Config(paths=PathsConfig(root=str(root)), generate=GenerateConfig(**{**TINY, **generate}))


def _files(raw: Path) -> list[Path]:
    return sorted(raw.iterdir())


def _csv_lines(path: Path) -> list[list[str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


def _all_events(cfg: GenerateConfig) -> pd.DataFrame:
    return pd.concat([events for _, events in clickstream.generate_events(cfg)], ignore_index=True)


@pytest.fixture(scope="module")
def dirty_csv(tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("dirty"), **DIRTY)
    summary = generate.run(None, cfg)
    return cfg, summary


def test_clean_csv_matches_the_raw_contract(tmp_path):
    cfg = _config(tmp_path, **NO_DIRT)
    summary = generate.run(None, cfg)

    raw = Path(summary["raw_path"])
    assert raw == tmp_path / "raw"
    assert [p.name for p in _files(raw)] == [f"events-2019-10-0{d}.csv" for d in range(1, 7)]
    assert summary["files"] == 6 and summary["days"] == 6
    df = pd.concat([pd.read_csv(p) for p in _files(raw)], ignore_index=True)
    assert list(df.columns) == schema.RAW_COLUMNS
    assert len(df) == summary["events"]
    assert df[schema.EVENT_TIME].str.match(TIME_RE.pattern).all()
    assert set(df[schema.EVENT_TYPE]) == set(schema.EVENT_TYPES)
    for column in (schema.PRODUCT_ID, schema.CATEGORY_ID, schema.USER_ID):
        assert df[column].dtype == np.int64
    assert (df[schema.CATEGORY_ID] > 2**60).all()
    assert df[schema.PRICE].dtype == np.float64 and (df[schema.PRICE] > 0).all()
    assert np.allclose(df[schema.PRICE], df[schema.PRICE].round(2))
    codes = df[schema.CATEGORY_CODE].dropna()
    assert 0 < len(codes) < len(df) and codes.str.match(r"^[a-z_]+(\.[a-z_0-9]+)+$").all()
    brands = df[schema.BRAND].dropna()
    assert 0 < len(brands) < len(df) and (brands == brands.str.lower()).all()
    assert df[schema.USER_SESSION].str.match(UUID_RE.pattern).all()
    assert summary["users"] == df[schema.USER_ID].nunique()
    assert summary["items"] == df[schema.PRODUCT_ID].nunique()
    assert summary["dirt"] == {
        "duplicates": 0, "malformed": 0, "null_ids": 0, "unknown_event_types": 0, "bot_events": 0, "missing_sessions": 0
    }  # fmt: skip
    for path in _files(raw):  # every line of a day's file lies in that day, in time order
        day = path.name.removeprefix("events-").removesuffix(".csv")
        times = pd.read_csv(path)[schema.EVENT_TIME]
        assert times.str.startswith(day).all() and times.is_monotonic_increasing


def test_every_kind_of_dirt_is_present_in_the_stated_counts(dirty_csv):
    cfg, summary = dirty_csv
    bots = {str(b) for b in build_world(cfg.generate).bot_user_ids}
    rows = []
    for path in _files(Path(summary["raw_path"])):
        lines = _csv_lines(path)
        assert lines[0] == schema.RAW_COLUMNS
        rows += lines[1:]
    good = [r for r in rows if len(r) == len(schema.RAW_COLUMNS)]
    col = {c: i for i, c in enumerate(schema.RAW_COLUMNS)}
    counted = {
        "duplicates": len(good) - len({tuple(r) for r in good}),
        "malformed": len(rows) - len(good),
        "null_ids": sum(r[col[schema.USER_ID]] == "" or r[col[schema.PRODUCT_ID]] == "" for r in good),
        "unknown_event_types": sum(r[col[schema.EVENT_TYPE]] not in schema.EVENT_TYPES for r in good),
        "bot_events": sum(r[col[schema.USER_ID]] in bots for r in good),
        "missing_sessions": sum(r[col[schema.USER_SESSION]] == "" for r in good),
    }
    assert counted == summary["dirt"]
    assert all(n > 0 for n in counted.values()), counted
    assert summary["events"] == len(rows)
    assert {r[col[schema.EVENT_TYPE]] for r in good} - set(schema.EVENT_TYPES) <= set(raw_text.UNKNOWN_EVENT_TYPES)


def test_bots_view_hundreds_of_distinct_items_seconds_apart(dirty_csv):
    cfg, summary = dirty_csv
    gen = cfg.generate
    events = _all_events(gen)
    bot_events = events[events[schema.USER_ID].isin(build_world(gen).bot_user_ids)]
    assert len(bot_events) == summary["dirt"]["bot_events"]
    sessions = bot_events.groupby(schema.USER_SESSION)
    assert len(sessions) == gen.days // 3  # one burst on a third of the days
    for _, burst in sessions:
        assert min(clickstream.BOT_VIEWS[0], gen.n_items) <= len(burst) == burst[schema.PRODUCT_ID].nunique()
        assert (burst[schema.EVENT_TYPE] == "view").all()
        gaps = burst[schema.EVENT_TIME].diff().dropna().dt.total_seconds()
        assert gaps.between(1, 4).all()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = generate.run(None, _config(tmp_path / "a", **DIRTY))
    second = generate.run(None, _config(tmp_path / "b", **DIRTY))
    third = generate.run(None, _config(tmp_path / "c", seed=7, **DIRTY))

    a, b, c = (_files(Path(s["raw_path"])) for s in (first, second, third))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert first == {**second, "raw_path": first["raw_path"]}
    assert [p.name for p in a] == [p.name for p in c]
    assert all(p.read_bytes() != q.read_bytes() for p, q in zip(a, c))


def test_gzip_csv_is_readable_and_deterministic(tmp_path):
    summary = generate.run(None, _config(tmp_path / "a", compression="gzip", **NO_DIRT))
    again = generate.run(None, _config(tmp_path / "b", compression="gzip", **NO_DIRT))

    files = _files(Path(summary["raw_path"]))
    assert [p.name for p in files] == [f"events-2019-10-0{d}.csv.gz" for d in range(1, 7)]
    df = pd.concat([pd.read_csv(p) for p in files])
    assert list(df.columns) == schema.RAW_COLUMNS and len(df) == summary["events"]
    assert [p.read_bytes() for p in files] == [p.read_bytes() for p in _files(Path(again["raw_path"]))]


def test_json_lines_are_readable_and_malformed_ones_counted(tmp_path):
    summary = generate.run(None, _config(tmp_path, format="json", **DIRTY))

    files = _files(Path(summary["raw_path"]))
    assert [p.name for p in files] == [f"events-2019-10-0{d}.json" for d in range(1, 7)]
    records, broken = [], 0
    for path in files:
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                broken += 1
    assert broken == summary["dirt"]["malformed"] > 0
    assert len(records) + broken == summary["events"]
    assert all(list(r) == schema.RAW_COLUMNS for r in records)
    clean = [r for r in records if r[schema.USER_ID] is not None and r[schema.PRODUCT_ID] is not None]
    assert len(records) - len(clean) == summary["dirt"]["null_ids"]
    assert all(isinstance(r[schema.PRODUCT_ID], int) and isinstance(r[schema.PRICE], float) for r in clean)
    assert sum(r[schema.USER_SESSION] is None for r in records) == summary["dirt"]["missing_sessions"]
    assert all(TIME_RE.match(r[schema.EVENT_TIME]) for r in records)


def test_rerun_replaces_the_files_of_each_day(tmp_path):
    first = generate.run(None, _config(tmp_path, **DIRTY))
    before = {p.name: p.read_bytes() for p in _files(Path(first["raw_path"]))}
    again = generate.run(None, _config(tmp_path, **DIRTY))
    assert {p.name: p.read_bytes() for p in _files(Path(again["raw_path"]))} == before

    as_json = generate.run(None, _config(tmp_path, format="json", days=3, **DIRTY))
    names = [p.name for p in _files(Path(as_json["raw_path"]))]
    assert names == [f"events-2019-10-0{d}.json" for d in (1, 2, 3)] + [f"events-2019-10-0{d}.csv" for d in (4, 5, 6)]


def test_a_uri_destination_is_written_through_spark(spark, tmp_path):
    cfg = Config(
        paths=PathsConfig(root=(tmp_path / "work").as_uri()),
        generate=GenerateConfig(**{**TINY, "days": 2, **DIRTY}),
    )
    summary = generate.run(spark, cfg)

    assert summary["raw_path"] == (tmp_path / "work").as_uri() + "/raw"
    lines = spark.read.text(summary["raw_path"]).collect()
    header = ",".join(schema.RAW_COLUMNS)
    assert sum(r.value == header for r in lines) == 2
    assert len(lines) - 2 == summary["events"]
    visible = sorted(p.name for p in (tmp_path / "work" / "raw").iterdir() if not p.name.startswith("."))
    assert visible == ["events-2019-10-01.csv", "events-2019-10-02.csv"]
    local = generate.run(None, _config(tmp_path / "local", **{"days": 2, **DIRTY}))
    for name in visible:  # the same bytes as a local run
        assert (tmp_path / "work" / "raw" / name).read_bytes() == (Path(local["raw_path"]) / name).read_bytes()


def test_popularity_is_zipf_like():
    def top_decile_share(exponent: float) -> float:
        events = _all_events(GenerateConfig(**{**TINY, **NO_DIRT, "zipf_exponent": exponent}))
        counts = events[schema.PRODUCT_ID].value_counts()
        return counts.iloc[: TINY["n_items"] // 10].sum() / counts.sum()

    # The 12 most popular of 120 items hold 63% of the Zipf(1.1) weight, 10% of a flat one.
    assert top_decile_share(1.1) > 0.45
    assert top_decile_share(0.0) < 0.25


def test_a_purchase_or_removal_follows_a_cart_in_the_same_session():
    events = _all_events(GenerateConfig(**{**TINY, **NO_DIRT, "p_cart": 0.5, "p_purchase": 0.5}))
    key = [schema.USER_SESSION, schema.PRODUCT_ID]
    carts = events[events[schema.EVENT_TYPE] == "cart"].groupby(key)[schema.EVENT_TIME].min().rename("first_cart")
    for kind in ("purchase", "remove_from_cart"):
        after = events[events[schema.EVENT_TYPE] == kind].join(carts, on=key)
        assert len(after) > 20
        assert (after[schema.EVENT_TIME] > after["first_cart"]).all()  # NaT (no cart) compares False
    gaps = events.sort_values([schema.USER_SESSION, schema.EVENT_TIME]).groupby(schema.USER_SESSION)[schema.EVENT_TIME].diff()
    seconds = gaps.dropna().dt.total_seconds()
    assert seconds.between(1, clickstream.MAX_VIEW_GAP_S + 60).all()
    assert seconds.median() < 120


def test_next_item_follows_the_complement_or_category_rule():
    base = {**TINY, **NO_DIRT, "p_cart": 0.0, "p_repeat_view": 0.0}

    def consecutive(cfg: GenerateConfig) -> tuple[World, pd.DataFrame]:
        world = build_world(cfg)
        views = _all_events(cfg).sort_values([schema.USER_SESSION, schema.EVENT_TIME], kind="stable")
        index = pd.Series(np.arange(world.n_items), index=world.product_id)
        views["item"] = index[views[schema.PRODUCT_ID]].to_numpy()
        views["prev"] = views.groupby(schema.USER_SESSION)["item"].shift(1)
        return world, views.dropna(subset=["prev"]).astype({"prev": int})

    world, pairs = consecutive(GenerateConfig(**base, p_complement=1.0))
    assert len(pairs) > 100
    assert all(b in world.complements[a] for a, b in zip(pairs["prev"], pairs["item"]))

    world, pairs = consecutive(GenerateConfig(**base, p_complement=0.0, p_same_category=1.0))
    assert len(pairs) > 100
    assert (world.item_category[pairs["prev"]] == world.item_category[pairs["item"]]).all()


def test_tastes_drift_between_first_and_last_week():
    def mean_category_shift(drift: float) -> float:
        cfg = GenerateConfig(
            **{**TINY, **NO_DIRT, "n_users": 300, "days": 14, "sessions_per_user": 10.0, "taste_drift": drift},
            p_complement=0.0,
            p_same_category=0.0,
            p_repeat_view=0.0,
        )
        events = _all_events(cfg)
        views = events[events[schema.EVENT_TYPE] == "view"]
        week = np.where(views[schema.EVENT_TIME] < pd.Timestamp("2019-10-08", tz="UTC"), "first", "last")
        shares = views.groupby([views[schema.USER_ID], week])[schema.CATEGORY_ID].value_counts(normalize=True)
        counts = views.groupby([views[schema.USER_ID], week]).size().unstack()
        active = counts[(counts >= 10).all(axis=1)].index
        shares = shares.unstack(fill_value=0.0).loc[active]
        first = shares.xs("first", level=1)
        last = shares.xs("last", level=1)
        return float(0.5 * (first - last).abs().sum(axis=1).mean())

    # Sampling noise alone moves ~0.18 of the mass; a drifting taste moves clearly more.
    assert mean_category_shift(0.6) > mean_category_shift(0.0) + 0.07


def test_out_of_range_settings_are_rejected_by_name():
    with pytest.raises(ConfigError, match="generate.p_cart"):
        GenerateConfig(p_cart=1.5)
    with pytest.raises(ConfigError, match="generate.n_items"):
        GenerateConfig(n_items=5, n_categories=10)


# ----------------------------------------------------------------------------- shapes of real logs


def test_defects_off_gives_a_log_without_faults_or_bots_whatever_the_rates(tmp_path):
    summary = generate.run(None, _config(tmp_path / "off", defects=False, n_bots=2, **DIRTY))
    zero = generate.run(None, _config(tmp_path / "zero", **NO_DIRT))

    assert summary["dirt"] == dict.fromkeys(raw_text.DIRT_KINDS, 0)
    files = _files(Path(summary["raw_path"]))
    assert [p.read_bytes() for p in files] == [p.read_bytes() for p in _files(Path(zero["raw_path"]))]
    rows = [row for path in files for row in _csv_lines(path)[1:]]
    assert len(rows) == summary["events"] > 1000
    col = {c: i for i, c in enumerate(schema.RAW_COLUMNS)}
    assert all(len(r) == len(schema.RAW_COLUMNS) for r in rows)  # no malformed line
    assert len({tuple(r) for r in rows}) == len(rows)  # no duplicate
    assert {r[col[schema.EVENT_TYPE]] for r in rows} == set(schema.EVENT_TYPES)
    for column in (schema.USER_ID, schema.PRODUCT_ID, schema.USER_SESSION):
        assert all(r[col[column]] != "" for r in rows), column
    assert all(TIME_RE.match(r[col[schema.EVENT_TIME]]) for r in rows)
    assert len(build_world(GenerateConfig(**{**TINY, "defects": False, "n_bots": 2})).bot_user_ids) == 0


@pytest.mark.parametrize("n_users, days", [(1, 6), (150, 1), (1, 1)])
def test_a_single_user_or_a_single_day_gives_a_log(tmp_path, n_users, days):
    summary = generate.run(None, _config(tmp_path, n_users=n_users, days=days, defects=False))

    files = _files(Path(summary["raw_path"]))
    assert len(files) == days
    df = pd.concat([pd.read_csv(p) for p in files], ignore_index=True)
    assert len(df) == summary["events"] > 0
    assert df[schema.USER_ID].nunique() == summary["users"] <= n_users
    assert df[schema.EVENT_TIME].str[:10].isin([f"2019-10-0{d}" for d in range(1, days + 1)]).all()


def test_user_active_days_leaves_a_thin_tail_of_recent_users():
    def last_week_share(active_days: int) -> tuple[float, int]:
        shape = {"n_users": 300, "days": 240, "sessions_per_user": 30.0, "user_active_days": active_days}
        cfg = GenerateConfig(**{**TINY, **NO_DIRT, **shape})
        events = _all_events(cfg)
        recent = events[schema.EVENT_TIME] >= pd.Timestamp("2019-10-01", tz="UTC") + pd.Timedelta(days=233)
        days = events[schema.EVENT_TIME].dt.floor("D").groupby(events[schema.USER_ID])
        widest = int((days.max() - days.min()).max().days)
        return events.loc[recent, schema.USER_ID].nunique() / events[schema.USER_ID].nunique(), widest

    # A first day uniform over 240 days and 10 active days: 16 of 240 first days reach the
    # last week (~7%); without windows, 30 sessions in 240 days reach it for most users.
    share, widest = last_week_share(10)
    assert 0.01 < share < 0.12
    assert widest <= 10  # 10 days of sessions, the last one may run past midnight
    share, widest = last_week_share(0)
    assert share > 0.3 and widest > 100


def test_bursts_are_ratings_like_sessions_of_distinct_items():
    cfg = GenerateConfig(**{**TINY, **NO_DIRT, "n_items": 400, "days": 3, "burst_share": 0.2})
    events = _all_events(cfg)

    size = events.groupby(schema.USER_SESSION)[schema.PRODUCT_ID].agg(["size", "nunique"])
    bursts = size[size["size"] >= clickstream.BURST_EVENTS[0]]
    # ~150 users x 5 sessions x 0.2 = ~150 bursts.
    assert 100 < len(bursts) < 200
    assert (bursts["size"] == bursts["nunique"]).all() and bursts["nunique"].max() > 200
    assert bursts["size"].between(*clickstream.BURST_EVENTS).all()
    in_bursts = events[events[schema.USER_SESSION].isin(bursts.index)]
    assert set(in_bursts[schema.EVENT_TYPE]) == {"view", "purchase"}
    for _, burst in in_bursts.groupby(schema.USER_SESSION):
        assert burst[schema.EVENT_TIME].dt.date.nunique() == 1
        seconds = (burst[schema.EVENT_TIME].astype("int64") // 10**9).to_numpy()
        assert np.isin(np.diff(seconds), [1, 2]).all()
        # More than 30 events in some 60 s: clean's default bot rule sees it.
        assert (np.arange(len(seconds)) - np.searchsorted(seconds, seconds - 59)).max() + 1 > 30
    assert (size["size"] < 60).mean() > 0.7  # the other sessions stay short


def test_empty_columns_are_empty_in_csv_and_null_in_json(tmp_path):
    empty = ["brand", "price", "category_id", "category_code"]
    csv_run = generate.run(None, _config(tmp_path / "csv", days=2, empty_columns=empty, **NO_DIRT))
    json_run = generate.run(None, _config(tmp_path / "json", days=2, format="json", empty_columns=["brand"], **NO_DIRT))

    rows = [r for p in _files(Path(csv_run["raw_path"])) for r in _csv_lines(p)[1:]]
    assert len(rows) == csv_run["events"] > 0
    for column in empty:
        assert {r[schema.RAW_COLUMNS.index(column)] for r in rows} == {""}
    assert all(r[schema.RAW_COLUMNS.index(schema.PRODUCT_ID)] != "" for r in rows)
    records = [json.loads(line) for p in _files(Path(json_run["raw_path"])) for line in p.read_text().splitlines()]
    assert len(records) == json_run["events"] > 0
    assert all(r[schema.BRAND] is None and r[schema.CATEGORY_CODE] != "" for r in records)
    assert sum(r[schema.PRICE] is not None for r in records) == len(records)


def test_event_types_keep_only_the_listed_types(tmp_path):
    every = _all_events(GenerateConfig(**{**TINY, **NO_DIRT}))
    summary = generate.run(None, _config(tmp_path, event_types=["purchase"], **NO_DIRT))

    df = pd.concat([pd.read_csv(p) for p in _files(Path(summary["raw_path"]))], ignore_index=True)
    assert set(df[schema.EVENT_TYPE]) == {"purchase"}
    # Dropping the other types changes no draw: the purchases of the full log, no more.
    assert len(df) == summary["events"] == (every[schema.EVENT_TYPE] == "purchase").sum() > 50


def test_item_id_offset_moves_every_product_id(tmp_path):
    offset = 4_611_686_018_427_387_000  # 2^62 - 904
    moved = generate.run(None, _config(tmp_path / "moved", days=2, item_id_offset=offset, **NO_DIRT))
    plain = generate.run(None, _config(tmp_path / "plain", days=2, **NO_DIRT))

    def product_ids(summary: dict) -> list[int]:
        index = schema.RAW_COLUMNS.index(schema.PRODUCT_ID)
        return [int(r[index]) for p in _files(Path(summary["raw_path"])) for r in _csv_lines(p)[1:]]

    ids = product_ids(moved)
    assert len(ids) == moved["events"] > 0
    assert all(offset + 1_000_000 <= i < offset + 100_000_000 < 2**63 for i in ids)
    assert [i - offset for i in ids] == product_ids(plain)


def test_naive_timestamps_have_no_zone(tmp_path):
    naive = generate.run(None, _config(tmp_path / "naive", days=2, naive_timestamps=True, **NO_DIRT))
    zoned = generate.run(None, _config(tmp_path / "zoned", days=2, **NO_DIRT))

    for p, q in zip(_files(Path(naive["raw_path"])), _files(Path(zoned["raw_path"]))):
        rows = [r for r in _csv_lines(p)[1:] if len(r) == len(schema.RAW_COLUMNS)]
        assert rows and all(re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$", r[0]) for r in rows)
        assert p.read_text().replace(" UTC", "") == q.read_text().replace(" UTC", "")


def test_parquet_days_carry_the_typed_raw_contract_and_no_malformed_rows(tmp_path):
    generate.run(None, _config(tmp_path, days=2, **DIRTY))  # CSV files of the same days are replaced
    summary = generate.run(None, _config(tmp_path, format="parquet", compression="gzip", **DIRTY))
    again = generate.run(None, _config(tmp_path / "again", format="parquet", compression="gzip", **DIRTY))

    files = _files(Path(summary["raw_path"]))
    assert [p.name for p in files] == [f"events-2019-10-0{d}.parquet" for d in range(1, 7)]
    assert [p.read_bytes() for p in files] == [p.read_bytes() for p in _files(Path(again["raw_path"]))]
    tables = [pq.read_table(p) for p in files]
    expected = {
        schema.EVENT_TIME: "string", schema.EVENT_TYPE: "string", schema.PRODUCT_ID: "int64", schema.CATEGORY_ID: "int64",
        schema.CATEGORY_CODE: "string", schema.BRAND: "string", schema.PRICE: "double", schema.USER_ID: "int64", schema.USER_SESSION: "string",
    }  # fmt: skip
    assert all(dict(zip(t.schema.names, map(str, t.schema.types))) == expected for t in tables)
    assert all(t.schema.names == schema.RAW_COLUMNS for t in tables)
    df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    assert len(df) == summary["events"]
    dirt = summary["dirt"]
    assert dirt["malformed"] == 0 and dirt["duplicates"] > 0 and dirt["null_ids"] > 0
    assert df[schema.USER_ID].isna().sum() + df[schema.PRODUCT_ID].isna().sum() == dirt["null_ids"]
    assert df[schema.USER_SESSION].isna().sum() == dirt["missing_sessions"]
    assert (~df[schema.EVENT_TYPE].isin(schema.EVENT_TYPES)).sum() == dirt["unknown_event_types"]
    assert df.duplicated().sum() == dirt["duplicates"]
    assert df[schema.EVENT_TIME].str.match(TIME_RE.pattern).all()


def test_parquet_is_read_by_the_rees46_adapter(spark, tmp_path):
    offset = 4_611_686_018_427_387_000
    cfg = _config(tmp_path, days=2, format="parquet", naive_timestamps=True, item_id_offset=offset,
                  empty_columns=["price"], **NO_DIRT)
    summary = generate.run(None, cfg)
    events = _all_events(cfg.generate)

    raw = adapters.read_files(spark, adapters.list_input_files(spark, summary["raw_path"]), "rees46", "parquet")
    got = raw.select(
        F.unix_micros(parse_event_time(F.col(schema.EVENT_TIME))).alias("micros"), schema.PRODUCT_ID, schema.PRICE, schema.CORRUPT_RECORD
    ).toPandas()
    assert len(got) == summary["events"] == len(events) > 0
    assert got[schema.PRICE].isna().all() and got[schema.CORRUPT_RECORD].isna().all()
    # Naive times are read in clean.naive_timezone (UTC): the generated instants, exactly.
    micros = (events[schema.EVENT_TIME] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    assert sorted(got["micros"]) == sorted(micros)
    assert sorted(got[schema.PRODUCT_ID].map(int)) == sorted(events[schema.PRODUCT_ID])
    assert min(got[schema.PRODUCT_ID].map(int)) > offset


@pytest.mark.parametrize(
    "setting, key",
    [
        ({"empty_columns": ["brand", "colour"]}, "generate.empty_columns"),
        ({"event_types": ["view", "click"]}, "generate.event_types"),
        ({"event_types": []}, "generate.event_types"),
        ({"item_id_offset": -1}, "generate.item_id_offset"),
        ({"item_id_offset": 2**63 - 1}, "generate.item_id_offset"),
        ({"burst_share": 1.5}, "generate.burst_share"),
        ({"burst_share": -0.1}, "generate.burst_share"),
        ({"user_active_days": -3}, "generate.user_active_days"),
    ],
)
def test_new_settings_out_of_range_are_rejected_by_name(setting, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        GenerateConfig(**setting)


def test_regime_overrides_come_first_and_the_callers_win():
    cfg = load_config(None, [*generate.regime_overrides("ratings"), "generate.days=10"]).generate
    assert (cfg.burst_share, cfg.user_active_days, cfg.days) == (0.5, 60, 10)
    assert cfg.empty_columns == ["brand", "price", "category_code"]
    long_tail = load_config(None, generate.regime_overrides("long_tail")).generate
    assert (long_tail.n_items, long_tail.zipf_exponent) == (20000, 0.8)
    assert generate.regime_overrides("demo") == []
    with pytest.raises(ConfigError, match="'movielens'"):
        generate.regime_overrides("movielens")


def test_new_items_launch_on_their_day_and_leave_the_rest_of_the_world_alone():
    cfg = GenerateConfig(n_users=800, n_items=400, n_categories=8, days=6, new_items_per_day=15, burst_share=0.2,
                         n_bots=2, seed=5)
    world = build_world(cfg)
    without = build_world(GenerateConfig(**{**cfg.__dict__, "new_items_per_day": 0}))
    assert without.item_launch_day is None
    for name in ("product_id", "popularity", "item_category", "taste_early", "taste_late", "session_user"):
        assert np.array_equal(getattr(world, name), getattr(without, name)), name
    # 15 items on each of days 1..5, none of them its category's most popular item.
    assert np.bincount(world.item_launch_day).tolist() == [400 - 75, 15, 15, 15, 15, 15]
    heads = category_heads(world.item_category, world.popularity)
    assert len(heads) == 8 and (world.item_launch_day[heads] == 0).all()

    launch = dict(zip(world.product_id.tolist(), world.item_launch_day.tolist()))
    first_day: dict[int, int] = {}
    for day, (_, events) in enumerate(clickstream.generate_events(cfg, world)):
        for product in events["product_id"].unique().tolist():
            first_day.setdefault(product, day)
    assert all(day >= launch[product] for product, day in first_day.items())
    launched_later = [product for product in first_day if launch[product] > 0]
    assert len(launched_later) > 60  # most new items are seen, from their launch day on
    assert sum(first_day[p] == launch[p] for p in launched_later) > 30


def test_too_many_new_items_for_the_catalogue_is_rejected_by_name():
    with pytest.raises(ConfigError, match=r"generate.new_items_per_day=50 launches 450 items"):
        GenerateConfig(n_items=400, n_categories=8, days=10, new_items_per_day=50)
