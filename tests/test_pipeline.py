"""The pipeline's bookkeeping: which event dates each stage read."""

from __future__ import annotations

import json

import pytest

from recsys_spark import pipeline
from recsys_spark import schema
from recsys_spark.config import load_config

pytestmark = pytest.mark.unit


def test_data_ranges_come_from_the_clean_dates_and_the_features_metadata(tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}"])
    features = tmp_path / "features"
    features.mkdir()
    (features / schema.FEATURE_METADATA).write_text(json.dumps(
        {"data_start": "2019-10-02T00:10:00+00:00", "data_end": "2019-10-12T23:50:00+00:00"}))
    summaries = {"clean": {"dates": ["2019-10-03", "2019-10-01", "2019-10-12"]}}

    ranges = pipeline.data_ranges(None, cfg, summaries)

    features_range = ("2019-10-02", "2019-10-12")
    assert ranges == {"clean": ("2019-10-01", "2019-10-12"), "featurize": features_range,
                      "train": features_range, "evaluate": features_range, "score": features_range,
                      "pipeline": ("2019-10-01", "2019-10-12")}


def test_data_ranges_are_empty_when_nothing_says_them(tmp_path):
    cfg = load_config(None, [f"paths.root={tmp_path}"])
    assert pipeline.data_ranges(None, cfg, {"clean": {"dates": []}}) == {}
