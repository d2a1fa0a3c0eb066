"""The shapes real logs have, each through the whole pipeline (``recsys run``) at tiny size.

Our generator's default shape carries every kind of defect on every day; real logs mostly carry
none, span months with a thin recent tail, come in bursts, lack columns. Each shape here either
runs end to end, with clean's counts reconciling, or stops early with a one-line error that
names the config key to change (and then runs with that change).
"""

from __future__ import annotations

import json
import pandas as pd
import pytest

from recsys_spark import schema
from recsys_spark.cli import stage_function
from recsys_spark.config import load_config
from recsys_spark.data.generate import regime_overrides
from recsys_spark.errors import RecsysError

from tests.conftest import tiny_overrides_at
from tests.test_config import overrides_in

pytestmark = pytest.mark.e2e

# A tiny pipeline: one process, one epoch, popularity as the only baseline (the shapes test the
# data path; the model's quality is measured by benchmarks/quality_bench.py).
FAST = ["train.launcher=local", "train.epochs=1", "evaluate.baselines=[popularity]", "generate.n_users=150",
        "generate.days=8", "featurize.validation_days=1", "featurize.test_days=1", "score.explore_share=0.0"]

SHAPES = {
    "no_defects": ["generate.defects=false"],
    "one_day": ["generate.days=1"],
    "long_span_thin_tail": ["generate.days=210", "generate.user_active_days=10", "generate.n_users=300",
                            "generate.sessions_per_user=3"],
    "ratings_bursts": ["generate.burst_share=0.3", "generate.defects=false"],
    "no_brand_price_category": ["generate.empty_columns=[brand,price,category_id,category_code]"],
    "purchases_only": ["generate.event_types=[purchase]", "generate.p_cart=0.6", "generate.p_purchase=0.9",
                       "generate.sessions_per_user=12"],
    "single_user": ["generate.n_users=1", "generate.sessions_per_user=60", "generate.n_items=60"],
    "item_ids_near_2_62": ["generate.item_id_offset=4611686018427387000"],
    "naive_timestamps": ["generate.naive_timestamps=true"],
    "gzip_csv": ["generate.compression=gzip"],
    "json_lines": ["generate.format=json", "clean.input_format=json"],
    "parquet": ["generate.format=parquet", "clean.input_format=parquet"],
    # UUID visitors; product ids that are SKUs with dashes (SKU-012345678-XL) or zero-padded (0012345678).
    "string_ids": ["generate.string_ids=true", "clean.id_types.user_id=string", "clean.id_types.product_id=string"],
    # Issue 31's session log: anonymous visitors with one session each, most products seen once
    # (no bot: at this size one bot's rows would outnumber the visitors').
    "session_log": [*regime_overrides("session_log"), "generate.n_users=300", "generate.n_bots=0"],
}


# A shape the pipeline cannot serve stops early, naming the key to change.
EXPECTED_STOPS = {
    # One user: no period holds enough users to evaluate anything.
    "single_user": "featurize.min_eval_users",
}


def run_pipeline(spark, overrides: list[str]) -> dict:
    return stage_function("run")(spark, load_config(None, overrides))


def run_following_hints(spark, overrides: list[str], rounds: int = 3) -> tuple[dict, list[str]]:
    """Run; when a check stops the run, run again with the overrides its message gives.

    Returns:
        (the run's summary, the overrides added from hints).
    """
    added: list[str] = []
    for _ in range(rounds):
        try:
            return run_pipeline(spark, [*overrides, *added]), added
        except RecsysError as exc:
            message = str(exc)
            assert "\n" not in message, message
            hint = overrides_in(message) if "(to accept it:" in message else []
            if not hint:
                raise
            added += hint
    raise AssertionError(f"still stopped after {rounds} runs with {added}")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape_runs_end_to_end_or_stops_naming_the_key(spark, tmp_path, shape):
    overrides = [*tiny_overrides_at(tmp_path), *FAST, *SHAPES[shape]]
    if shape in EXPECTED_STOPS:
        with pytest.raises(RecsysError) as stopped:
            run_following_hints(spark, overrides)
        assert EXPECTED_STOPS[shape] in str(stopped.value) and "\n" not in str(stopped.value)
        # It stopped before training: nothing was registered, no features were published.
        assert not (tmp_path / "work" / "features").exists()
        return

    summary, hinted = run_following_hints(spark, overrides)
    report = json.loads((tmp_path / "work" / "reports" / "clean_report.json").read_text())
    rejected = sum(report["rejected"].values())
    assert report["rows_read"] == (report["rows_kept"] + rejected + report["duplicates"]
                                   + report["near_duplicates"] + report["bot_rows"])
    assert report["rows_kept"] > 0 and summary["users_scored"] >= 1
    recommendations = pd.read_parquet(tmp_path / "work" / "recommendations")
    assert len(recommendations) > 0
    metadata = json.loads((tmp_path / "work" / "features" / "metadata.json").read_text())
    CHECKS.get(shape, lambda *_: None)(report, recommendations, hinted)
    if shape in LEAVE_LAST_OUT:
        # Too short for a temporal split, or a recent tail too thin for one: evaluate.protocol=auto
        # takes leave_last_out and the run summary says so.
        assert metadata["protocol"] == "leave_last_out"
        assert summary["WARNING (featurize)"].startswith("evaluate.protocol=auto chose leave_last_out: ")
    else:
        assert metadata["protocol"] == "temporal" and "WARNING (featurize)" not in summary


# Shapes the temporal split cannot evaluate: one day leaves no training period; 210 days of
# users active 10 days each, or 60 days of one-session visitors, leave a handful of users in the last days.
LEAVE_LAST_OUT = {"one_day", "long_span_thin_tail", "session_log"}


def _no_defects(report, recommendations, hinted):
    assert sum(report["rejected"].values()) == 0 and report["duplicates"] == 0 and report["bot_rows"] == 0


def _bursts(report, recommendations, hinted):
    # The default bot rules flag most burst rows: the run says so rather than dropping them quietly.
    assert report["bots"]["rules"]["events_per_minute"]["rows"] > 0
    if report["bots"]["row_share"] > 0.2:
        assert report["warning"].startswith("the bot rules flagged")


def _empty_columns(report, recommendations, hinted):
    assert "featurize.dq_max_null_rate.brand=1.0" in hinted


def _big_ids(report, recommendations, hinted):
    assert recommendations[schema.ITEM_ID].min() >= 4611686018427387000


def _string_ids(report, recommendations, hinted):
    # Only the generator's own faults are rejected (a 64-bit visitor id is no fault now), and the
    # recommendations name the products as the log does (tests/test_string_ids.py checks each one).
    assert report["rejected"][schema.REASON_BAD_ID] == 0
    items = recommendations[schema.ITEM_ID]
    assert items.map(type).eq(str).all() and items.str.fullmatch(r"SKU-0[0-9]{8}-(XS|S|M|L|XL)|00[0-9]{8}").all()


CHECKS = {"no_defects": _no_defects, "ratings_bursts": _bursts, "no_brand_price_category": _empty_columns,
          "item_ids_near_2_62": _big_ids, "string_ids": _string_ids}
