"""What the MLflow UI shows for a run: its name, tags, description, nesting and data range."""

from __future__ import annotations

import datetime as dt

import mlflow
import pytest
from mlflow import MlflowClient

from recsys_spark import pipeline, tracking
from recsys_spark.config import load_config
from recsys_spark.errors import ConfigError

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mlflow_store")  # one sqlite store: creating one takes seconds


@pytest.fixture
def store(store_root, request, monkeypatch):
    """A config on the module's sqlite store, in an experiment of the test's own; MLflow's
    global state is restored after."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv(tracking.RUN_DATE_ENV, raising=False)
    monkeypatch.setenv(tracking.GIT_COMMIT_ENV, "abc123def456")
    previous = mlflow.get_tracking_uri()
    yield load_config(None, [f"paths.root={store_root}", f"mlflow.experiment=ui-{request.node.name}"])
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous)


def test_run_date_prefers_argument_then_environment_then_score_date(monkeypatch):
    cfg = load_config(None, ["score.run_date=2019-10-07"])
    monkeypatch.delenv(tracking.RUN_DATE_ENV, raising=False)
    assert tracking.resolve_run_date(cfg) == "2019-10-07"
    assert tracking.resolve_run_date(cfg, "2019-10-09") == "2019-10-09"
    monkeypatch.setenv(tracking.RUN_DATE_ENV, "2019-10-08")
    assert tracking.resolve_run_date(cfg) == "2019-10-08"
    assert tracking.resolve_run_date(cfg, "2019-10-09") == "2019-10-09"
    monkeypatch.setenv(tracking.RUN_DATE_ENV, "08/10/2019")
    with pytest.raises(ConfigError, match=f"{tracking.RUN_DATE_ENV}: '08/10/2019' is not an ISO date"):
        tracking.resolve_run_date(cfg)


def test_run_date_defaults_to_today_in_utc(monkeypatch):
    monkeypatch.delenv(tracking.RUN_DATE_ENV, raising=False)
    before = dt.datetime.now(dt.timezone.utc).date()
    got = dt.date.fromisoformat(tracking.resolve_run_date(load_config(None, [])))
    assert before <= got <= dt.datetime.now(dt.timezone.utc).date()


def test_git_commit_comes_from_the_environment_first(monkeypatch):
    monkeypatch.setenv(tracking.GIT_COMMIT_ENV, "0123abcd")
    assert tracking.git_commit() == "0123abcd"


def test_git_commit_outside_any_checkout_is_unknown(monkeypatch, tmp_path):
    monkeypatch.delenv(tracking.GIT_COMMIT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    # The package folder may be a checkout; a zip (as under spark-submit) is not a folder.
    monkeypatch.setattr(tracking, "__file__", str(tmp_path / "recsys_spark.zip" / "recsys_spark" / "tracking.py"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert tracking.git_commit() == "unknown"


@pytest.mark.parametrize(("first", "last", "expected"), [
    ("2019-10-01", "2019-10-12", ("2019-10-01", "2019-10-12")),
    # An aware datetime counts in UTC: 23:30 at UTC-2 is the next day.
    (dt.datetime(2019, 10, 1, 5, tzinfo=dt.timezone.utc),
     dt.datetime(2019, 10, 12, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2))), ("2019-10-01", "2019-10-13")),
    ("2019-10-01T00:00:00+00:00", dt.date(2019, 10, 3), ("2019-10-01", "2019-10-03")),
])
def test_tag_data_range_writes_iso_dates(store, first, last, expected):
    with tracking.stage_run(store, "clean", run_date="2019-10-13") as run:
        tracking.tag_data_range(first, last)
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert (tags[tracking.TAG_FIRST_DATE], tags[tracking.TAG_LAST_DATE]) == expected


def test_data_range_of_features_reads_the_metadata_cutoffs():
    metadata = {"data_start": "2019-10-01T00:03:00+00:00", "data_end": "2019-10-12T21:59:00+00:00"}
    assert tracking.data_range_of_features(metadata) == ("2019-10-01", "2019-10-12")
    assert tracking.data_range_of_features({"num_items": 3}) is None


def test_stage_runs_are_named_tagged_described_and_nested(store):
    experiment_id = tracking.setup(store)
    with mlflow.start_run(experiment_id=experiment_id, run_name="pipeline-2019-10-13") as parent:
        with tracking.stage_run(store, "featurize", run_date="2019-10-13") as child:
            pass
    client = MlflowClient()
    run = client.get_run(child.info.run_id)
    assert run.info.run_name == "featurize-2019-10-13"
    assert run.info.experiment_id == experiment_id
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.data.tags[tracking.TAG_STAGE] == "featurize"
    assert run.data.tags[tracking.TAG_RUN_DATE] == "2019-10-13"
    assert run.data.tags[tracking.TAG_GIT_COMMIT] == "abc123def456"
    assert run.data.tags[tracking.TAG_NOTE].startswith("`recsys featurize`: vocabularies")
    assert run.data.params["mlflow.experiment"] == store.mlflow.experiment
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert client.get_experiment(experiment_id).tags[tracking.TAG_NOTE] == tracking.EXPERIMENT_NOTE


def test_a_failing_stage_leaves_its_run_failed(store):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run(store, "train", run_date="2019-10-13") as run:
            raise RuntimeError("boom")
    assert MlflowClient().get_run(run.info.run_id).info.status == "FAILED"


def test_pipeline_tags_data_ranges_without_overwriting_a_stage_own(store):
    experiment_id = tracking.setup(store)
    with mlflow.start_run(experiment_id=experiment_id) as parent:
        with tracking.stage_run(store, "clean") as clean:
            tracking.tag_data_range("2019-10-05", "2019-10-05")  # a one-day clean knows its own
        with tracking.stage_run(store, "train") as train:
            pass
        with tracking.stage_run(store, "score") as score:
            pass
    ranges = {"clean": ("2019-10-01", "2019-10-12"), "train": ("2019-10-01", "2019-10-12"),
              "pipeline": ("2019-09-30", "2019-10-12")}
    pipeline.tag_data_ranges(parent.info.run_id, experiment_id, ranges)

    client = MlflowClient()

    def tagged(run):
        tags = client.get_run(run.info.run_id).data.tags
        return tags.get(tracking.TAG_FIRST_DATE), tags.get(tracking.TAG_LAST_DATE)

    assert tagged(parent) == ("2019-09-30", "2019-10-12")
    assert tagged(clean) == ("2019-10-05", "2019-10-05")
    assert tagged(train) == ("2019-10-01", "2019-10-12")
    assert tagged(score) == (None, None)
