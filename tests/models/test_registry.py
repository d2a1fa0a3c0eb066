"""The registry gate: its decisions as a pure function, and the aliases and tags it sets in MLflow."""

from __future__ import annotations

import pytest

from recsys_spark.config import from_dict
from recsys_spark.errors import ConfigError
from recsys_spark.models import registry

PRIMARY, COVERAGE = "ndcg@20", "coverage@20"
CHAMPION = {PRIMARY: 0.100, COVERAGE: 0.50}


def decide(challenger, champion=CHAMPION, champion_version="1", difference=None, **kwargs):
    """The gate with a margin of 0.005; ``difference`` defaults to a clear one: the means' gap
    with a +/-0.002 interval over 1,000 users."""
    if difference is None and champion is not None:
        gap = challenger[PRIMARY] - champion[PRIMARY]
        difference = (gap, gap - 0.002, gap + 0.002, 1000)
    settings = dict(primary_metric=PRIMARY, coverage_metric=COVERAGE, min_improvement=0.005, max_coverage_loss=0.05)
    return registry.decide("2", challenger, champion_version, champion, difference=difference,
                           **(settings | kwargs))


@pytest.mark.unit
def test_a_challenger_clearly_better_on_the_paired_lower_bound_is_promoted():
    decision = decide({PRIMARY: 0.110, COVERAGE: 0.48})  # low +0.008 > 0.005; coverage -0.02 within 0.05
    assert decision.promote and decision.verdict == "promoted"
    assert (decision.challenger_version, decision.champion_version) == ("2", "1")
    assert decision.reasons[0] == (
        "ndcg@20: challenger 0.1100 vs champion 0.1000, paired difference +0.0100 [+0.0080, +0.0120] "
        "(95% interval, 1,000 users): lower bound above the required +0.0050"
    )
    assert "within the allowed 0.0500" in decision.reasons[1]


@pytest.mark.unit
def test_a_better_mean_whose_lower_bound_does_not_clear_the_margin_is_not_promoted():
    # +0.030 on average, but on 14 users the interval reaches down to -0.010: noise.
    noisy = decide({PRIMARY: 0.130, COVERAGE: 0.50}, difference=(0.030, -0.010, 0.070, 14))
    assert not noisy.promote and noisy.verdict == "not_promoted"
    assert noisy.reasons[0] == (
        "ndcg@20: challenger 0.1300 vs champion 0.1000, paired difference +0.0300 [-0.0100, +0.0700] "
        "(95% interval, 14 users): lower bound not above the required +0.0050"
    )
    # Above 0, but not above the margin; exactly on it is not above it either.
    assert not decide({PRIMARY: 0.130, COVERAGE: 0.5}, difference=(0.030, 0.004, 0.056, 900)).promote
    assert not decide({PRIMARY: 0.130, COVERAGE: 0.5}, difference=(0.030, 0.005, 0.055, 900)).promote
    assert decide({PRIMARY: 0.130, COVERAGE: 0.5}, difference=(0.030, 0.004, 0.056, 900), min_improvement=0.0).promote
    # No user in common: no bound, no promotion.
    nan = float("nan")
    assert not decide({PRIMARY: 0.130, COVERAGE: 0.5}, difference=(nan, nan, nan, 0), min_improvement=-1.0).promote
    # The level is the one given.
    at_90 = decide({PRIMARY: 0.130, COVERAGE: 0.5}, difference=(0.03, 0.01, 0.05, 90), confidence=0.9)
    assert "(90% interval, 90 users)" in at_90.reasons[0]


@pytest.mark.unit
def test_the_gate_reads_the_paired_bound_not_the_means():
    # The means say -0.010, the paired difference over the users both ranked says +0.020
    # [+0.010, +0.030]: the difference decides.
    decision = decide({PRIMARY: 0.090, COVERAGE: 0.50}, difference=(0.020, 0.010, 0.030, 500))
    assert decision.promote


@pytest.mark.unit
def test_a_challenger_not_better_by_the_margin_is_not_promoted():
    worse = decide({PRIMARY: 0.090, COVERAGE: 0.60})
    assert not worse.promote and "lower bound not above the required +0.0050" in worse.reasons[0]
    barely = decide({PRIMARY: 0.106, COVERAGE: 0.60})  # low +0.006 - 0.002 = +0.004 < 0.005
    assert not barely.promote and barely.verdict == "not_promoted"
    assert decide({PRIMARY: 0.106, COVERAGE: 0.60}, min_improvement=0.0).promote


@pytest.mark.unit
def test_without_an_interval_the_point_values_are_compared_and_the_reason_says_so():
    # A primary metric that is no mean over users (coverage@K) has no interval.
    point = registry.decide("2", {PRIMARY: 0.110, COVERAGE: 0.5}, "1", CHAMPION, PRIMARY, COVERAGE, 0.005, 0.05)
    assert point.promote
    assert point.reasons[0] == ("ndcg@20: challenger 0.1100 vs champion 0.1000 (+0.0100, more than the required "
                                "+0.0050; point values: ndcg@20 has no interval over users)")
    assert not registry.decide("2", {PRIMARY: 0.104, COVERAGE: 0.5}, "1", CHAMPION, PRIMARY, COVERAGE, 0.005).promote


@pytest.mark.unit
def test_a_challenger_that_loses_too_much_coverage_is_not_promoted():
    decision = decide({PRIMARY: 0.150, COVERAGE: 0.40})  # much better ndcg, coverage -0.10
    assert not decision.promote
    assert decision.reasons[0].startswith("coverage@20: challenger 0.4000 vs champion 0.5000 (loss +0.1000, beyond")
    assert decision.reasons[1].startswith("ndcg@20: challenger 0.1500 vs champion 0.1000, paired difference +0.0500")
    assert decide({PRIMARY: 0.150, COVERAGE: 0.40}, max_coverage_loss=0.1).promote


@pytest.mark.unit
def test_force_and_block_override_the_metrics_and_say_so():
    forced = decide({PRIMARY: 0.05, COVERAGE: 0.1}, promotion="force")
    assert forced.promote
    assert forced.reasons[:2] == ("forced by evaluate.promotion=force", "the automatic gate would have kept the champion")
    noisy = decide({PRIMARY: 0.2, COVERAGE: 0.6}, difference=(0.1, -0.01, 0.2, 14), promotion="force")
    assert noisy.promote and noisy.reasons[1] == "the automatic gate would have kept the champion"
    blocked = decide({PRIMARY: 0.2, COVERAGE: 0.6}, promotion="block")
    assert not blocked.promote
    assert blocked.reasons[:2] == ("blocked by evaluate.promotion=block", "the automatic gate would have promoted")
    with pytest.raises(ConfigError, match="evaluate.promotion"):
        decide({PRIMARY: 0.2, COVERAGE: 0.6}, promotion="maybe")


@pytest.mark.unit
def test_without_a_champion_the_challenger_is_promoted():
    decision = decide({PRIMARY: 0.01, COVERAGE: 0.1}, champion=None, champion_version=None)
    assert decision.promote and decision.champion_version is None
    assert decision.reasons == ("no champion yet: challenger version 2 becomes the first champion (ndcg@20 0.0100)",)
    stale = decide({PRIMARY: 0.01, COVERAGE: 0.1}, champion=None, champion_note="another vocabulary")
    assert stale.promote and "champion version 1 cannot be compared" in stale.reasons[0]
    assert "another vocabulary" in stale.reasons[0]
    blocked = decide({PRIMARY: 0.01, COVERAGE: 0.1}, champion=None, champion_version=None, promotion="block")
    assert not blocked.promote


@pytest.mark.unit
def test_the_champion_itself_stays_champion_even_when_forced():
    decision = registry.decide("3", CHAMPION, "3", CHAMPION, PRIMARY, COVERAGE, promotion="force")
    assert not decision.promote and "already is the champion" in decision.reasons[0]


# ----------------------------------------------------------------------- the MLflow side


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A sqlite registry in tmp_path holding versions 1, 2, 3 of the configured model."""
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = from_dict({"paths": {"root": str(tmp_path / "work")}})
    (tmp_path / "work" / "mlflow").mkdir(parents=True)
    (tmp_path / "model").mkdir()
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    client.create_registered_model(cfg.mlflow.registered_model)
    for _ in range(3):
        client.create_model_version(cfg.mlflow.registered_model, source=str(tmp_path / "model"))
    yield cfg, client
    mlflow.set_tracking_uri("")


@pytest.mark.e2e
def test_apply_decision_moves_the_champion_alias_and_tags_the_version(store):
    cfg, client = store
    name = cfg.mlflow.registered_model
    assert registry.alias_version(cfg, "champion") is None

    first = decide({PRIMARY: 0.1, COVERAGE: 0.5}, champion=None, champion_version=None)
    registry.apply_decision(cfg, registry.GateDecision(True, first.reasons, "1", None), "champion", run_id="r1")
    assert registry.alias_version(cfg, "champion") == "1"
    tags = client.get_model_version(name, "1").tags
    assert tags["gate.decision"] == "promoted" and tags["gate.champion_version"] == "none"
    assert tags["gate.run_id"] == "r1" and tags["gate.reasons"].startswith("no champion yet")

    worse = registry.decide("2", {PRIMARY: 0.05, COVERAGE: 0.5}, "1", CHAMPION, PRIMARY, COVERAGE,
                            difference=(-0.05, -0.07, -0.03, 100))
    registry.apply_decision(cfg, worse, "champion")
    assert registry.alias_version(cfg, "champion") == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["gate.decision"] == "not_promoted" and tags["gate.champion_version"] == "1"
    assert "gate.run_id" not in tags

    forced = registry.decide("3", {PRIMARY: 0.05, COVERAGE: 0.5}, "1", CHAMPION, PRIMARY, COVERAGE, promotion="force")
    registry.apply_decision(cfg, forced, "champion")
    assert registry.alias_version(cfg, "champion") == "3"
    assert client.get_model_version(name, "3").tags["gate.reasons"].startswith("forced by evaluate.promotion=force")

    better = registry.decide("2", {PRIMARY: 0.5, COVERAGE: 0.5}, "3", CHAMPION, PRIMARY, COVERAGE, promotion="block")
    registry.apply_decision(cfg, better, "champion")
    assert registry.alias_version(cfg, "champion") == "3"
    assert client.get_model_version(name, "2").tags["gate.reasons"].startswith("blocked")


# ----------------------------------------------------------------------- what is gated


@pytest.mark.unit
def test_a_tuned_baseline_that_beats_the_model_on_validation_is_put_forward_and_the_reason_says_so():
    # model - EASE on 172 validation users: -0.105 [-0.155, -0.057], the upper bound below 0.
    behind = (-0.105, -0.155, -0.057, 172)
    choice = registry.choose_ranker("ease", behind, "auto")
    assert (choice.ranker, choice.baseline, choice.ahead) == ("ease", "ease", True)
    assert choice.reason == (
        "EASE (tuned) beats the model on validation: model - EASE (tuned) on 172 validation users = -0.1050 "
        "[-0.1550, -0.0570] (95% interval); score.ranker=auto puts it forward instead"
    )
    assert choice.as_dict()["difference"] == {"diff": -0.105, "low": -0.155, "high": -0.057, "users": 172}
    # score.ranker=model keeps the model, and says a baseline beats it.
    forced = registry.choose_ranker("ease", behind, "model")
    assert (forced.ranker, forced.ahead) == ("model", True)
    assert forced.reason.endswith("; score.ranker=model keeps the model")


@pytest.mark.unit
def test_the_model_is_put_forward_unless_the_upper_bound_is_below_zero():
    tied = registry.choose_ranker("cooccurrence", (-0.02, -0.05, 0.01, 812), "auto", confidence=0.9)
    assert (tied.ranker, tied.ahead) == ("model", False)
    assert tied.reason == ("no tuned baseline beats the model on validation: model - co-occurrence (tuned) on 812 "
                           "validation users = -0.0200 [-0.0500, +0.0100] (90% interval), upper bound not below 0")
    assert registry.choose_ranker("als", (-0.02, -0.04, 0.0, 812)).ranker == "model"  # 0 is not below 0
    nan = float("nan")
    assert registry.choose_ranker("als", (nan, nan, nan, 0)).ranker == "model"  # no validation user: no bound
    none = registry.choose_ranker(None, None)
    assert (none.ranker, none.baseline, none.reason) == ("model", None, "")
    with pytest.raises(ConfigError, match="score.ranker"):
        registry.choose_ranker("ease", (-0.1, -0.2, -0.05, 100), "baseline")
