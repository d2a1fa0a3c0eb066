"""The registry gate: its decisions as a pure function, and the aliases and tags it sets in MLflow."""

from __future__ import annotations

import pytest

from recsys_spark.config import from_dict
from recsys_spark.errors import ConfigError
from recsys_spark.models import registry

PRIMARY, COVERAGE = "ndcg@20", "coverage@20"
CHAMPION = {PRIMARY: 0.100, COVERAGE: 0.50}


def decide(challenger, champion=CHAMPION, champion_version="1", **kwargs):
    settings = dict(primary_metric=PRIMARY, coverage_metric=COVERAGE, min_improvement=0.005, max_coverage_loss=0.05)
    return registry.decide("2", challenger, champion_version, champion, **(settings | kwargs))


@pytest.mark.unit
def test_a_better_challenger_is_promoted():
    decision = decide({PRIMARY: 0.110, COVERAGE: 0.48})  # +0.010 > 0.005; coverage -0.02 within 0.05
    assert decision.promote and decision.verdict == "promoted"
    assert (decision.challenger_version, decision.champion_version) == ("2", "1")
    assert decision.reasons[0].startswith("ndcg@20: challenger 0.1100 vs champion 0.1000 (+0.0100, more than")
    assert "within the allowed 0.0500" in decision.reasons[1]


@pytest.mark.unit
def test_a_challenger_not_better_by_the_margin_is_not_promoted():
    worse = decide({PRIMARY: 0.090, COVERAGE: 0.60})
    assert not worse.promote and "not more than the required +0.0050" in worse.reasons[0]
    barely = decide({PRIMARY: 0.104, COVERAGE: 0.60})  # +0.004: better, but not by the margin
    assert not barely.promote and barely.verdict == "not_promoted"
    assert decide({PRIMARY: 0.104, COVERAGE: 0.60}, min_improvement=0.0).promote


@pytest.mark.unit
def test_a_challenger_that_loses_too_much_coverage_is_not_promoted():
    decision = decide({PRIMARY: 0.150, COVERAGE: 0.40})  # much better ndcg, coverage -0.10
    assert not decision.promote
    assert decision.reasons[0].startswith("coverage@20: challenger 0.4000 vs champion 0.5000 (loss +0.1000, beyond")
    assert decide({PRIMARY: 0.150, COVERAGE: 0.40}, max_coverage_loss=0.1).promote


@pytest.mark.unit
def test_force_and_block_override_the_metrics_and_say_so():
    forced = decide({PRIMARY: 0.05, COVERAGE: 0.1}, promotion="force")
    assert forced.promote
    assert forced.reasons[:2] == ("forced by evaluate.promotion=force", "the automatic gate would have kept the champion")
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

    worse = registry.decide("2", {PRIMARY: 0.05, COVERAGE: 0.5}, "1", CHAMPION, PRIMARY, COVERAGE)
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
