"""The model registry: finding a version and loading its bundle (evaluate and score), and the
gate that decides whether the evaluated challenger becomes the champion (evaluate), after
choosing what the challenger is: the deep model, or the tuned baseline that beats it on
validation (:func:`choose_ranker`), registered as a version of its own (:func:`register_baseline`)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from recsys_spark.config import Config, EvaluateConfig, PathsConfig, ScoreConfig
from recsys_spark.errors import InputError
from recsys_spark.models import bundle as bundles
from recsys_spark.models.bundle import BaselineBundle, Bundle, ranker_label
from recsys_spark.models.pyfunc import BUNDLE_FILE, log_model

_MAX_TAG = 5000  # MLflow's limit on a model version tag's value


def load_bundle(cfg: Config, alias: str | None = None, version: int | None = None) -> tuple[Bundle, str]:
    """Download the bundle of ``cfg.mlflow.registered_model`` by version or alias: a trained
    model's ModelBundle, or the BaselineBundle of a tuned baseline the gate registered.

    Args:
        cfg: gives the tracking store and the registered model's name.
        alias: e.g. "champion" (``models:/name@champion``); None means ``cfg.mlflow.alias``.
        version: a version number; wins over ``alias`` when given.

    Returns:
        (the bundle, the version as a string, e.g. "3").

    Raises:
        InputError: no such model, alias or version in the registry.
    """
    mlflow.set_tracking_uri(cfg.tracking_uri)
    name = cfg.mlflow.registered_model
    client = MlflowClient()
    try:
        if version is not None:
            model_version = client.get_model_version(name, str(version))
        else:
            model_version = client.get_model_version_by_alias(name, alias or cfg.mlflow.alias)
    except MlflowException as exc:
        wanted = f"version {version}" if version is not None else f"alias {alias or cfg.mlflow.alias!r}"
        raise InputError(
            f"registered model {name!r} has no {wanted} in {cfg.tracking_uri}; run `recsys train` first "
            f"({exc.message.splitlines()[0]})"
        ) from None
    with _temp_dir() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{model_version.version}", dst_path=tmp
        )
        path = _find(local, BUNDLE_FILE)
        return bundles.load(path), str(model_version.version)


def training_features(cfg: Config, alias: str) -> tuple[str, str] | None:
    """The features folder the model at ``alias`` was trained on (its train run's
    ``paths.root`` and ``paths.features`` params, resolved as that run resolved them).

    Returns:
        (the folder, the model version), or None when the registered model or the alias does
        not exist yet (a first run).

    Raises:
        InputError: the version's run logged no paths params; any other registry error (e.g.
            an unreachable tracking server) propagates: it must not pass for "no model".
    """
    mlflow.set_tracking_uri(cfg.tracking_uri)
    name = cfg.mlflow.registered_model
    client = MlflowClient()
    try:
        model_version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    params = client.get_run(model_version.run_id).data.params
    if "paths.features" not in params or "paths.root" not in params:
        raise InputError(f"registered model {name!r} version {model_version.version} (@{alias}): its run "
                         f"{model_version.run_id} logged no paths.features param; set featurize.vocab_from to its features folder")
    paths = PathsConfig(root=params["paths.root"], features=params["paths.features"])
    return paths.resolve("features"), str(model_version.version)


def _find(root: str, filename: str) -> str:
    for folder, _, files in os.walk(root):
        if filename in files:
            return os.path.join(folder, filename)
    raise InputError(f"registered model artifacts under {root} hold no {filename}")


def _temp_dir():
    return tempfile.TemporaryDirectory(prefix="recsys_model_")


# ----------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger takes the champion alias, and why.

    Args:
        promote: move the champion alias to the challenger.
        reasons: one sentence per consideration, the deciding one first.
        challenger_version: the evaluated challenger.
        champion_version: the champion it was compared with, or None when there is none.
    """

    promote: bool
    reasons: tuple[str, ...]
    challenger_version: str
    champion_version: str | None

    @property
    def verdict(self) -> str:
        return "promoted" if self.promote else "not_promoted"

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "challenger_version": self.challenger_version,
            "champion_version": self.champion_version,
        }


def decide(
    challenger_version: str,
    challenger: Mapping[str, float],
    champion_version: str | None,
    champion: Mapping[str, float] | None,
    primary_metric: str,
    coverage_metric: str,
    min_improvement: float = 0.0,
    max_coverage_loss: float = 0.05,
    promotion: str = "auto",
    champion_note: str = "",
    difference: Sequence[float] | None = None,
    confidence: float = 0.95,
) -> GateDecision:
    """The registry gate, as a pure function of the two models' test metrics.

    In ``auto`` mode the challenger is promoted when there is no champion to compare with
    (no version holds the alias, or ``champion`` is None because it could not be evaluated,
    explained by ``champion_note``), or when both hold:
      - the LOWER bound of the paired difference challenger - champion on ``primary_metric``
        (``difference``: per user, over the users both were measured on; see
        :mod:`recsys_spark.evaluation.intervals`) is ``> min_improvement`` (absolute): a better
        mean on a handful of users is not enough, the difference must be clear of noise;
      - ``champion[coverage] - challenger[coverage] <= max_coverage_loss`` (absolute).
    When ``difference`` is None (the primary metric is not a mean over users, e.g. coverage@K,
    so it has no interval) the point values are compared instead, and the reasons say so.
    ``force`` promotes and ``block`` refuses whatever the metrics say (the automatic verdict
    is still given among the reasons). A challenger that already is the champion stays so.

    Args:
        challenger_version, champion_version: registered versions (None: no champion).
        challenger, champion: {metric name: value} on the same test data (None: not evaluated).
        primary_metric: e.g. "ndcg@20".
        coverage_metric: e.g. "coverage@20".
        min_improvement, max_coverage_loss: the margins above.
        promotion: "auto", "force" or "block".
        champion_note: why ``champion`` is None although a champion version exists.
        difference: (mean, low, high, users) of the paired difference challenger - champion
            on ``primary_metric`` (an intervals.Interval), or None (see above).
        confidence: the level of ``difference``'s interval, for the reasons' text.

    Returns:
        GateDecision.
    """
    EvaluateConfig.check_promotion(promotion)
    if champion_version is not None and champion_version == challenger_version:
        reason = f"challenger version {challenger_version} already is the champion; nothing to change"
        return GateDecision(False, (reason,), challenger_version, champion_version)

    value = challenger[primary_metric]
    if champion_version is None:
        auto, reasons = True, [f"no champion yet: challenger version {challenger_version} becomes the first champion "
                               f"({primary_metric} {value:.4f})"]
    elif champion is None:
        auto, reasons = True, [f"champion version {champion_version} cannot be compared on this test data"
                               f"{': ' + champion_note if champion_note else ''}; the challenger replaces it "
                               f"({primary_metric} {value:.4f})"]
    else:
        auto, reasons = _gate_checks(challenger, champion, primary_metric, coverage_metric, min_improvement,
                                     max_coverage_loss, difference, confidence)
    if promotion == "auto":
        return GateDecision(auto, tuple(reasons), challenger_version, champion_version)
    forced = promotion == "force"
    head = f"{'forced' if forced else 'blocked'} by evaluate.promotion={promotion}"
    tail = f"the automatic gate would have {'promoted' if auto else 'kept the champion'}"
    return GateDecision(forced, (head, tail, *reasons), challenger_version, champion_version)


def _gate_checks(challenger: Mapping[str, float], champion: Mapping[str, float], primary_metric: str,
                 coverage_metric: str, min_improvement: float, max_coverage_loss: float,
                 difference: Sequence[float] | None, confidence: float) -> tuple[bool, list[str]]:
    """The automatic gate's two checks of :func:`decide` against a measured champion.

    Returns:
        (both passed, one reason per check, the failing ones first: they decided).
    """
    value = challenger[primary_metric]
    means = f"{primary_metric}: challenger {value:.4f} vs champion {champion[primary_metric]:.4f}"
    if difference is not None:
        diff, low, high, users = difference
        better = bool(low > min_improvement)  # False for a NaN bound (no user in common)
        primary_check = (
            better,
            f"{means}, paired difference {diff:+.4f} [{low:+.4f}, {high:+.4f}] ({confidence:.0%} interval, "
            f"{int(users):,} users): lower bound {'above' if better else 'not above'} the required "
            f"{min_improvement:+.4f}",
        )
    else:
        gain = value - champion[primary_metric]
        better = gain > min_improvement
        primary_check = (
            better,
            f"{means} ({gain:+.4f}, {'more' if better else 'not more'} than the required {min_improvement:+.4f}; "
            f"point values: {primary_metric} has no interval over users)",
        )
    loss = champion[coverage_metric] - challenger[coverage_metric]
    checks = [
        primary_check,
        (
            loss <= max_coverage_loss,
            f"{coverage_metric}: challenger {challenger[coverage_metric]:.4f} vs champion "
            f"{champion[coverage_metric]:.4f} (loss {loss:+.4f}, "
            f"{'within' if loss <= max_coverage_loss else 'beyond'} the allowed {max_coverage_loss:.4f})",
        ),
    ]
    auto = all(passed for passed, _ in checks)
    # The failing checks first: they decided.
    return auto, [text for passed, text in checks if not passed] + [text for passed, text in checks if passed]


def check_alias(cfg: Config) -> None:
    """Fail in one line when ``score.model_alias`` names no version of the registered model.

    A missing registered model is left to :func:`load_bundle` (it says to train first).
    """
    sc = cfg.score
    if sc.model_version > 0:
        return
    mlflow.set_tracking_uri(cfg.tracking_uri)
    name = cfg.mlflow.registered_model
    try:
        aliases = dict(MlflowClient().get_registered_model(name).aliases or {})
    except MlflowException:
        return
    if sc.model_alias not in aliases:
        held = ", ".join(f"@{a} = version {v}" for a, v in sorted(aliases.items())) or "no aliases"
        raise InputError(
            f"registered model {name!r} has no alias {sc.model_alias!r} ({held}): run `recsys evaluate` to promote "
            f"the challenger, or score it as it is with score.model_alias=challenger (or score.model_version=N)"
        )


def alias_version(cfg: Config, alias: str) -> str | None:
    """The version of ``cfg.mlflow.registered_model`` that holds ``alias``, or None."""
    mlflow.set_tracking_uri(cfg.tracking_uri)
    try:
        return str(MlflowClient().get_model_version_by_alias(cfg.mlflow.registered_model, alias).version)
    except MlflowException:
        return None


def apply_decision(cfg: Config, decision: GateDecision, champion_alias: str, run_id: str | None = None) -> None:
    """Move ``champion_alias`` to the challenger when promoted, and tag the challenger version
    with the decision (``gate.decision``, ``gate.reasons``, ``gate.champion_version``,
    ``gate.run_id``)."""
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = MlflowClient()
    name, version = cfg.mlflow.registered_model, decision.challenger_version
    if decision.promote:
        client.set_registered_model_alias(name, champion_alias, version)
    tags = {
        "gate.decision": decision.verdict,
        "gate.reasons": " | ".join(decision.reasons)[:_MAX_TAG],
        "gate.champion_version": decision.champion_version or "none",
    }
    if run_id:
        tags["gate.run_id"] = run_id
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def describe_and_alias(cfg: Config, version: str, run_id: str, description: str, lineage: Sequence[str]) -> None:
    """A version just logged by run ``run_id``: its description, the run's ``lineage`` tags that
    are set (the mode, the data it covers, an incremental run's parent), then ``mlflow.alias``
    (inside the run: the tracking URI is set)."""
    client = MlflowClient()
    name = cfg.mlflow.registered_model
    client.update_model_version(name, version, description=description)
    run_tags = client.get_run(run_id).data.tags
    for key in lineage:
        if key in run_tags:
            client.set_model_version_tag(name, version, key, run_tags[key])
    client.set_registered_model_alias(name, cfg.mlflow.alias, version)


def version_run(cfg: Config, version: str) -> tuple[str, dict[str, str]]:
    """The id and tags of the run that logged ``version`` of ``mlflow.registered_model``."""
    client = MlflowClient()
    run_id = client.get_model_version(cfg.mlflow.registered_model, version).run_id
    return run_id, client.get_run(run_id).data.tags


def tag_version(cfg: Config, version: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on a version of ``mlflow.registered_model``, in their order (inside a stage's
    run: the tracking URI is set)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(cfg.mlflow.registered_model, version, key, value)


# ----------------------------------------------------------------------------- what is gated

@dataclass(frozen=True)
class RankerChoice:
    """What the gate weighs against the champion: the deep model, or the tuned baseline that
    beats it on validation, and why.

    Args:
        ranker: "model", or the baseline family put forward in its place ("ease", ...).
        baseline: the best tuned baseline on validation, or None when none was ranked.
        difference: (mean, low, high, users) of the paired model - ``baseline`` on the primary
            metric over the validation users (an intervals.Interval), or None.
        ahead: the baseline beats the model: the interval's upper bound is below 0.
        reason: one sentence, "" when no baseline was ranked.
    """

    ranker: str
    baseline: str | None = None
    difference: tuple[float, float, float, int] | None = None
    ahead: bool = False
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "ranker": self.ranker,
            "baseline": self.baseline,
            "difference": None if self.difference is None else dict(zip(("diff", "low", "high", "users"),
                                                                         self.difference)),
            "ahead": self.ahead,
            "reason": self.reason,
        }


def choose_ranker(baseline: str | None, difference: Sequence[float] | None, mode: str = "auto",
                  confidence: float = 0.95) -> RankerChoice:
    """Put the best tuned baseline forward instead of the deep model when it beats the model
    on validation, as a pure function of the validation comparison.

    The baseline beats the model when the UPPER bound of the paired difference model - baseline
    (per validation user, on the primary metric) is below 0: the model is behind beyond noise.
    The choice is made on validation, never on test, which stays for measuring what was chosen.

    Args:
        baseline: the tuned baseline with the best validation mean ("cooccurrence", "als",
            "ease"), or None (none ranked: the model).
        difference: (mean, low, high, users) of model - baseline on validation.
        mode: score.ranker: "auto" (the baseline when it beats the model) or "model" (always the
            model; the reason still says when a baseline beats it).
        confidence: the level of ``difference``'s interval, for the reason's text.

    Returns:
        RankerChoice.
    """
    ScoreConfig.check_ranker(mode)
    if baseline is None or difference is None:
        return RankerChoice(bundles.MODEL_KIND)
    diff, low, high, users = difference
    ahead = bool(high < 0)  # False for a NaN bound (no validation user)
    label = ranker_label(baseline)
    measured = (f"model - {label} on {int(users):,} validation users = {diff:+.4f} [{low:+.4f}, {high:+.4f}] "
                f"({confidence:.0%} interval)")
    if not ahead:
        reason = f"no tuned baseline beats the model on validation: {measured}, upper bound not below 0"
        return RankerChoice(bundles.MODEL_KIND, baseline, tuple(difference), False, reason)
    if mode == "model":
        reason = f"{label} beats the model on validation: {measured}; score.ranker=model keeps the model"
        return RankerChoice(bundles.MODEL_KIND, baseline, tuple(difference), True, reason)
    reason = f"{label} beats the model on validation: {measured}; score.ranker=auto puts it forward instead"
    return RankerChoice(baseline, baseline, tuple(difference), True, reason)


def register_baseline(cfg: Config, bundle: BaselineBundle, reason: str, model_version: str, run_id: str,
                      k: int) -> str:
    """Register a tuned baseline as a new version of ``cfg.mlflow.registered_model``: the same
    pyfunc as a trained model's (logged under the active run, whose lineage it carries), with
    a description and tags that say what it is and why (``ranker``, ``ranker.params``,
    ``ranker.reason``, ``ranker.instead_of_version``).

    Returns:
        the new version, as a string.
    """
    name = cfg.mlflow.registered_model
    info = log_model(bundle, name, k=k)
    version = str(info.registered_model_version)
    settings = ", ".join(f"{key}={value}" for key, value in bundle.params.items())
    client = MlflowClient()
    client.update_model_version(name, version, description=(
        f"{ranker_label(bundle.family)} baseline ({settings}), fitted on the training windows and tuned on the "
        f"validation users by evaluate run {run_id}, registered in place of model version {model_version}: {reason}."
    )[:_MAX_TAG])
    tags = {
        "ranker": bundle.family,
        "ranker.params": json.dumps(bundle.params, sort_keys=True),
        "ranker.reason": reason[:_MAX_TAG],
        "ranker.instead_of_version": model_version,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return version
