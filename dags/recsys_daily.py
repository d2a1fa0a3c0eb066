"""``recsys_daily``: the daily batch, clean -> featurize -> train -> evaluate -> score -> publish, by spark-submit.

Each task is one ``spark-submit jobs/<stage>.py --config <file> [section.key=value ...]`` of
the packaged project (``make package`` builds the ``--py-files`` zip). The run's date, ``ds``,
goes to the jobs as dotted overrides: clean re-cleans exactly that day (its event_date
partition is replaced, the others are left alone) and score writes exactly that day's
run_date partition, so a backfill of a past date reprocesses that date and nothing else.
Evaluate holds the registry gate: it moves the champion alias only when the new model wins,
and score reads the champion. Publish loads that day's recommendations into the Redis store of
the config's ``serve`` section and switches the served version to them once all are written;
a retry of a date publishes the same version again (idempotent), a backfill of a date older
than the one served is not published (it would replace newer lists), and ``recsys publish
--rollback`` serves the version before.

Runs are daily over a data interval: the run of ``ds`` = 2019-10-05 starts once that day is
over (2019-10-06 00:00 UTC) and processes 2019-10-05.

Daily incremental, weekly full. Train runs ``train.mode=full`` on the days whose date's
proleptic ordinal (``date.toordinal()``) is a multiple of ``full_every_days`` (with 7, every
Sunday; with 1, every day) and ``train.mode=incremental`` on the others. The rule reads the date
alone, so a retry, a rerun or a backfill of a date trains as that date's first run did. The
param ``train_mode`` forces one mode, for every run (its Variable) or for one run (``--conf
'{"train_mode": "full"}'``), e.g. full after a change of the model's shape or of the featurize
settings (README, "Daily incremental training"). An incremental run warm-starts from the
champion and trains on the windows newer than it plus a replay sample; with no champion, or one
of another shape, it trains in full by itself (and logs it). Featurize extends the champion's
vocabularies append-only (``featurize.vocab_mode=extend featurize.vocab_from=@champion``; fresh
ones while no model is registered), so each run's features go to a folder of their own,
``<features>/ds=<ds>`` (under the config's ``paths.root`` unless a URI), which featurize, train,
evaluate and score of the run all get as ``paths.features``. Whatever the mode, evaluate's gate
still decides whether the new version becomes champion: a failed incremental run (a failed
task, or a model that loses at the gate) never moves the champion, and the next run starts from
the same one. The per-day features folders accumulate: delete old ones once no registered model
version needs them (a version was trained on the folder of its run's ``ds``; the champion's is
also where the next run's vocabularies come from).

Settings, each a DAG param whose default comes from an Airflow Variable (read when the DAG
file is parsed) or the built-in default below; a manual run can override any param
(``airflow dags trigger recsys_daily --conf '{"config": "conf/cluster.yaml"}'``), and a value
that does not fit the param (a ``train_mode`` not in the list, ``full_every_days`` below 1) is
refused at parse or trigger time:

  param            Variable                built-in default
  config           recsys_config           conf/local.yaml        (relative to project)
  py_files         recsys_py_files         dist/recsys_spark.zip  (relative to project)
  project          recsys_project          the folder above this file's folder
  train_mode       recsys_train_mode       auto                   (auto, full or incremental)
  full_every_days  recsys_full_every_days  7                      (auto: full every N days)
  features         recsys_features         features               (each run's in <features>/ds=<ds>)

The Spark master (and deploy mode, queue) is the Airflow connection ``recsys_spark_conn_id``
(Variable; default ``spark_default``), e.g. ``airflow connections add spark_default
--conn-type spark --conn-host 'local[2]'``. ``spark-submit`` must be on the workers' PATH
(the provider runs no other binary), and the jobs' Python is Spark's ``PYSPARK_PYTHON``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        overrides: dotted ``section.key=value`` overrides after the config, templates of the
            run (``ds``, ``params`` and the DAG's macros).
    """

    name: str
    timeout: dt.timedelta
    retries: int
    overrides: tuple[str, ...] = ()


def train_mode(ds: str, params: Mapping[str, Any]) -> str:
    """The run's ``train.mode``, a DAG macro: ``params.train_mode`` unless it is ``auto``; then full
    on the dates whose proleptic ordinal is a multiple of ``params.full_every_days``, incremental
    on the others. It reads the date alone, so every run of a date trains the same way.

    Args:
        ds: the run's date, ``YYYY-MM-DD``.
        params: the run's params (``train_mode``, ``full_every_days``).

    Returns:
        ``"full"`` or ``"incremental"``.
    """
    if params["train_mode"] != "auto":
        return params["train_mode"]
    return "full" if dt.date.fromisoformat(ds).toordinal() % params["full_every_days"] == 0 else "incremental"


# The run's own features folder: featurize, train, evaluate and score of a run must all get it.
FEATURES = "paths.features={{ params.features.rstrip('/') }}/ds={{ ds }}"

# In order. A try that runs past its timeout fails and is retried: size them to your data
# (these suit a daily run of millions of events on a small cluster, train the long one; a
# retry of train starts over, unless the config sets train.resume=true).
STAGES = (
    Stage("clean", dt.timedelta(minutes=45), retries=2,
          overrides=("clean.start_date={{ ds }}", "clean.end_date={{ ds }}")),
    Stage("featurize", dt.timedelta(hours=1), retries=2,
          overrides=(FEATURES, "featurize.vocab_mode=extend", "featurize.vocab_from=@champion")),
    Stage("train", dt.timedelta(hours=4), retries=1, overrides=(FEATURES, "train.mode={{ train_mode(ds, params) }}")),
    Stage("evaluate", dt.timedelta(hours=1), retries=1, overrides=(FEATURES,)),
    Stage("score", dt.timedelta(hours=1), retries=2, overrides=(FEATURES, "score.run_date={{ ds }}")),
    Stage("publish", dt.timedelta(minutes=30), retries=2, overrides=("publish.run_date={{ ds }}",)),
)
# The run's SLA: it fails when not done by then (the recommendations of `ds` are due the
# morning after). Airflow 3 removed task SLAs (`sla=`); timeouts are how a run is held to one.
RUN_TIMEOUT = dt.timedelta(hours=10)

# param: (Airflow Variable, built-in default, the JSON schema a value must match)
DEFAULTS = {
    "config": ("recsys_config", "conf/local.yaml", {"type": "string"}),
    "py_files": ("recsys_py_files", "dist/recsys_spark.zip", {"type": "string"}),
    "project": ("recsys_project", PROJECT, {"type": "string"}),
    "train_mode": ("recsys_train_mode", "auto", {"type": "string", "enum": ["auto", "full", "incremental"]}),
    "full_every_days": ("recsys_full_every_days", 7, {"type": "integer", "minimum": 1}),
    "features": ("recsys_features", "features", {"type": "string", "minLength": 1}),
}
CONN_ID = Variable.get("recsys_spark_conn_id", default="spark_default")


def _param(variable: str, default: Any, schema: dict[str, Any]) -> Param:
    """The param, its default the Variable's value, else ``default``.

    Variables hold strings: an integer param's is read as one (a value that is not stays a string,
    and the param's check names it).
    """
    value = Variable.get(variable, default=default)
    if schema["type"] == "integer" and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = int(value)
    return Param(value, schema=schema)


def _in_project(param: str) -> str:
    """A template: the param as a path, under the project folder unless it is absolute or a URI."""
    value = f"params.{param}"
    return (
        "{{ " + value + " if " + value + ".startswith('/') or '://' in " + value
        + " else params.project.rstrip('/') ~ '/' ~ " + value + " }}"
    )


def application_args(stage: Stage) -> list[str]:
    """The job's arguments: the config file, then the stage's overrides (templates)."""
    return ["--config", _in_project("config"), *stage.overrides]


with DAG(
    dag_id=DAG_ID,
    description="clickstream -> features -> two-tower model -> gated registry -> daily top-K recommendations",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=dt.datetime(2019, 10, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    # Runs share the registry (an incremental run starts from the champion the run before may
    # have moved, and featurize extends that champion's vocabularies): one at a time, in order.
    max_active_runs=1,
    dagrun_timeout=RUN_TIMEOUT,
    params={name: _param(*setting) for name, setting in DEFAULTS.items()},
    user_defined_macros={"train_mode": train_mode},
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
