"""The opt-in hyper-parameter search of ``recsys train`` (``search.trials > 0``).

Optuna's TPE sampler (seeded with ``search.seed``) draws train values from ``search.space``.
Each trial is a whole training run with those values, launched as the stage's own training is
(``train.launcher``), from scratch and with its own checkpoint folder, in a nested MLflow run
``trial <n>`` under the stage's run; its objective is the best validation NDCG@``train.eval_k``
in its history, the metric early stopping and the registered model's description use.
The stage then trains its model with the best values (:func:`recsys_spark.train.runner.run`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import mlflow
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from recsys_spark.config import Config, SearchDimension, parse_space
from recsys_spark.errors import ConfigError, RecsysError
from recsys_spark.train import launch
from recsys_spark.train.validation import metric_key

log = logging.getLogger(__name__)

TRIALS_ARTIFACT = "search/trials.json"
FIGURE_ARTIFACT = "search/trials.png"
TAG_TRIAL = "search.trial"  # on each trial's run: its number
TAG_ERROR = "search.error"  # on a failed trial's run: why, in one line


def search(spark: SparkSession, cfg: Config, parent_run_id: str, tracking_uri: str) -> dict[str, Any]:
    """Run ``search.trials`` training trials (at most ``search.timeout_minutes``) and log them.

    A trial whose values the train section refuses together (``embedding_dim`` not a multiple
    of ``num_heads``) is pruned before it trains; one that raises a :class:`RecsysError` is
    recorded as failed, with its reason, and the search goes on. On the parent run: params
    ``search.best.<key>``, metric ``search.best_<objective>``, the trials table
    (``search/trials.json``) and a figure of the objective per trial (``search/trials.png``).

    Args:
        cfg: the stage's config (``search.trials > 0``).
        parent_run_id: the train stage's MLflow run, active in this thread; the trials nest under it.
        tracking_uri: the MLflow store of that run.

    Returns:
        {"best_params": {train key: value}, "best_value": objective of the best trial,
        "best_trial": its number (from 1), "metric": the objective's name, "trials": trials run,
        "complete", "failed", "pruned": how many ended so}.

    Raises:
        RecsysError: no trial completed (the message gives each failed trial's reason).
    """
    # Here, not at the top: optuna (0.5 s) is needed only with search.trials > 0, and every
    # train stage imports this module.
    import optuna

    dimensions = parse_space(cfg.search.space)
    metric = metric_key("val_ndcg", cfg.train.eval_k)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    rows: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        row = run_trial(spark, cfg, dimensions, trial, parent_run_id, experiment_id, tracking_uri)
        rows.append(row)
        if row["state"] == "pruned":
            raise optuna.TrialPruned(row["reason"])
        if row["state"] == "failed":
            raise TrialFailed(row["reason"])
        best = max(r["value"] for r in rows if r["state"] == "complete")
        log.info("search: trial %d/%d: %s -> %s %.4f (best so far %.4f)", row["trial"], cfg.search.trials,
                 _show(row["params"]), metric, row["value"], best)
        return row["value"]

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.search.seed))
    verbosity = optuna.logging.get_verbosity()
    # Our own log line per trial instead of Optuna's (and no traceback for a failed trial).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    started = time.monotonic()
    try:
        study.optimize(objective, n_trials=cfg.search.trials, timeout=cfg.search.timeout_minutes * 60.0,
                       catch=(TrialFailed,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    if len(rows) < cfg.search.trials:
        log.warning("search: stopped after %d of %d trial(s) at search.timeout_minutes=%g", len(rows),
                    cfg.search.trials, cfg.search.timeout_minutes)

    counts = {state: sum(r["state"] == state for r in rows) for state in ("complete", "failed", "pruned")}
    complete = [r for r in rows if r["state"] == "complete"]
    best = max(complete, key=lambda r: r["value"]) if complete else None
    client.log_dict(parent_run_id, {
        "metric": metric, "direction": "maximize", "seed": cfg.search.seed, "space": cfg.search.space,
        "seconds": round(time.monotonic() - started, 1), **counts,
        "best_trial": best["trial"] if best else None, "trials": rows,
    }, TRIALS_ARTIFACT)
    client.log_figure(parent_run_id, trials_figure(rows, metric), FIGURE_ARTIFACT)
    client.set_tag(parent_run_id, "search.outcome", ", ".join(f"{n} {state}" for state, n in counts.items()))
    if best is None:
        reasons = "; ".join(f"trial {r['trial']}: {r['reason']}" for r in rows)
        raise RecsysError(f"search: none of its {len(rows)} trial(s) completed ({reasons})")

    for key, value in best["params"].items():
        client.log_param(parent_run_id, f"search.best.{key}", value)
    client.log_metric(parent_run_id, f"search.best_{metric}", best["value"])
    client.set_tag(parent_run_id, "search.best_trial", str(best["trial"]))
    return {"best_params": best["params"], "best_value": best["value"], "best_trial": best["trial"],
            "metric": metric, "trials": len(rows), **counts}


class TrialFailed(Exception):
    """A trial's training raised a RecsysError (its reason is in the trials table and run)."""


def run_trial(spark: SparkSession, cfg: Config, dimensions: list[SearchDimension], trial: Any, parent_run_id: str,
              experiment_id: str, tracking_uri: str) -> dict[str, Any]:
    """Draw one trial's values, train with them in a nested MLflow run, and score the run.

    Returns:
        its row of the trials table: {"trial", "state" ("complete", "failed" or "pruned"),
        "params", "value" (the objective, the best validation NDCG of the run; None unless
        complete), "best_epoch", "evaluations" (entries of its history), "seconds", "run_id",
        "reason" (why it failed or was pruned)}.
    """
    number = trial.number + 1
    params = {d.key: suggest(trial, d) for d in dimensions}
    row: dict[str, Any] = {"trial": number, "state": "pruned", "params": params, "value": None, "best_epoch": None,
                           "evaluations": 0, "seconds": 0.0, "run_id": None, "reason": ""}
    try:
        trial_cfg = trial_config(cfg, params, number)
    except ConfigError as exc:
        log.info("search: trial %d pruned: %s", number, exc)
        return {**row, "reason": str(exc)}

    metric = metric_key("val_ndcg", cfg.train.eval_k)
    started = time.monotonic()
    try:
        # Leaving this block by an exception ends the trial's run as FAILED.
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial {number}", nested=True,
                              parent_run_id=parent_run_id, tags={TAG_TRIAL: str(number)}) as run:
            row["run_id"] = run.info.run_id
            mlflow.log_params({f"train.{key}": value for key, value in params.items()})
            try:
                main = launch.check_ranks(launch.launch(spark, trial_cfg, run.info.run_id, tracking_uri))
            except RecsysError as exc:
                mlflow.set_tag(TAG_ERROR, one_line(exc))
                raise
            history = main["history"]
            value = max(float(entry[metric]) for entry in history if metric in entry)
            mlflow.log_metric(f"best_{metric}", value)
    except RecsysError as exc:
        log.warning("search: trial %d failed: %s", number, one_line(exc))
        return {**row, "state": "failed", "reason": one_line(exc), "seconds": round(time.monotonic() - started, 1)}
    return {**row, "state": "complete", "value": value, "best_epoch": main.get("best_epoch"),
            "evaluations": len(history), "seconds": round(time.monotonic() - started, 1)}


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its class name when it has none)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def suggest(trial: Any, dimension: SearchDimension) -> Any:
    """The optuna trial's value of one searched key."""
    if dimension.kind == "choice":
        return trial.suggest_categorical(dimension.key, list(dimension.choices))
    if dimension.kind == "int":
        return trial.suggest_int(dimension.key, dimension.low, dimension.high, log=dimension.log)
    return trial.suggest_float(dimension.key, dimension.low, dimension.high, log=dimension.log)


def with_train_values(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with these train keys set.

    Raises:
        ConfigError: the train section refuses them (TrainConfig's checks).
    """
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **values))


def trial_config(cfg: Config, values: dict[str, Any], number: int) -> Config:
    """The config of trial ``number``: ``values`` in the train section, from scratch, checkpoints
    in ``<paths.checkpoints>/search/trial_<number>`` (away from the stage's own).

    Raises:
        ConfigError: the train section refuses the values together.
    """
    checkpoints = f"{cfg.paths.checkpoints.rstrip('/')}/search/trial_{number:03d}"
    trial = with_train_values(cfg, {**values, "resume": False})
    return dataclasses.replace(trial, paths=dataclasses.replace(cfg.paths, checkpoints=checkpoints))


def trials_figure(rows: list[dict[str, Any]], metric: str):
    """A matplotlib figure: the objective of each completed trial and the running best.

    Args:
        rows: the trials table (:func:`run_trial`'s rows, in trial order).
    """
    # Here, not at the top: matplotlib.use("Agg") would switch the backend of any notebook that
    # imports this module, and matplotlib takes 1 s to import.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    complete = [r for r in rows if r["state"] == "complete"]
    running, best = [], float("-inf")
    for r in complete:
        best = max(best, r["value"])
        running.append(best)
    fig, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([r["trial"] for r in complete], [r["value"] for r in complete], "o", label="trial")
    axis.step([r["trial"] for r in complete], running, where="post", label="best so far")
    others = len(rows) - len(complete)
    note = f" ({others} failed or pruned)" if others else ""
    axis.set(xlabel="trial", ylabel=f"{metric} (best of the run)", title=f"search: {len(rows)} trial(s){note}")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def _show(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
