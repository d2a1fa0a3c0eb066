"""The feedback simulator: the click model by hand, expected clicks, simulated clicks that
converge to them, reproducibility, unknown users, the pseudonym twin and the output contract."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import types as T

from recsys_spark import io, schema
from recsys_spark.config import GenerateConfig
from recsys_spark.data import feedback_sim
from recsys_spark.data.world import HOUR_WEIGHTS, build_world
from recsys_spark.errors import InputError
from recsys_spark.etl import feedback as feedback_etl
from recsys_spark.etl.pseudonym import pseudonymise

pytestmark = pytest.mark.unit

KEY = b"feedback-test-key"
# 5 days from 2019-10-01, drift 1: the late taste weighs (d + 0.5) / 5 on day d (0.5 on day 2).
CFG = GenerateConfig(n_users=2, n_items=4, n_categories=2, n_brands=2, days=5, taste_drift=1.0, n_bots=0,
                     start_date="2019-10-01")
MODEL = feedback_sim.ClickModel(position_bias=1.0, scale=1.0, popularity_weight=0.5, max_ctr=0.5, purchase_rate=0.1)
DAY2 = dt.date(2019, 10, 3)
LAST_DAY = 4


def hand_world(launch_day=None):
    """2 users, 4 items in 2 categories.

    Items: category [0, 0, 1, 1], popularity [1, 0.25, 0.5, 0.125]: appeal (weight 0.5) is
    [1, 0.5, 1, 0.5]. Tastes over (category 0, category 1): user 0 early (0.8, 0.2), late
    (0.4, 0.6); user 1 early (1, 0), late (0, 1).
    """
    return dataclasses.replace(
        build_world(CFG),
        product_id=np.array([101, 102, 103, 104], dtype=np.int64),
        item_category=np.array([0, 0, 1, 1], dtype=np.int32),
        popularity=np.array([1.0, 0.25, 0.5, 0.125]),
        user_id=np.array([7, 8], dtype=np.int64),
        taste_early=np.array([0.8, 1.0, 2.0, 2.0]),  # user + cumulative taste, row by row
        taste_late=np.array([0.4, 1.0, 1.0, 2.0]),
        item_launch_day=launch_day,
    )


# The hand lists: user 0 gets items [1, 2, 3], user 1 gets [3, 0] and an empty slot.
LIST_USERS = np.array([0, 1])
LIST_ITEMS = np.array([[1, 2, 3], [3, 0, schema.EMPTY_SLOT]])
# Day 2, tastes (0.6, 0.4) and (0.5, 0.5); relevance = min(taste * appeal, 0.5); examine 1, 1/2, 1/3:
# user 0: 0.6 * 0.5 + 0.4 * 1 / 2 + 0.4 * 0.5 / 3 = 0.3 + 0.2 + 1/15; user 1: 0.25 + 0.5 / 2 + 0.
EXPECTED_DAY2 = np.array([0.3 + 0.2 + 1 / 15, 0.5])


def recommendations(world, users, items, run_date, policy="greedy"):
    """Recommendation rows for world user rows and item rows [n, k] (-1 slots left out)."""
    rows = [
        {schema.USER_ID: feedback_sim.pseudonyms(world.user_id[[u]], KEY)[0], schema.ITEM_ID: int(world.product_id[i]),
         schema.RUN_DATE: run_date, schema.SLOT: slot, schema.PROPENSITY: 1.0 / (1 + slot), schema.POLICY: policy,
         schema.POLICY_VERSION: "v1:abc"}
        for u, row in zip(users, items) for slot, i in enumerate(row) if i != schema.EMPTY_SLOT
    ]
    return pd.DataFrame(rows)


def test_examine_falls_with_the_slot_by_the_position_bias():
    np.testing.assert_allclose(MODEL.examine(np.array([0, 1, 2, 3])), [1, 1 / 2, 1 / 3, 1 / 4])
    np.testing.assert_allclose(feedback_sim.ClickModel(position_bias=2.0).examine(np.array([0, 2])), [1, 1 / 9])
    np.testing.assert_allclose(feedback_sim.ClickModel(position_bias=0.0).examine(np.array([0, 5])), [1, 1])


def test_relevance_is_the_days_taste_times_appeal_clipped():
    world = hand_world()
    items = np.arange(4)[None, :]
    # Day 2 (late weight 0.5): user 0 (0.6, 0.4) -> 0.6 clipped to 0.5, 0.3, 0.4, 0.2.
    np.testing.assert_allclose(MODEL.relevance(world, CFG, np.array([[0], [1]]), items, 2),
                               [[0.5, 0.3, 0.4, 0.2], [0.5, 0.25, 0.5, 0.25]])
    # Day 0 (late weight 0.1): user 1 tastes (0.9, 0.1); day 4 (0.9): (0.1, 0.9).
    np.testing.assert_allclose(MODEL.relevance(world, CFG, 1, items, 0)[0], [0.5, 0.45, 0.1, 0.05])
    np.testing.assert_allclose(MODEL.relevance(world, CFG, 1, items, 4)[0], [0.1, 0.05, 0.5, 0.45])
    # Appeal off, scale 0.5: half the taste.
    flat = feedback_sim.ClickModel(popularity_weight=0.0, scale=0.5)
    np.testing.assert_allclose(flat.relevance(world, CFG, 0, items, 2)[0], [0.3, 0.3, 0.2, 0.2])
    assert feedback_sim.drift_weight(CFG, 2) == pytest.approx(0.5)


def test_an_item_not_launched_yet_has_no_relevance():
    world = hand_world(launch_day=np.array([0, 0, 3, 0], dtype=np.int32))
    assert MODEL.relevance(world, CFG, 0, 2, 2) == 0.0
    assert MODEL.relevance(world, CFG, 0, 2, 3) > 0.0


def test_expected_clicks_by_hand_for_two_users_and_three_slots():
    np.testing.assert_allclose(feedback_sim.expected_clicks(hand_world(), CFG, (LIST_USERS, LIST_ITEMS), MODEL, 2),
                               EXPECTED_DAY2)


def test_policy_value_is_the_mean_expected_clicks_per_list():
    world = hand_world()
    frame = recommendations(world, LIST_USERS, LIST_ITEMS, DAY2)
    assert feedback_sim.policy_value(world, CFG, frame, MODEL, KEY) == pytest.approx(EXPECTED_DAY2.mean())
    # The same lists again a day after the log's end are valued on its last day.
    later = pd.concat([frame, frame.assign(**{schema.RUN_DATE: dt.date(2019, 12, 1)})])
    last = feedback_sim.expected_clicks(world, CFG, (LIST_USERS, LIST_ITEMS), MODEL, LAST_DAY)
    expected = (EXPECTED_DAY2.sum() + last.sum()) / 4
    assert feedback_sim.policy_value(world, CFG, later, MODEL, KEY) == pytest.approx(expected)


def test_run_dates_map_to_days_clamped_after_the_log():
    assert feedback_sim.day_of(CFG, dt.date(2019, 10, 1)) == 0
    assert feedback_sim.day_of(CFG, DAY2) == 2
    assert feedback_sim.day_of(CFG, dt.date(2020, 1, 1)) == LAST_DAY
    with pytest.raises(InputError, match="before generate.start_date"):
        feedback_sim.day_of(CFG, dt.date(2019, 9, 30))


def test_simulated_clicks_converge_to_the_expected_clicks():
    world = hand_world()
    # 3000 run dates after the log's end: every one is valued on the last day, each its own draw.
    dates = [dt.date(2019, 10, 6) + dt.timedelta(days=i) for i in range(3000)]
    one = recommendations(world, LIST_USERS, LIST_ITEMS, DAY2)
    frame = pd.concat([one] * len(dates), ignore_index=True).assign(**{schema.RUN_DATE: np.repeat(dates, len(one))})
    feedback = feedback_sim.simulate_feedback(world, CFG, frame, MODEL, KEY, seed=11)

    p = MODEL.click_probability(world, CFG, LIST_USERS[:, None], LIST_ITEMS, np.arange(3)[None, :], LAST_DAY)
    p = p[LIST_ITEMS != schema.EMPTY_SLOT]
    expected, se = len(dates) * p.sum(), np.sqrt(len(dates) * (p * (1 - p)).sum())
    assert abs(feedback[schema.CLICKED].sum() - expected) < 4 * se
    # Per slot of user 0 as well: the position bias is in the draws, not only in the sum.
    user0 = feedback[feedback[schema.USER_ID] == feedback_sim.pseudonyms(world.user_id[:1], KEY)[0]]
    for slot, q in enumerate(p[:3]):
        got = user0[user0[schema.SLOT] == slot]
        assert len(got) == len(dates)
        assert abs(got[schema.CLICKED].sum() - len(dates) * q) < 4 * np.sqrt(len(dates) * q * (1 - q))
    # Purchases: only of clicks, at purchase_rate.
    clicks = int(feedback[schema.CLICKED].sum())
    assert not (feedback[schema.PURCHASED] & ~feedback[schema.CLICKED]).any()
    rate = MODEL.purchase_rate
    assert abs(feedback[schema.PURCHASED].sum() - clicks * rate) < 4 * np.sqrt(clicks * rate * (1 - rate))


def test_the_same_seed_gives_the_same_feedback_whatever_the_row_order_or_the_other_users():
    cfg = GenerateConfig(n_users=200, n_items=100, n_categories=8, n_brands=10, days=6, n_bots=0)
    world = build_world(cfg)
    items = np.argsort(np.random.default_rng(0).random((200, 100)), axis=1)[:, :10]
    frame = recommendations(world, np.arange(200), items, dt.date(2019, 10, 4))
    first = feedback_sim.simulate_feedback(world, cfg, frame, feedback_sim.ClickModel(), KEY, seed=5)
    assert first[schema.CLICKED].sum() > 0
    shuffled = frame.sample(frac=1.0, random_state=3)
    again = feedback_sim.simulate_feedback(world, cfg, shuffled, feedback_sim.ClickModel(), KEY, seed=5)
    pd.testing.assert_frame_equal(again, first)
    # A user's feedback does not depend on who else is in the frame.
    some = frame[frame[schema.USER_ID].isin(frame[schema.USER_ID].unique()[:50])]
    part = feedback_sim.simulate_feedback(world, cfg, some, feedback_sim.ClickModel(), KEY, seed=5)
    pd.testing.assert_frame_equal(part, first[first[schema.USER_ID].isin(part[schema.USER_ID])].reset_index(drop=True))
    other = feedback_sim.simulate_feedback(world, cfg, frame, feedback_sim.ClickModel(), KEY, seed=6)
    assert not other[schema.CLICKED].equals(first[schema.CLICKED])
    assert not other[schema.SHOWN_AT].equals(first[schema.SHOWN_AT])


def test_users_not_in_the_world_are_skipped_and_counted():
    world = hand_world()
    frame = recommendations(world, LIST_USERS, LIST_ITEMS, DAY2)
    stranger = frame.iloc[:3].assign(**{schema.USER_ID: "ffffffffffffffff"})
    feedback = feedback_sim.simulate_feedback(world, CFG, pd.concat([frame, stranger]), MODEL, KEY, seed=1)
    assert len(feedback) == len(frame) == 5
    assert feedback.attrs == {"unknown_users": 1, "unknown_rows": 3}
    asked = np.array([frame[schema.USER_ID][3], "ffffffffffffffff", frame[schema.USER_ID][0]], dtype=object)
    assert list(feedback_sim.user_index(world, asked, KEY)) == [1, -1, 0]
    # Another key: nobody is known.
    assert list(feedback_sim.user_index(world, frame[schema.USER_ID].to_numpy(), b"other")) == [-1] * 5


def test_bad_recommendations_are_refused_by_name():
    world = hand_world()
    frame = recommendations(world, LIST_USERS, LIST_ITEMS, DAY2)
    with pytest.raises(InputError, match="policy_version missing"):
        feedback_sim.simulate_feedback(world, CFG, frame.drop(columns=[schema.POLICY_VERSION]), MODEL, KEY, seed=1)
    with pytest.raises(InputError, match="not the world's, e.g. item_id 999"):
        feedback_sim.simulate_feedback(world, CFG, frame.assign(**{schema.ITEM_ID: 999}), MODEL, KEY, seed=1)
    with pytest.raises(InputError, match=r"\(list, slot\) repeat"):
        feedback_sim.simulate_feedback(world, CFG, pd.concat([frame, frame.iloc[:1]]), MODEL, KEY, seed=1)
    early = frame.assign(**{schema.RUN_DATE: dt.date(2019, 9, 30)})
    with pytest.raises(InputError, match="2019-09-30 is before"):
        feedback_sim.simulate_feedback(world, CFG, early, MODEL, KEY, seed=1)
    with pytest.raises(ValueError, match="max_ctr"):
        feedback_sim.ClickModel(max_ctr=0.0)


def test_pseudonyms_equal_the_spark_hmac_of_clean(spark):
    ids = [541312140, 7, 0, 9_000_000_000_000, -12]
    df = spark.createDataFrame([(i,) for i in ids], T.StructType([T.StructField(schema.USER_ID, T.LongType(), False)]))
    spark_ids = [r[schema.USER_ID] for r in pseudonymise(df, schema.USER_ID, KEY).collect()]
    assert list(feedback_sim.pseudonyms(np.array(ids), KEY)) == spark_ids
    assert all(len(p) == 16 for p in spark_ids)


def test_shown_at_is_one_moment_of_the_run_date_per_list():
    world = hand_world()
    frame = recommendations(world, LIST_USERS, LIST_ITEMS, DAY2)
    feedback = feedback_sim.simulate_feedback(world, CFG, frame, MODEL, KEY, seed=2)
    shown, midnight = feedback[schema.SHOWN_AT], pd.Timestamp(DAY2, tz="UTC")
    assert ((shown >= midnight) & (shown < midnight + pd.Timedelta(days=1))).all()
    assert (feedback.groupby(schema.USER_ID)[schema.SHOWN_AT].nunique() == 1).all()
    # The hour profile: u = 0 is the first second, u -> 1 the last; a u just past the first
    # hour's share of the day lands at 01:00:00.
    first_hour = 1.0 / np.sum(HOUR_WEIGHTS) * HOUR_WEIGHTS[0]
    assert list(feedback_sim.shown_second(np.array([0.0, 1 - 1e-12, first_hour + 1e-12]))) == [0, 86_399, 3600]


PANDAS_DTYPES = {
    T.StringType(): "object", T.LongType(): "int64", T.IntegerType(): "int32", T.DoubleType(): "float64",
    T.DateType(): "object", T.TimestampType(): "datetime64[ns, UTC]", T.BooleanType(): "bool",
}


def test_output_columns_and_dtypes_are_the_contracts():
    world = hand_world()
    frame = recommendations(world, LIST_USERS, LIST_ITEMS, DAY2)
    feedback = feedback_sim.simulate_feedback(world, CFG, frame, MODEL, KEY, seed=3)
    assert list(feedback.columns) == schema.FEEDBACK_SCHEMA.fieldNames()
    assert {c: str(t) for c, t in feedback.dtypes.items()} == {
        f.name: PANDAS_DTYPES[f.dataType] for f in schema.FEEDBACK_SCHEMA.fields
    }
    assert set(feedback[schema.RUN_DATE]) == {DAY2}
    # Rows are sorted by run_date, user, policy, slot; item, propensity and policy are copied.
    by_user = dict(zip(feedback_sim.pseudonyms(world.user_id, KEY), ([102, 103, 104], [104, 101])))
    for user, rows in feedback.groupby(schema.USER_ID):
        assert list(rows[schema.SLOT]) == list(range(len(by_user[user])))
        assert list(rows[schema.ITEM_ID]) == by_user[user]
        assert list(rows[schema.PROPENSITY]) == [1 / (1 + s) for s in rows[schema.SLOT]]
    assert set(feedback[schema.POLICY]) == {"greedy"} and set(feedback[schema.POLICY_VERSION]) == {"v1:abc"}


def test_written_feedback_reads_back_in_spark_as_the_contract(spark, tmp_path):
    world = hand_world()
    frame = pd.concat([recommendations(world, LIST_USERS, LIST_ITEMS, d) for d in (DAY2, dt.date(2019, 10, 4))])
    feedback = feedback_sim.simulate_feedback(world, CFG, frame, MODEL, KEY, seed=4)
    path = str(tmp_path / "feedback")
    assert feedback_sim.write_feedback(None, feedback, path) == ["2019-10-03", "2019-10-04"]
    # A re-run of one date replaces that date only.
    again = feedback_sim.simulate_feedback(world, CFG, frame.iloc[:5], MODEL, KEY, seed=9)
    feedback_sim.write_feedback(None, again.iloc[:2], path)

    # What clean reads (io.read_feedback): the contract's types, no conversion needed.
    read = io.read_feedback(spark, path).drop(schema.SOURCE_FILE)
    assert [(f.name, f.dataType) for f in read.schema] == [(f.name, f.dataType) for f in schema.FEEDBACK_SCHEMA]
    counts = {r[schema.RUN_DATE]: r["count"] for r in read.groupBy(schema.RUN_DATE).count().collect()}
    assert counts == {DAY2: 2, dt.date(2019, 10, 4): 5}
    got = read.where(read[schema.RUN_DATE] == dt.date(2019, 10, 4)).toPandas()
    expected = feedback[feedback[schema.RUN_DATE] == dt.date(2019, 10, 4)]
    assert sorted(got[schema.SHOWN_AT].dt.tz_localize(None)) == sorted(expected[schema.SHOWN_AT].dt.tz_localize(None))
    assert sorted(zip(got[schema.USER_ID], got[schema.SLOT], got[schema.CLICKED])) == sorted(
        zip(expected[schema.USER_ID], expected[schema.SLOT], expected[schema.CLICKED]))
    # clean's checks against the served lists: every simulated row names a served exposure
    # with its propensity as served, so none is quarantined.
    served_fields = [schema.RECOMMENDATION_SCHEMA[c] for c in [*schema.EXPOSURE_KEY, schema.PROPENSITY]]
    served = spark.createDataFrame(frame[[f.name for f in served_fields]], T.StructType(served_fields))
    flagged = feedback_etl.flag_feedback(io.read_feedback(spark, path), feedback_etl.served_exposures(served))
    assert [r[schema.REASON] for r in flagged.select(schema.REASON).collect()] == [None] * 7


def test_default_model_gives_a_few_percent_for_good_lists_and_much_less_for_random_ones():
    cfg = GenerateConfig()
    world = build_world(cfg)
    users, k, day = np.arange(cfg.n_users), 20, cfg.days - 1
    popular = np.broadcast_to(np.argsort(-world.popularity)[:k], (cfg.n_users, k))
    random = np.random.default_rng(0).integers(0, cfg.n_items, size=(cfg.n_users, k))  # repeats are rare
    relevance = feedback_sim.ClickModel().relevance(world, cfg, users[:, None], np.arange(cfg.n_items)[None, :], day)
    best = np.argpartition(-relevance, k, axis=1)[:, :k]
    best = np.take_along_axis(best, np.argsort(-np.take_along_axis(relevance, best, 1), axis=1), 1)
    ctr = {name: feedback_sim.expected_clicks(world, cfg, (users, items), feedback_sim.ClickModel(), day).mean() / k
           for name, items in (("popular", popular), ("random", random), ("best", best))}
    assert 0.005 < ctr["popular"] < 0.03 < ctr["best"] < 0.08
    assert ctr["random"] < ctr["popular"] / 5


def test_a_uri_destination_is_written_through_spark(spark, tmp_path):
    world = hand_world()
    frame = recommendations(world, LIST_USERS, LIST_ITEMS, DAY2)
    feedback = feedback_sim.simulate_feedback(world, CFG, frame, MODEL, KEY, seed=4)
    uri = (tmp_path / "feedback").as_uri()
    with pytest.raises(InputError, match="needs a Spark session"):
        feedback_sim.write_feedback(None, feedback, uri)
    assert feedback_sim.write_feedback(spark, feedback, uri) == ["2019-10-03"]
    got = io.read_feedback(spark, uri).drop(schema.SOURCE_FILE).toPandas()
    assert sorted(zip(got[schema.USER_ID], got[schema.SLOT], got[schema.CLICKED], got[schema.RUN_DATE])) == sorted(
        zip(feedback[schema.USER_ID], feedback[schema.SLOT], feedback[schema.CLICKED], feedback[schema.RUN_DATE]))


def test_clicks_become_the_shops_own_events_one_session_per_list():
    world = hand_world()
    frame = recommendations(world, LIST_USERS, LIST_ITEMS, DAY2)  # user 0: items 1, 2, 3; user 1: 3, 0
    shown = pd.Timestamp("2019-10-03 12:00:00", tz="UTC")
    # User 0 clicks slot 0 and buys slot 1; user 1 clicks nothing.
    feedback = frame.assign(**{schema.SHOWN_AT: shown, schema.CLICKED: [True, True, False, False, False],
                               schema.PURCHASED: [False, True, False, False, False]})
    events = feedback_sim.click_events(world, feedback, KEY, seed=3)
    assert list(events.columns) == list(schema.RAW_COLUMNS)
    assert sorted(events[schema.EVENT_TYPE]) == ["cart", "purchase", "view", "view"]
    assert set(events[schema.USER_ID]) == {7}
    assert events[schema.USER_SESSION].nunique() == 1
    views = events[events[schema.EVENT_TYPE] == "view"].set_index(schema.PRODUCT_ID)[schema.EVENT_TIME]
    assert sorted(views.index) == [102, 103]
    delays = (views - shown).dt.total_seconds()
    assert ((delays >= feedback_sim.CLICK_DELAY_S[0]) & (delays <= feedback_sim.CLICK_DELAY_S[1])).all()
    bought = events[events[schema.PRODUCT_ID] == 103].set_index(schema.EVENT_TYPE)[schema.EVENT_TIME]
    assert (bought["cart"] - bought["view"]).total_seconds() == feedback_sim.CART_AFTER_VIEW_S
    assert (bought["purchase"] - bought["cart"]).total_seconds() == feedback_sim.PURCHASE_AFTER_CART_S
    # Category and price are the world's for the item (103 is item 2, category 1).
    row = events[events[schema.PRODUCT_ID] == 103].iloc[0]
    assert row[schema.CATEGORY_ID] == world.category_id[1] and row[schema.PRICE] == world.price[2]
    assert events[schema.EVENT_TIME].is_monotonic_increasing
    # No click, no event; a stranger's click is refused.
    assert len(feedback_sim.click_events(world, feedback.assign(**{schema.CLICKED: False}), KEY, seed=3)) == 0
    stranger = feedback.assign(**{schema.USER_ID: "ffffffffffffffff"})
    with pytest.raises(InputError, match="2 clicked row"):
        feedback_sim.click_events(world, stranger, KEY, seed=3)
    # From the simulator's own rows: each click's view falls within minutes of its exposure.
    simulated = feedback_sim.simulate_feedback(world, CFG, pd.concat([frame] * 1, ignore_index=True),
                                               feedback_sim.ClickModel(scale=5.0), KEY, seed=2)
    clicked = simulated[simulated[schema.CLICKED]]
    views = feedback_sim.click_events(world, simulated, KEY, seed=1).query(f"{schema.EVENT_TYPE} == 'view'")
    assert len(views) == len(clicked) > 0
    assert views[schema.EVENT_TIME].dt.date.isin([DAY2, DAY2 + dt.timedelta(days=1)]).all()
