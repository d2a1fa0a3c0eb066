"""``recsys_daily``: the daily batch, clean -> featurize -> train -> evaluate -> score, by spark-submit.

Each task is one ``spark-submit jobs/<stage>.py --config <file> [section.key=value ...]`` of
the packaged project (``make package`` builds the ``--py-files`` zip). The run's date, ``ds``,
goes to the jobs as dotted overrides: clean re-cleans exactly that day (its event_date
partition is replaced, the others are left alone) and score writes exactly that day's
run_date partition, so a backfill of a past date reprocesses that date and nothing else.
Evaluate holds the registry gate: it moves the champion alias only when the new model wins,
and score reads the champion.

Runs are daily over a data interval: the run of ``ds`` = 2019-10-05 starts once that day is
over (2019-10-06 00:00 UTC) and processes 2019-10-05.

Settings, each a DAG param whose default comes from an Airflow Variable (read when the DAG
file is parsed) or the built-in default below; a manual run can override any param
(``airflow dags trigger recsys_daily --conf '{"config": "conf/cluster.yaml"}'``):

  param       Variable                built-in default
  config      recsys_config           conf/local.yaml        (relative to project)
  py_files    recsys_py_files         dist/recsys_spark.zip  (relative to project)
  project     recsys_project          the folder above this file's folder

The Spark master (and deploy mode, queue) is the Airflow connection ``recsys_spark_conn_id``
(Variable; default ``spark_default``), e.g. ``airflow connections add spark_default
--conn-type spark --conn-host 'local[2]'``. ``spark-submit`` must be on the workers' PATH
(the provider runs no other binary), and the jobs' Python is Spark's ``PYSPARK_PYTHON``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG, Param, Variable
from airflow.timetables.interval import CronDataIntervalTimetable

DAG_ID = "recsys_daily"
PROJECT = str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class Stage:
    """One spark-submit task.

    Args:
        name: the stage, also the job (``jobs/<name>.py``) and the task id.
        timeout: the task fails (and is retried) when one try runs longer.
        retries: further tries after a failure; every stage is safe to re-run.
        dated: dotted overrides templated with the run's date.
    """

    name: str
    timeout: dt.timedelta
    retries: int
    dated: tuple[str, ...] = ()


# In order. A try that runs past its timeout fails and is retried: size them to your data
# (these suit a daily run of millions of events on a small cluster, train the long one; a
# retry of train starts over, unless the config sets train.resume=true).
STAGES = (
    Stage("clean", dt.timedelta(minutes=45), retries=2, dated=("clean.start_date={{ ds }}", "clean.end_date={{ ds }}")),
    Stage("featurize", dt.timedelta(hours=1), retries=2),
    Stage("train", dt.timedelta(hours=4), retries=1),
    Stage("evaluate", dt.timedelta(hours=1), retries=1),
    Stage("score", dt.timedelta(hours=1), retries=2, dated=("score.run_date={{ ds }}",)),
)
# The run's SLA: it fails when not done by then (the recommendations of `ds` are due the
# morning after). Airflow 3 removed task SLAs (`sla=`); timeouts are how a run is held to one.
RUN_TIMEOUT = dt.timedelta(hours=10)

DEFAULTS = {
    "config": ("recsys_config", "conf/local.yaml"),
    "py_files": ("recsys_py_files", "dist/recsys_spark.zip"),
    "project": ("recsys_project", PROJECT),
}
CONN_ID = Variable.get("recsys_spark_conn_id", default="spark_default")


def _in_project(param: str) -> str:
    """A template: the param as a path, under the project folder unless it is absolute or a URI."""
    value = f"params.{param}"
    return (
        "{{ " + value + " if " + value + ".startswith('/') or '://' in " + value
        + " else params.project.rstrip('/') ~ '/' ~ " + value + " }}"
    )


def application_args(stage: Stage) -> list[str]:
    """The job's arguments: the config file, then the dated overrides (templates)."""
    return ["--config", _in_project("config"), *stage.dated]


with DAG(
    dag_id=DAG_ID,
    description="clickstream -> features -> two-tower model -> gated registry -> daily top-K recommendations",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=dt.datetime(2019, 10, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,  # runs share paths.features and the registry: one at a time, in order
    dagrun_timeout=RUN_TIMEOUT,
    params={name: Param(Variable.get(var, default=default), type="string") for name, (var, default) in DEFAULTS.items()},
    default_args={"retry_delay": dt.timedelta(minutes=5), "retry_exponential_backoff": True},
    tags=["recsys_spark"],
) as dag:
    previous = None
    for stage in STAGES:
        task = SparkSubmitOperator(
            task_id=stage.name,
            conn_id=CONN_ID,
            application="{{ params.project.rstrip('/') }}/jobs/" + stage.name + ".py",
            py_files=_in_project("py_files"),
            application_args=application_args(stage),
            name=f"recsys_{stage.name}_{{{{ ds }}}}",
            retries=stage.retries,
            execution_timeout=stage.timeout,
        )
        if previous is not None:
            previous >> task
        previous = task
