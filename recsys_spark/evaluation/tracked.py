"""What the evaluate stage leaves in MLflow: the run's metrics, params, tags, report and
figures (:func:`log_run`), and the evaluated versions' tags (:func:`tag_version`). The calls go
through :mod:`recsys_spark.tracking` and :mod:`recsys_spark.models.registry`."""

from __future__ import annotations

from typing import Any, Mapping

from recsys_spark import tracking
from recsys_spark.evaluation import offpolicy
from recsys_spark.evaluation.intervals import Interval
from recsys_spark.evaluation.per_user import ALL, MODEL
from recsys_spark.evaluation.report import figures
from recsys_spark.schema import USERS

REPORT_FILE = "evaluation.json"


def mlflow_key(name: str) -> str:
    """MLflow metric and tag names may not hold '@': ``model.ndcg@10`` -> ``model.ndcg_at_10``."""
    return name.replace("@", "_at_")


def log_run(report: Mapping[str, Any], decision) -> None:
    """Headline metrics of every ranker (overall; the primary metric per segment), their
    intervals (``<ranker>.<metric>.ci_low`` / ``.ci_high``), the paired differences
    (``paired.<a>_vs_<b>.<metric>.diff`` / ``.low`` / ``.high`` / ``.users``),
    ``users_evaluated``, the tuned baseline settings as params, the gate as tags, the JSON
    report and the figures."""
    tracking.log_results(run_metrics(report), run_params(report, decision), run_tags(report, decision))
    tracking.log_json(report, REPORT_FILE)
    for name, figure in figures(report).items():
        tracking.log_figure(figure, f"{name}.png")


def run_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The run's metrics (see :func:`log_run`) from the report."""
    primary = report["primary_metric"]
    metrics = {
        mlflow_key(f"{ranker}.{name}"): value
        for ranker, values in report["rankers"].items()
        for name, value in values.items()
    }
    for ranker, segments in report["segments"].items():
        for segment, values in segments.items():
            if segment != ALL:
                metrics[mlflow_key(f"{ranker}.{segment}.{primary}")] = values[primary]
                metrics[f"{ranker}.{segment}.users"] = values[USERS]
    for ranker, bounds in report.get("intervals", {}).items():
        for name, (low, high) in bounds.items():
            metrics[mlflow_key(f"{ranker}.{name}.ci_low")] = low
            metrics[mlflow_key(f"{ranker}.{name}.ci_high")] = high
    for pair, differences in report.get("paired", {}).items():
        for name, found in differences.items():
            for field in ("diff", "low", "high", "users"):
                metrics[mlflow_key(f"paired.{pair}.{name}.{field}")] = found[field]
    if "users_evaluated" in report:
        metrics["users_evaluated"] = report["users_evaluated"]
    metrics.update(offpolicy.mlflow_metrics(report.get("off_policy", {})))
    return metrics


def run_params(report: Mapping[str, Any], decision) -> dict[str, Any]:
    """The tuned baselines' settings (``baseline.<family>.<key>``) and the gate's champion and verdict."""
    params = {
        f"baseline.{family}.{key}": value
        for family, tuned in report["baselines"].items()
        for key, value in tuned["chosen"].items()
    }
    params.update({"gate.champion_version": str(decision.champion_version), "gate.decision": decision.verdict})
    return params


def run_tags(report: Mapping[str, Any], decision) -> dict[str, str]:
    """The gate's decision, reasons and chosen ranker, the evaluated version and the serving line."""
    return {"gate.decision": decision.verdict, "gate.reasons": " | ".join(decision.reasons)[:5000],
            "model_version": report["model_version"], "gate.ranker": report["ranker_choice"]["ranker"],
            "gate.ranker_version": report["ranker_choice"]["version"], "serving": report["serving"][:5000]}


def tag_version(cfg, version: str, model: Mapping[str, float], results: Mapping, primary: str, run_id: str,
                intervals: Mapping[str, Mapping[str, Interval]] | None = None,
                paired: Mapping[str, Mapping[str, Interval]] | None = None, ranker: str = MODEL) -> None:
    """Tag the evaluated version with :func:`version_tags` (see there)."""
    # Here, not at the top: the registry brings mlflow (2 s), kept out of the Spark executors that import this module.
    from recsys_spark.models import registry

    registry.tag_version(cfg, version, version_tags(model, results, primary, run_id, intervals, paired, ranker))


def version_tags(model: Mapping[str, float], results: Mapping, primary: str, run_id: str,
                 intervals: Mapping[str, Mapping[str, Interval]] | None = None,
                 paired: Mapping[str, Mapping[str, Interval]] | None = None, ranker: str = MODEL) -> dict[str, str]:
    """The evaluated version's tags: its primary metric and the baselines' on the same data,
    its interval and users (``eval.<primary>.ci_low`` / ``.ci_high``, ``eval.users``), the
    paired differences on it (``eval.model_vs_<other>.<primary>``: "+0.0123 [..] (n users)")
    and ``eval.run_id``. ``ranker``: what the version is among the evaluated rankers (a served
    baseline's family)."""
    tags = {mlflow_key(f"eval.{primary}"): f"{model[primary]:.6f}"}
    found = (intervals or {}).get(ranker, {}).get(primary)
    if found is not None:
        tags[mlflow_key(f"eval.{primary}.ci_low")] = f"{found.low:.6f}"
        tags[mlflow_key(f"eval.{primary}.ci_high")] = f"{found.high:.6f}"
        tags["eval.users"] = str(found.users)
    for pair, differences in (paired or {}).items():
        if primary in differences:
            tags[mlflow_key(f"eval.{pair}.{primary}")] = differences[primary].describe(signed=True)
    for other, values in results.items():
        if other != ranker:
            tags[mlflow_key(f"eval.{other}.{primary}")] = f"{values[ALL][primary]:.6f}"
    tags["eval.run_id"] = run_id
    return tags
