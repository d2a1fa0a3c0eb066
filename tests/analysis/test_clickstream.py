"""Clickstream summaries on ten hand-written events, against hand-computed figures."""

from __future__ import annotations

import datetime as dt

import pytest

from recsys_spark import schema
from recsys_spark.analysis import clickstream
from recsys_spark.errors import ConfigError

pytestmark = pytest.mark.unit

# (user, session, day, time, event, product, category_code, brand)
EVENTS = [
    ("u1", "s1", 1, "10:00", "view", 1, "a.b", "x"),
    ("u1", "s1", 1, "10:05", "view", 2, "c", None),
    ("u1", "s1", 1, "10:06", "cart", 2, None, "y"),
    ("u1", "s1", 1, "10:10", "purchase", 2, "c", "y"),
    ("u1", "s2", 8, "09:00", "view", 1, "a.b", "x"),
    ("u2", "s3", 1, "12:00", "view", 1, "a.b", "x"),
    ("u2", "s3", 1, "12:01", "cart", 3, "d", "z"),
    ("u2", "s4", 2, "08:00", "cart", 3, "d", "z"),  # a cart without a view in its session
    ("u3", "s5", 8, "15:00", "view", 3, "d", "z"),
    ("u3", "s5", 8, "15:30", "view", 1, "a.b", "x"),
]


@pytest.fixture(scope="module")
def events(spark):
    rows = []
    for user, session, day, hhmm, event, product, category, brand in EVENTS:
        date = dt.date(2019, 10, day)
        time = dt.datetime.combine(date, dt.time.fromisoformat(hhmm))
        rows.append((time, event, product, 10 * product, category, brand, 1.0, user, session, date))
    return spark.createDataFrame(rows, schema.CLEAN_SCHEMA)


def records(df) -> list[tuple]:
    return [tuple(r) for r in df.collect()]


def test_event_counts(events):
    assert records(clickstream.event_counts(events)) == [
        ("view", 6, 3, 4, 0.6), ("cart", 3, 2, 3, 0.3), ("purchase", 1, 1, 1, 0.1)
    ]


def test_funnel_counts_sessions_that_reached_every_stage_before(events):
    assert records(clickstream.event_funnel(events)) == [
        ("view", 4, 3, 1.0, 1.0), ("cart", 2, 2, 0.5, 0.5), ("purchase", 1, 1, 0.25, 0.5)
    ]


def test_sessions_and_their_summary(events):
    per_session = clickstream.sessions(events)
    got = {r[schema.SESSION_ID]: (r["events"], r["items"], r["duration_s"], r["purchased"]) for r in per_session.collect()}
    assert got == {
        "s1": (4, 2, 600.0, True), "s2": (1, 1, 0.0, False), "s3": (2, 2, 60.0, False),
        "s4": (1, 1, 0.0, False), "s5": (2, 2, 1800.0, False),
    }
    summary = clickstream.session_summary(per_session).first().asDict()
    assert summary == {"sessions": 5, "users": 3, "sessions_per_user": pytest.approx(5 / 3), "mean_events": 2.0,
                       "median_events": 2.0, "median_duration_s": 60.0, "purchase_rate": 0.2}


def test_popularity_curve_and_long_tail(events):
    popularity = clickstream.item_popularity(events)
    got = [(r["rank"], r[schema.PRODUCT_ID], r["interactions"]) for r in popularity.collect()]
    assert got == [(1, 1, 4), (2, 2, 3), (3, 3, 3)]  # the tie of 2 and 3 goes by product_id
    shares = [x for r in popularity.collect() for x in (r["share"], r["cumulative_share"], r["item_share"])]
    assert shares == pytest.approx([0.4, 0.4, 1 / 3, 0.3, 0.7, 2 / 3, 0.3, 1.0, 1.0])

    tail = clickstream.long_tail(popularity, head_item_share=0.34, covered_share=0.7).first().asDict()
    assert tail == {"items": 3, "head_items": 1, "head_interaction_share": pytest.approx(0.4),
                    "items_for_covered_share": 2, "single_interaction_items": 0}
    with pytest.raises(ConfigError, match="head_item_share must be in"):
        clickstream.long_tail(popularity, head_item_share=0.0)


def test_active_users_by_day_week_and_month(events):
    day = dt.date
    assert records(clickstream.active_users(events, "day")) == [(day(2019, 10, 1), 2), (day(2019, 10, 2), 1),
                                                      (day(2019, 10, 8), 2)]
    # Weeks start on Monday: 2019-10-01 is a Tuesday.
    assert records(clickstream.active_users(events, "week")) == [(day(2019, 9, 30), 2), (day(2019, 10, 7), 2)]
    assert records(clickstream.active_users(events, "month")) == [(day(2019, 10, 1), 3)]
    with pytest.raises(ConfigError, match="period 'year' is not one of day, week, month"):
        clickstream.active_users(events, "year")


def test_stickiness_is_mean_dau_over_mau(events):
    [(month, mau, mean_dau, ratio)] = records(clickstream.stickiness(events))
    assert (month, mau) == (dt.date(2019, 10, 1), 3)
    assert (mean_dau, ratio) == pytest.approx((5 / 3, 5 / 9))


def test_cohort_retention(events):
    day = dt.date
    weekly = records(clickstream.cohort_retention(events, "week"))
    assert weekly == [(day(2019, 9, 30), 0, 2, 2, 1.0), (day(2019, 9, 30), 1, 1, 2, 0.5),
                      (day(2019, 10, 7), 0, 1, 1, 1.0)]
    daily = records(clickstream.cohort_retention(events, "day"))
    assert daily == [(day(2019, 10, 1), 0, 2, 2, 1.0), (day(2019, 10, 1), 1, 1, 2, 0.5),
                     (day(2019, 10, 1), 7, 1, 2, 0.5), (day(2019, 10, 8), 0, 1, 1, 1.0)]
    assert records(clickstream.cohort_retention(events, "month")) == [(day(2019, 10, 1), 0, 3, 3, 1.0)]


def test_item_catalogue_takes_the_largest_non_null_label(events):
    got = sorted(records(clickstream.item_catalogue(events)))
    assert got == [(1, "a.b", "x"), (2, "c", "y"), (3, "d", "z")]
