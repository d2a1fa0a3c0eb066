"""The data-quality report and its thresholds, on six hand-counted events."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from recsys_spark import schema
from recsys_spark.config import load_config
from recsys_spark.errors import ConfigError, DataQualityError
from recsys_spark.features.quality import PSI_FLOOR, evaluate_checks, psi, quality_report, raise_on_failure
from recsys_spark.features.sequences import STEP_TIME
from tests.features.test_featurize import BUY, CART, CUTOFFS, VIEW, clean_events
from tests.test_config import overrides_in

pytestmark = pytest.mark.unit

THRESHOLDS = {"dq_max_null_rate": {"brand": 0.5, "price": 0.5}, "dq_max_event_mix_psi": 0.25,
              "dq_max_popularity_psi": 1.0, "dq_max_oov_rate": 0.6}


def test_psi_of_two_histograms():
    assert math.isclose(psi({"a": 50, "b": 50}, {"a": 80, "b": 20}), 0.3 * math.log(0.8 / 0.5) + 0.3 * math.log(0.5 / 0.2))
    assert psi({"a": 3, "b": 1}, {"a": 0.75, "b": 0.25}) == 0.0
    # Disjoint bins: each side's share is floored.
    assert math.isclose(psi({"a": 1}, {"b": 1}), 2 * (1 - PSI_FLOOR) * math.log(1 / PSI_FLOOR))
    assert psi({}, {"a": 1}) == 0.0


def _report(spark):
    events = clean_events(spark, [
        ("u1", "2024-01-01 10:00:00", VIEW, 10, 7, "acme", 5.0),
        ("u1", "2024-01-02 10:00:00", BUY, 10, 7, None, 5.0),
        ("u2", "2024-01-02 12:00:00", CART, 20, None, None, None),
        ("u1", "2024-01-04 10:00:00", VIEW, 20, 8, "acme", 9.0),  # validation
        ("u2", "2024-01-05 10:00:00", VIEW, 10, 7, "acme", 5.0),  # test
        ("u2", "2024-01-06 10:00:00", VIEW, 30, 7, "acme", 5.0),  # test
    ])
    steps = events.select(schema.PRODUCT_ID, F.col(schema.EVENT_TIME).alias(STEP_TIME))
    vocab = spark.createDataFrame([(10,)], "product_id long")
    return quality_report(events, steps, vocab, CUTOFFS, top_k=1)


def test_quality_report_counts_nulls_mix_oov_and_drift(spark):
    report = _report(spark)
    assert report["rows"] == 6
    assert {c: report["null_rate"][c] for c in (schema.CATEGORY_ID, schema.BRAND, schema.PRICE, schema.USER_ID)} == {
        schema.CATEGORY_ID: 1 / 6, schema.BRAND: 2 / 6, schema.PRICE: 1 / 6, schema.USER_ID: 0.0}
    assert report["cardinality"] == {"users": 2, "items": 3, "categories": 2, "brands": 1, "sessions": 2}
    assert report["events"] == {"train": 3, "validation": 1, "test": 2}
    assert report["event_mix"]["train"] == {VIEW: 1 / 3, CART: 1 / 3, "remove_from_cart": 0.0, BUY: 1 / 3}
    assert report["event_mix"]["test"][VIEW] == 1.0
    # Steps outside the vocabulary {10}: train 20 (1 of 3), validation 20 (1 of 1), test 30 (1 of 2).
    assert report["oov_rate"] == {"train": 1 / 3, "validation": 1.0, "test": 0.5}
    # Event mix: train 1/3 each of view, cart, purchase; later periods all views.
    third = 1 / 3
    mix = (third - 1) * math.log(third) + 2 * (third - PSI_FLOOR) * math.log(third / PSI_FLOOR)
    assert math.isclose(report["drift"]["event_mix_psi"]["test"], mix)
    # Popularity bins: the top-1 training item (10) and "other": train 2:1, test 1:1, validation 0:1.
    test_pop = (2 / 3 - 1 / 2) * math.log(4 / 3) + (1 / 3 - 1 / 2) * math.log(2 / 3)
    assert math.isclose(report["drift"]["popularity_psi"]["test"], test_pop)
    val_pop = (2 / 3 - PSI_FLOOR) * math.log(2 / 3 / PSI_FLOOR) + (1 / 3 - 1) * math.log(1 / 3)
    assert math.isclose(report["drift"]["popularity_psi"]["validation"], val_pop)


def test_an_oov_breach_says_why_and_names_both_keys(spark):
    # Validation's one step is product 20: seen once in training, under featurize.min_item_count=2.
    # Test's product 30 was never seen in training.
    report = _report(spark)
    assert report["oov_unseen_rate"] == {"train": 0.0, "validation": 0.0, "test": 0.5}
    drift_passes = {**THRESHOLDS, "dq_max_event_mix_psi": 10.0, "dq_max_popularity_psi": 10.0, "min_item_count": 2}
    with pytest.raises(DataQualityError) as err:
        raise_on_failure(evaluate_checks(report, drift_passes), "r.json")
    assert str(err.value) == (
        "data quality check oov_rate.validation = 1 exceeds featurize.dq_max_oov_rate = 0.6: 100% of validation "
        "steps are products seen fewer than featurize.min_item_count=2 times in training and 0% products not seen "
        "there at all: a sparse catalogue, most products seen once, keeps them with featurize.min_item_count=1 "
        "(report: r.json) (to accept it: featurize.dq_max_oov_rate=1.0)")
    checks = {c["check"]: c for c in evaluate_checks(report, {**drift_passes, "dq_max_oov_rate": 0.4})}
    assert checks["oov_rate.test"]["why"] == ("0% of test steps are products seen fewer than featurize.min_item_count=2 "
                                              "times in training and 50% products not seen there at all: new products, "
                                              "of a growing catalogue or of a vocabulary reused with featurize.vocab_from")


def test_thresholds_stop_on_the_first_breach_naming_check_value_and_threshold(spark):
    report = _report(spark)
    checks = evaluate_checks(report, THRESHOLDS)
    assert [(c["check"], c["passed"]) for c in checks] == [
        ("null_rate.brand", True), ("null_rate.price", True),
        ("drift.event_mix_psi.validation", False), ("drift.event_mix_psi.test", False),
        ("drift.popularity_psi.validation", False), ("drift.popularity_psi.test", True),
        ("oov_rate.validation", False), ("oov_rate.test", True),
    ]
    with pytest.raises(DataQualityError, match=r"^data quality check drift.event_mix_psi.validation = 6.1\d* exceeds "
                                               r"featurize.dq_max_event_mix_psi = 0.25 and 3 more check\(s\): 100% of "
                                               r"validation steps are products seen fewer than featurize.min_item_count "
                                               r"times in training and 0% products not seen there at all "
                                               r"\(report: r.json\) \(to accept it: featurize.dq_max_event_mix_psi=6.2 "
                                               r"featurize.dq_max_popularity_psi=\d.*featurize.dq_max_oov_rate=1.0\)$") as err:
        raise_on_failure(checks, "r.json")
    # One re-run with the hint's overrides passes every check.
    hinted = load_config(None, overrides_in(str(err.value))).featurize
    raise_on_failure(evaluate_checks(report, {**THRESHOLDS, "dq_max_event_mix_psi": hinted.dq_max_event_mix_psi,
                                              "dq_max_popularity_psi": hinted.dq_max_popularity_psi,
                                              "dq_max_oov_rate": hinted.dq_max_oov_rate}), "r.json")
    loose = {**THRESHOLDS, "dq_max_event_mix_psi": 10.0, "dq_max_popularity_psi": 10.0, "dq_max_oov_rate": 1.0}
    raise_on_failure(evaluate_checks(report, loose), "r.json")  # passes
    strict_nulls = {**loose, "dq_max_null_rate": {"brand": 0.3}}
    with pytest.raises(DataQualityError, match=r"null_rate.brand = 0.3333 exceeds featurize.dq_max_null_rate.brand = "
                                               r"0.3 \(report: r.json\) \(to accept it: featurize.dq_max_null_rate.brand=0.34\)$"):
        raise_on_failure(evaluate_checks(report, strict_nulls), "r.json")
    with pytest.raises(ConfigError, match="featurize.dq_max_null_rate names 'colour'"):
        evaluate_checks(report, {**loose, "dq_max_null_rate": {"colour": 0.1}})


def test_drift_of_a_period_with_few_events_is_reported_not_enforced(spark):
    report = _report(spark)
    # The periods have 1 (validation) and 2 (test) events; at least 2 enforces test only.
    checks = {c["check"]: c for c in evaluate_checks(report, {**THRESHOLDS, "dq_min_drift_events": 2})}
    assert checks["drift.event_mix_psi.test"]["passed"] is False
    assert "not_enforced" not in checks["drift.event_mix_psi.test"]
    for name in ("drift.event_mix_psi.validation", "drift.popularity_psi.validation"):
        assert checks[name]["passed"] is True
        assert checks[name]["not_enforced"] == "fewer than featurize.dq_min_drift_events=2 events in the period"
    assert checks["drift.event_mix_psi.validation"]["value"] == report["drift"]["event_mix_psi"]["validation"]
    assert checks["oov_rate.validation"]["passed"] is False  # only drift depends on the period's size


def test_drift_under_leave_last_out_is_reported_not_enforced(spark):
    # Under leave_last_out the later "periods" are each user's last events: drift from training
    # is the protocol's shape. The same report fails the temporal check above.
    report = _report(spark)
    checks = {c["check"]: c for c in evaluate_checks(report, {**THRESHOLDS, "dq_min_drift_events": 2,
                                                               "per_user_split": True})}
    for name in ("drift.event_mix_psi.test", "drift.popularity_psi.validation"):
        assert checks[name]["passed"] is True
        assert checks[name]["not_enforced"].startswith("under evaluate.protocol=leave_last_out")
    assert checks["drift.event_mix_psi.test"]["value"] == report["drift"]["event_mix_psi"]["test"]
    assert checks["oov_rate.validation"]["passed"] is False  # other checks stay enforced
