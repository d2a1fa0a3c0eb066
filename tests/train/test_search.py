"""The hyper-parameter search of the train stage: its trials' configs, its bookkeeping, and a real search."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow import MlflowClient

from recsys_spark import tracking
from recsys_spark.config import Config, SearchConfig, TrainConfig, load_config, parse_space
from recsys_spark.errors import ConfigError, InputError, RecsysError
from recsys_spark.models.registry import load_bundle
from recsys_spark.train import launch as launchers
from recsys_spark.train import runner, search
from recsys_spark.train.checkpoint import read_checkpoint

from tests.train.test_data import write_features

METRIC = "val_ndcg_at_20"


def tiny_config(root, *extra: str) -> Config:
    return load_config(None, [
        f"paths.root={root}", "train.launcher=local", "train.device=cpu", "train.threads_per_proc=1",
        "train.epochs=2", "train.batch_size=32", "train.embedding_dim=16", "train.num_layers=1",
        "train.uniform_negatives=16", "train.warmup_steps=3", "train.patience=0",
        "search.trials=2", "search.space={lr: [0.001, 0.03, log], dropout: [0.0, 0.3], embedding_dim: [8, 16, 32]}",
        *extra,
    ])


def fake_result(ndcgs: list[float]) -> list[dict]:
    """What launch returns for rank 0 of a run whose epochs reached these validation NDCGs."""
    history = [{"epoch": e, METRIC: v} for e, v in enumerate(ndcgs, start=1)]
    best = max(range(len(ndcgs)), key=lambda i: ndcgs[i]) + 1
    return [{"rank": 0, "checksum": "c", "state_dict": {}, "history": history, "best_epoch": best}]


def search_in_a_run(cfg: Config) -> tuple[dict, str]:
    experiment_id = tracking.setup(cfg)
    with mlflow.start_run(experiment_id=experiment_id) as parent:
        return search.search(None, cfg, parent.info.run_id, cfg.tracking_uri), parent.info.run_id


@pytest.mark.unit
def test_a_trial_trains_the_drawn_values_from_scratch_in_its_own_checkpoint_folder(tmp_path):
    cfg = search.with_train_values(tiny_config(tmp_path), {"resume": True})
    trial = search.trial_config(cfg, {"lr": 0.002, "embedding_dim": 32}, 3)
    assert (trial.train.lr, trial.train.embedding_dim, trial.train.resume) == (0.002, 32, False)
    assert trial.train.dropout == cfg.train.dropout and trial.search == cfg.search
    assert trial.paths.resolve("checkpoints") == str(tmp_path / "checkpoints" / "search" / "trial_003")
    uri = load_config(None, ["paths.root=s3a://bucket/rs"])
    assert (search.trial_config(uri, {}, 1).paths.resolve("checkpoints")
            == "s3a://bucket/rs/checkpoints/search/trial_001")
    with pytest.raises(ConfigError, match=r"train.embedding_dim \(30\) must be a multiple of train.num_heads \(4\)"):
        search.trial_config(cfg, {"embedding_dim": 30, "num_heads": 4}, 1)


@pytest.mark.unit
def test_a_failed_trial_is_recorded_with_its_reason_and_the_search_goes_on(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, "search.trials=3")

    def launch(spark, trial_cfg, run_id, tracking_uri):
        if trial_cfg.paths.checkpoints.endswith("trial_002"):
            raise InputError("the trial's data went away\nsecond line")
        return fake_result([0.1, 0.3] if trial_cfg.paths.checkpoints.endswith("trial_001") else [0.2, 0.1])

    monkeypatch.setattr(launchers, "launch", launch)
    found, parent_id = search_in_a_run(cfg)

    assert found["trials"] == 3 and (found["complete"], found["failed"], found["pruned"]) == (2, 1, 0)
    assert found["best_trial"] == 1 and found["best_value"] == 0.3
    client = MlflowClient(cfg.tracking_uri)
    table = mlflow.artifacts.load_dict(f"runs:/{parent_id}/{search.TRIALS_ARTIFACT}")
    rows = {r["trial"]: r for r in table["trials"]}
    assert [rows[n]["state"] for n in (1, 2, 3)] == ["complete", "failed", "complete"]
    assert rows[2]["reason"] == "the trial's data went away" and rows[2]["value"] is None
    assert (rows[1]["value"], rows[1]["best_epoch"], rows[3]["value"], rows[3]["best_epoch"]) == (0.3, 2, 0.2, 1)
    failed = client.get_run(rows[2]["run_id"])
    assert failed.info.status == "FAILED" and failed.data.tags[search.TAG_ERROR] == "the trial's data went away"
    assert failed.data.tags["mlflow.parentRunId"] == parent_id
    assert client.get_run(parent_id).data.tags["search.outcome"] == "2 complete, 1 failed, 0 pruned"


@pytest.mark.unit
def test_a_search_without_a_completed_trial_stops_with_every_reason(tmp_path):
    # Built directly, past load_config's check of each value on its own: every num_heads drawn
    # refuses embedding_dim 16 (a combination the train section refuses), so every trial is pruned.
    cfg = Config(paths=tiny_config(tmp_path).paths, train=TrainConfig(launcher="local", embedding_dim=16),
                 search=SearchConfig(trials=2, space={"num_heads": [3, 5, 7]}))
    with pytest.raises(RecsysError, match=r"^search: none of its 2 trial\(s\) completed \(trial 1: train.embedding_dim "
                                          r"\(16\) must be a multiple of train.num_heads \(\d\); trial 2: .*\)$"):
        search_in_a_run(cfg)


@pytest.mark.unit
def test_each_drawn_value_lies_in_its_range_or_choices_with_the_key_type():
    import optuna

    dimensions = parse_space({"lr": [0.001, 0.03, "log"], "num_layers": [1, 3], "embedding_dim": [8, 16, 32],
                              "user_vector": ["mean", "last"]})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1))
    for _ in range(5):
        values = {d.key: search.suggest(study.ask(), d) for d in dimensions}
        assert isinstance(values["lr"], float) and 0.001 <= values["lr"] <= 0.03
        assert type(values["num_layers"]) is int and 1 <= values["num_layers"] <= 3
        assert values["embedding_dim"] in (8, 16, 32) and values["user_vector"] in ("mean", "last")


@pytest.mark.unit
def test_trials_figure_plots_completed_trials_and_the_running_best():
    rows = [{"trial": 1, "state": "complete", "value": 0.2}, {"trial": 2, "state": "failed", "value": None},
            {"trial": 3, "state": "complete", "value": 0.1}, {"trial": 4, "state": "complete", "value": 0.4}]
    fig = search.trials_figure(rows, METRIC)
    [axis] = fig.axes
    points, running = axis.lines
    assert list(points.get_xdata()) == [1, 3, 4] and list(points.get_ydata()) == [0.2, 0.1, 0.4]
    assert list(running.get_ydata()) == [0.2, 0.2, 0.4]
    assert "1 failed or pruned" in axis.get_title()


@pytest.mark.e2e
def test_train_stage_searches_then_trains_the_model_with_the_best_values(spark, tmp_path):
    write_features(tmp_path / "features")
    cfg = tiny_config(tmp_path)

    summary = runner.run(spark, cfg)

    client = MlflowClient(cfg.tracking_uri)
    parent = client.get_run(summary["run_id"])
    trials = client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in trials) == ["trial 1", "trial 2"]
    objectives = {}
    for run in trials:
        assert run.info.status == "FINISHED"
        params = {k: run.data.params[f"train.{k}"] for k in ("lr", "dropout", "embedding_dim")}
        assert 0.001 <= float(params["lr"]) <= 0.03 and params["embedding_dim"] in {"8", "16", "32"}
        # The objective: the best of the validation metric the trial's own training logged.
        logged = client.get_metric_history(run.info.run_id, METRIC)
        assert logged and run.data.metrics[f"best_{METRIC}"] == max(m.value for m in logged)
        objectives[run.data.metrics[f"best_{METRIC}"]] = params
    assert len({json.dumps(p) for p in objectives.values()}) == 2  # two different draws

    best_value = max(objectives)
    best = objectives[best_value]
    assert {k: parent.data.params[f"search.best.{k}"] for k in best} == best
    assert parent.data.metrics[f"search.best_{METRIC}"] == best_value
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {search.TRIALS_ARTIFACT, search.FIGURE_ARTIFACT} <= artifacts
    chosen = json.loads(parent.data.tags["search.chosen"])
    assert {k: str(v) for k, v in chosen.items()} == best
    assert summary["search_best"]["params"] == chosen
    assert summary["search_best"]["trials"] == "2 complete, 0 failed, 0 pruned"

    # The registered model was trained with the best values, and its training logged on the parent.
    bundle, version = load_bundle(cfg)
    assert version == summary["version"] == "1"
    assert (bundle.model_args["dim"], bundle.model_args["dropout"]) == (chosen["embedding_dim"], chosen["dropout"])
    assert {k: bundle.config["train"][k] for k in chosen} == chosen
    assert summary[METRIC] == pytest.approx(max(m.value for m in client.get_metric_history(parent.info.run_id, METRIC)),
                                            abs=1e-5)
    assert read_checkpoint(str(tmp_path / "checkpoints"))["config"]["train"]["lr"] == chosen["lr"]
    # Each trial kept its checkpoints apart from the stage's own.
    for run in trials:
        n = run.data.tags[search.TAG_TRIAL]
        kept = read_checkpoint(str(tmp_path / "checkpoints" / "search" / f"trial_00{n}"))["config"]["train"]
        assert {k: str(kept[k]) for k in best} == {k: run.data.params[f"train.{k}"] for k in best}
        assert kept["resume"] is False
