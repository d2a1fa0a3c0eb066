"""The DAG as Airflow's DagBag parses it: no import errors, the task graph, each task's arguments."""

from __future__ import annotations

import copy
import datetime as dt
import re

import pytest

from tests.airflow.conftest import DAGS, REPO, load_dag

pytestmark = pytest.mark.unit

STAGES = ["clean", "featurize", "train", "evaluate", "score", "publish"]


def render(task, ds: str, params: dict):
    """A copy of ``task`` with its templated fields rendered for the run of ``ds``."""
    rendered = copy.deepcopy(task)
    rendered.render_template_fields({"ds": ds, "params": params})
    return rendered


def test_dag_parses_into_a_daily_chain_of_spark_submits(airflow_home):
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
    from airflow.timetables.interval import CronDataIntervalTimetable

    dag = load_dag()
    assert dag.dag_id == "recsys_daily"
    assert [t.task_id for t in dag.topological_sort()] == STAGES
    for upstream, downstream in zip(STAGES, STAGES[1:]):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert all(isinstance(t, SparkSubmitOperator) for t in dag.tasks)
    # Daily over data intervals: the run of 2019-10-05 covers that day and starts once it is over.
    assert isinstance(dag.timetable, CronDataIntervalTimetable) and dag.timetable.summary == "0 0 * * *"
    interval = dag.timetable.infer_manual_data_interval(run_after=dt.datetime(2019, 10, 6, tzinfo=dt.timezone.utc))
    assert (interval.start.date(), interval.end.date()) == (dt.date(2019, 10, 5), dt.date(2019, 10, 6))
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.dagrun_timeout == dt.timedelta(hours=10)


def test_each_task_has_retries_and_a_timeout_that_fits_it(airflow_home):
    dag = load_dag()
    timeouts = {t.task_id: t.execution_timeout for t in dag.tasks}
    assert timeouts["train"] == dt.timedelta(hours=4)
    assert all(timeouts[s] <= dt.timedelta(hours=1) for s in STAGES if s != "train")
    # The whole chain fits in the run's timeout.
    assert sum(timeouts.values(), dt.timedelta()) <= dag.dagrun_timeout
    assert {t.task_id: t.retries for t in dag.tasks} == {"clean": 2, "featurize": 2, "train": 1, "evaluate": 1, "score": 2,
                                                         "publish": 2}
    assert all(t.retry_delay == dt.timedelta(minutes=5) and t.retry_exponential_backoff for t in dag.tasks)


def test_arguments_of_each_task_for_a_date_with_the_built_in_defaults(airflow_home):
    dag = load_dag()
    params = dag.params.dump()
    assert params == {
        "config": "conf/local.yaml", "py_files": "dist/recsys_spark.zip", "project": str(REPO),
        "train_mode": "auto", "full_every_days": 7, "features": "features",
    }
    config = ["--config", f"{REPO}/conf/local.yaml"]
    # 2019-10-05 is a Saturday (incremental), 2019-10-06 a Sunday (full).
    for ds, mode in (("2019-10-05", "incremental"), ("2019-10-06", "full")):
        rendered = {t.task_id: render(t, ds, params) for t in dag.tasks}
        features = f"paths.features=features/ds={ds}"
        assert rendered["clean"].application_args == [*config, f"clean.start_date={ds}", f"clean.end_date={ds}"]
        assert rendered["featurize"].application_args == [
            *config, features, "featurize.vocab_mode=extend", "featurize.vocab_from=@champion"
        ]
        assert rendered["train"].application_args == [*config, features, f"train.mode={mode}"]
        assert rendered["evaluate"].application_args == [*config, features]
        assert rendered["score"].application_args == [*config, features, f"score.run_date={ds}"]
        assert rendered["publish"].application_args == [*config, f"publish.run_date={ds}"]
        for stage, task in rendered.items():
            assert task.application == f"{REPO}/jobs/{stage}.py"
            assert task.py_files == f"{REPO}/dist/recsys_spark.zip"
            assert task.name == f"recsys_{stage}_{ds}"
            assert task._conn_id == "spark_default"


def test_variables_set_the_defaults_and_a_run_can_override_them(airflow_home):
    dag = load_dag(
        {
            "recsys_config": "/etc/recsys/cluster.yaml",
            "recsys_py_files": "hdfs:///apps/recsys/recsys_spark.zip",
            "recsys_project": "/opt/recsys/",
            "recsys_spark_conn_id": "spark_yarn",
            "recsys_train_mode": "full",
            "recsys_full_every_days": "3",
            "recsys_features": "hdfs:///data/recsys/features/",
        }
    )
    params = dag.params.dump()
    assert {k: params[k] for k in ("train_mode", "full_every_days", "features")} == {
        "train_mode": "full", "full_every_days": 3, "features": "hdfs:///data/recsys/features/"
    }
    # 2020-01-31 is a Friday, incremental under the rule: the Variable forces full.
    train = render(dag.get_task("train"), "2020-01-31", params)
    assert train.application == "/opt/recsys/jobs/train.py"
    assert train.application_args == [
        "--config", "/etc/recsys/cluster.yaml", "paths.features=hdfs:///data/recsys/features/ds=2020-01-31",
        "train.mode=full",
    ]
    assert train.py_files == "hdfs:///apps/recsys/recsys_spark.zip"
    assert all(t._conn_id == "spark_yarn" for t in dag.tasks)

    # A run's conf (airflow dags trigger --conf) replaces a param; relative paths are under project.
    score = render(dag.get_task("score"), "2020-01-31", {**params, "config": "conf/backfill.yaml"})
    assert score.application_args == [
        "--config", "/opt/recsys/conf/backfill.yaml", "paths.features=hdfs:///data/recsys/features/ds=2020-01-31",
        "score.run_date=2020-01-31",
    ]


WEEK = [f"2019-10-{day:02}" for day in range(7, 14)]  # Monday 2019-10-07 to Sunday 2019-10-13


def train_modes(dag, params: dict) -> dict[str, tuple[str, str]]:
    """Each day of WEEK: (the train_mode macro's answer, the train.mode the train task renders)."""
    macro = dag.user_defined_macros["train_mode"]
    train = dag.get_task("train")
    modes = {}
    for ds in WEEK:
        (rendered,) = [a for a in render(train, ds, params).application_args if a.startswith("train.mode=")]
        modes[ds] = (macro(ds, params), rendered.removeprefix("train.mode="))
    return modes


def test_auto_mode_trains_in_full_on_sundays_and_incrementally_on_the_other_days(airflow_home):
    dag = load_dag()
    modes = train_modes(dag, dag.params.dump())
    expected = dict.fromkeys(WEEK, "incremental") | {"2019-10-13": "full"}  # the Sunday
    assert modes == {ds: (mode, mode) for ds, mode in expected.items()}


@pytest.mark.parametrize(
    ("every", "full_days"),
    [
        (1, WEEK),
        # Proleptic ordinals 737340 and 737343 are the multiples of 3 in the week.
        (3, ["2019-10-08", "2019-10-11"]),
    ],
)
def test_full_every_days_sets_which_days_train_in_full(airflow_home, every, full_days):
    dag = load_dag()
    modes = train_modes(dag, {**dag.params.dump(), "full_every_days": every})
    expected = {ds: "full" if ds in full_days else "incremental" for ds in WEEK}
    assert modes == {ds: (mode, mode) for ds, mode in expected.items()}


# Each against a rule that disagrees: weekly full (6 incremental days), full every day.
@pytest.mark.parametrize(("forced", "every"), [("full", 7), ("incremental", 1)])
def test_a_run_can_force_the_train_mode_whatever_the_date(airflow_home, forced, every):
    dag = load_dag()
    modes = train_modes(dag, {**dag.params.dump(), "train_mode": forced, "full_every_days": every})
    assert modes == dict.fromkeys(WEEK, (forced, forced))


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"train_mode": "sometimes"}, "Invalid input for param train_mode: 'sometimes' is not one of"),
        ({"full_every_days": 0}, "Invalid input for param full_every_days: 0 is less than the minimum of 1"),
        ({"full_every_days": "7"}, "Invalid input for param full_every_days: '7' is not of type 'integer'"),
        ({"features": ""}, "Invalid input for param features"),
    ],
)
def test_a_run_conf_that_does_not_fit_the_params_is_refused(airflow_home, conf, message):
    from airflow.exceptions import ParamValidationError
    from airflow.serialization.serialized_objects import DagSerialization

    # As `airflow dags trigger --conf` does: the serialized DAG's params, merged with the conf.
    dag = DagSerialization.from_dict(DagSerialization.to_dict(load_dag()))
    dag.params.deep_merge({"train_mode": "full", "full_every_days": 1}).validate()
    with pytest.raises(ParamValidationError, match=re.escape(message)):
        dag.params.deep_merge(conf).validate()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("recsys_train_mode", "sometimes", "Invalid input for param train_mode"),
        ("recsys_full_every_days", "0", "Invalid input for param full_every_days"),
        ("recsys_full_every_days", "weekly", "Invalid input for param full_every_days"),
    ],
)
def test_a_variable_that_does_not_fit_its_param_fails_the_parse(airflow_home, monkeypatch, variable, value, message):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv(f"AIRFLOW_VAR_{variable.upper()}", value)
    bag = DagBag(str(DAGS))
    assert "recsys_daily" not in bag.dags
    (error,) = bag.import_errors.values()
    assert message in error


def test_every_stage_of_a_run_reads_and_writes_the_same_features_folder(airflow_home):
    dag = load_dag()
    params = {**dag.params.dump(), "features": "s3://bucket/recsys/features/"}
    features = {
        t.task_id: [a for a in render(t, "2019-10-07", params).application_args if a.startswith("paths.features=")]
        for t in dag.tasks
    }
    run_folder = ["paths.features=s3://bucket/recsys/features/ds=2019-10-07"]
    assert features == {"clean": [], "featurize": run_folder, "train": run_folder, "evaluate": run_folder,
                        "score": run_folder, "publish": []}
