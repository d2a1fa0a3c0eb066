"""The DAG as Airflow's DagBag parses it: no import errors, the task graph, each task's arguments."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from tests.airflow.conftest import REPO, load_dag

pytestmark = pytest.mark.unit

STAGES = ["clean", "featurize", "train", "evaluate", "score"]


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
    assert {t.task_id: t.retries for t in dag.tasks} == {"clean": 2, "featurize": 2, "train": 1, "evaluate": 1, "score": 2}
    assert all(t.retry_delay == dt.timedelta(minutes=5) and t.retry_exponential_backoff for t in dag.tasks)


def test_arguments_of_each_task_for_a_date_with_the_built_in_defaults(airflow_home):
    dag = load_dag()
    params = dag.params.dump()
    assert params == {"config": "conf/local.yaml", "py_files": "dist/recsys_spark.zip", "project": str(REPO)}
    rendered = {t.task_id: render(t, "2019-10-05", params) for t in dag.tasks}

    config = ["--config", f"{REPO}/conf/local.yaml"]
    assert rendered["clean"].application_args == [*config, "clean.start_date=2019-10-05", "clean.end_date=2019-10-05"]
    assert rendered["score"].application_args == [*config, "score.run_date=2019-10-05"]
    for stage in ("featurize", "train", "evaluate"):
        assert rendered[stage].application_args == config
    for stage, task in rendered.items():
        assert task.application == f"{REPO}/jobs/{stage}.py"
        assert task.py_files == f"{REPO}/dist/recsys_spark.zip"
        assert task.name == f"recsys_{stage}_2019-10-05"
        assert task._conn_id == "spark_default"


def test_variables_set_the_defaults_and_a_run_can_override_them(airflow_home):
    dag = load_dag(
        {
            "recsys_config": "/etc/recsys/cluster.yaml",
            "recsys_py_files": "hdfs:///apps/recsys/recsys_spark.zip",
            "recsys_project": "/opt/recsys/",
            "recsys_spark_conn_id": "spark_yarn",
        }
    )
    params = dag.params.dump()
    train = render(dag.get_task("train"), "2020-01-31", params)
    assert train.application == "/opt/recsys/jobs/train.py"
    assert train.application_args == ["--config", "/etc/recsys/cluster.yaml"]
    assert train.py_files == "hdfs:///apps/recsys/recsys_spark.zip"
    assert all(t._conn_id == "spark_yarn" for t in dag.tasks)

    # A run's conf (airflow dags trigger --conf) replaces a param; relative paths are under project.
    score = render(dag.get_task("score"), "2020-01-31", {**params, "config": "conf/backfill.yaml"})
    assert score.application_args == ["--config", "/opt/recsys/conf/backfill.yaml", "score.run_date=2020-01-31"]
