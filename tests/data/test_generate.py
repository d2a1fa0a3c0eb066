"""The synthetic clickstream: the raw contract, determinism, dirt counts and its structure."""

from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys_spark import schema as S
from recsys_spark.config import Config, GenerateConfig, PathsConfig
from recsys_spark.data import generate as G
from recsys_spark.errors import ConfigError

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
    return pd.concat([events for _, events in G.generate_events(cfg)], ignore_index=True)


@pytest.fixture(scope="module")
def dirty_csv(tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("dirty"), **DIRTY)
    summary = G.run(None, cfg)
    return cfg, summary


def test_clean_csv_matches_the_raw_contract(tmp_path):
    cfg = _config(tmp_path, **NO_DIRT)
    summary = G.run(None, cfg)

    raw = Path(summary["raw_path"])
    assert raw == tmp_path / "raw"
    assert [p.name for p in _files(raw)] == [f"events-2019-10-0{d}.csv" for d in range(1, 7)]
    assert summary["files"] == 6 and summary["days"] == 6
    df = pd.concat([pd.read_csv(p) for p in _files(raw)], ignore_index=True)
    assert list(df.columns) == S.RAW_COLUMNS
    assert len(df) == summary["events"]
    assert df[S.EVENT_TIME].str.match(TIME_RE.pattern).all()
    assert set(df[S.EVENT_TYPE]) == set(S.EVENT_TYPES)
    for column in (S.PRODUCT_ID, S.CATEGORY_ID, S.USER_ID):
        assert df[column].dtype == np.int64
    assert (df[S.CATEGORY_ID] > 2**60).all()
    assert df[S.PRICE].dtype == np.float64 and (df[S.PRICE] > 0).all()
    assert np.allclose(df[S.PRICE], df[S.PRICE].round(2))
    codes = df[S.CATEGORY_CODE].dropna()
    assert 0 < len(codes) < len(df) and codes.str.match(r"^[a-z_]+(\.[a-z_0-9]+)+$").all()
    brands = df[S.BRAND].dropna()
    assert 0 < len(brands) < len(df) and (brands == brands.str.lower()).all()
    assert df[S.USER_SESSION].str.match(UUID_RE.pattern).all()
    assert summary["users"] == df[S.USER_ID].nunique()
    assert summary["items"] == df[S.PRODUCT_ID].nunique()
    assert summary["dirt"] == {
        "duplicates": 0, "malformed": 0, "null_ids": 0, "unknown_event_types": 0, "bot_events": 0, "missing_sessions": 0
    }  # fmt: skip
    for path in _files(raw):  # every line of a day's file lies in that day, in time order
        day = path.name.removeprefix("events-").removesuffix(".csv")
        times = pd.read_csv(path)[S.EVENT_TIME]
        assert times.str.startswith(day).all() and times.is_monotonic_increasing


def test_every_kind_of_dirt_is_present_in_the_stated_counts(dirty_csv):
    cfg, summary = dirty_csv
    bots = {str(b) for b in G.build_world(cfg.generate).bot_user_ids}
    rows = []
    for path in _files(Path(summary["raw_path"])):
        lines = _csv_lines(path)
        assert lines[0] == S.RAW_COLUMNS
        rows += lines[1:]
    good = [r for r in rows if len(r) == len(S.RAW_COLUMNS)]
    col = {c: i for i, c in enumerate(S.RAW_COLUMNS)}
    counted = {
        "duplicates": len(good) - len({tuple(r) for r in good}),
        "malformed": len(rows) - len(good),
        "null_ids": sum(r[col[S.USER_ID]] == "" or r[col[S.PRODUCT_ID]] == "" for r in good),
        "unknown_event_types": sum(r[col[S.EVENT_TYPE]] not in S.EVENT_TYPES for r in good),
        "bot_events": sum(r[col[S.USER_ID]] in bots for r in good),
        "missing_sessions": sum(r[col[S.USER_SESSION]] == "" for r in good),
    }
    assert counted == summary["dirt"]
    assert all(n > 0 for n in counted.values()), counted
    assert summary["events"] == len(rows)
    assert {r[col[S.EVENT_TYPE]] for r in good} - set(S.EVENT_TYPES) <= set(G.UNKNOWN_EVENT_TYPES)


def test_bots_view_hundreds_of_distinct_items_seconds_apart(dirty_csv):
    cfg, summary = dirty_csv
    gen = cfg.generate
    events = _all_events(gen)
    bot_events = events[events[S.USER_ID].isin(G.build_world(gen).bot_user_ids)]
    assert len(bot_events) == summary["dirt"]["bot_events"]
    sessions = bot_events.groupby(S.USER_SESSION)
    assert len(sessions) == gen.days // 3  # one burst on a third of the days
    for _, burst in sessions:
        assert min(G.BOT_VIEWS[0], gen.n_items) <= len(burst) == burst[S.PRODUCT_ID].nunique()
        assert (burst[S.EVENT_TYPE] == "view").all()
        gaps = burst[S.EVENT_TIME].diff().dropna().dt.total_seconds()
        assert gaps.between(1, 4).all()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    first = G.run(None, _config(tmp_path / "a", **DIRTY))
    second = G.run(None, _config(tmp_path / "b", **DIRTY))
    third = G.run(None, _config(tmp_path / "c", seed=7, **DIRTY))

    a, b, c = (_files(Path(s["raw_path"])) for s in (first, second, third))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert first == {**second, "raw_path": first["raw_path"]}
    assert [p.name for p in a] == [p.name for p in c]
    assert all(p.read_bytes() != q.read_bytes() for p, q in zip(a, c))


def test_gzip_csv_is_readable_and_deterministic(tmp_path):
    summary = G.run(None, _config(tmp_path / "a", compression="gzip", **NO_DIRT))
    again = G.run(None, _config(tmp_path / "b", compression="gzip", **NO_DIRT))

    files = _files(Path(summary["raw_path"]))
    assert [p.name for p in files] == [f"events-2019-10-0{d}.csv.gz" for d in range(1, 7)]
    df = pd.concat([pd.read_csv(p) for p in files])
    assert list(df.columns) == S.RAW_COLUMNS and len(df) == summary["events"]
    assert [p.read_bytes() for p in files] == [p.read_bytes() for p in _files(Path(again["raw_path"]))]


def test_json_lines_are_readable_and_malformed_ones_counted(tmp_path):
    summary = G.run(None, _config(tmp_path, format="json", **DIRTY))

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
    assert all(list(r) == S.RAW_COLUMNS for r in records)
    clean = [r for r in records if r[S.USER_ID] is not None and r[S.PRODUCT_ID] is not None]
    assert len(records) - len(clean) == summary["dirt"]["null_ids"]
    assert all(isinstance(r[S.PRODUCT_ID], int) and isinstance(r[S.PRICE], float) for r in clean)
    assert sum(r[S.USER_SESSION] is None for r in records) == summary["dirt"]["missing_sessions"]
    assert all(TIME_RE.match(r[S.EVENT_TIME]) for r in records)


def test_rerun_replaces_the_files_of_each_day(tmp_path):
    first = G.run(None, _config(tmp_path, **DIRTY))
    before = {p.name: p.read_bytes() for p in _files(Path(first["raw_path"]))}
    again = G.run(None, _config(tmp_path, **DIRTY))
    assert {p.name: p.read_bytes() for p in _files(Path(again["raw_path"]))} == before

    as_json = G.run(None, _config(tmp_path, format="json", days=3, **DIRTY))
    names = [p.name for p in _files(Path(as_json["raw_path"]))]
    assert names == [f"events-2019-10-0{d}.json" for d in (1, 2, 3)] + [f"events-2019-10-0{d}.csv" for d in (4, 5, 6)]


def test_a_uri_destination_is_written_through_spark(spark, tmp_path):
    cfg = Config(
        paths=PathsConfig(root=(tmp_path / "work").as_uri()),
        generate=GenerateConfig(**{**TINY, "days": 2, **DIRTY}),
    )
    summary = G.run(spark, cfg)

    assert summary["raw_path"] == (tmp_path / "work").as_uri() + "/raw"
    lines = spark.read.text(summary["raw_path"]).collect()
    header = ",".join(S.RAW_COLUMNS)
    assert sum(r.value == header for r in lines) == 2
    assert len(lines) - 2 == summary["events"]
    visible = sorted(p.name for p in (tmp_path / "work" / "raw").iterdir() if not p.name.startswith("."))
    assert visible == ["events-2019-10-01.csv", "events-2019-10-02.csv"]
    local = G.run(None, _config(tmp_path / "local", **{"days": 2, **DIRTY}))
    for name in visible:  # the same bytes as a local run
        assert (tmp_path / "work" / "raw" / name).read_bytes() == (Path(local["raw_path"]) / name).read_bytes()


def test_popularity_is_zipf_like():
    def top_decile_share(exponent: float) -> float:
        events = _all_events(GenerateConfig(**{**TINY, **NO_DIRT, "zipf_exponent": exponent}))
        counts = events[S.PRODUCT_ID].value_counts()
        return counts.iloc[: TINY["n_items"] // 10].sum() / counts.sum()

    # The 12 most popular of 120 items hold 63% of the Zipf(1.1) weight, 10% of a flat one.
    assert top_decile_share(1.1) > 0.45
    assert top_decile_share(0.0) < 0.25


def test_a_purchase_or_removal_follows_a_cart_in_the_same_session():
    events = _all_events(GenerateConfig(**{**TINY, **NO_DIRT, "p_cart": 0.5, "p_purchase": 0.5}))
    key = [S.USER_SESSION, S.PRODUCT_ID]
    carts = events[events[S.EVENT_TYPE] == "cart"].groupby(key)[S.EVENT_TIME].min().rename("first_cart")
    for kind in ("purchase", "remove_from_cart"):
        after = events[events[S.EVENT_TYPE] == kind].join(carts, on=key)
        assert len(after) > 20
        assert (after[S.EVENT_TIME] > after["first_cart"]).all()  # NaT (no cart) compares False
    gaps = events.sort_values([S.USER_SESSION, S.EVENT_TIME]).groupby(S.USER_SESSION)[S.EVENT_TIME].diff()
    seconds = gaps.dropna().dt.total_seconds()
    assert seconds.between(1, G.MAX_VIEW_GAP_S + 60).all()
    assert seconds.median() < 120


def test_next_item_follows_the_complement_or_category_rule():
    base = {**TINY, **NO_DIRT, "p_cart": 0.0, "p_repeat_view": 0.0}

    def consecutive(cfg: GenerateConfig) -> tuple[G.World, pd.DataFrame]:
        world = G.build_world(cfg)
        views = _all_events(cfg).sort_values([S.USER_SESSION, S.EVENT_TIME], kind="stable")
        index = pd.Series(np.arange(world.n_items), index=world.product_id)
        views["item"] = index[views[S.PRODUCT_ID]].to_numpy()
        views["prev"] = views.groupby(S.USER_SESSION)["item"].shift(1)
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
        views = events[events[S.EVENT_TYPE] == "view"]
        week = np.where(views[S.EVENT_TIME] < pd.Timestamp("2019-10-08", tz="UTC"), "first", "last")
        shares = views.groupby([views[S.USER_ID], week])[S.CATEGORY_ID].value_counts(normalize=True)
        counts = views.groupby([views[S.USER_ID], week]).size().unstack()
        active = counts[(counts >= 10).all(axis=1)].index
        shares = shares.unstack(fill_value=0.0).loc[active]
        first = shares.xs("first", level=1)
        last = shares.xs("last", level=1)
        return float(0.5 * (first - last).abs().sum(axis=1).mean())

    # Sampling noise alone moves ~0.18 of the mass; a drifting taste moves clearly more.
    assert mean_category_shift(0.6) > mean_category_shift(0.0) + 0.07


def test_out_of_range_settings_are_rejected_by_name():
    with pytest.raises(ConfigError, match="generate.p_cart"):
        G.validate(GenerateConfig(p_cart=1.5))
    with pytest.raises(ConfigError, match="generate.n_items"):
        G.validate(GenerateConfig(n_items=5, n_categories=10))
