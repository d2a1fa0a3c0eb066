"""A real spark-submit, from the installed pyspark, of two jobs with the packaged --py-files zip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from recsys_spark import schema
from recsys_spark.packaging import build_zip

from tests.conftest import REPO

pytestmark = pytest.mark.e2e

SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def _submit(job: str, zip_path: Path, root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    cmd = [
        str(SPARK_SUBMIT), "--master", "local[2]", "--driver-memory", "1g",
        "--conf", "spark.ui.enabled=false",
        "--py-files", str(zip_path),
        str(REPO / "jobs" / f"{job}.py"),
        "--config", str(REPO / "conf" / "local.yaml"),
        f"paths.root={root}", "spark.show_progress=false", *overrides,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=root.parent, env=env, timeout=300)


def test_spark_submit_generate_then_clean(tmp_path):
    zip_path = build_zip(tmp_path / "dist" / "recsys_spark.zip")
    root = tmp_path / "work"
    small = ["generate.n_users=60", "generate.n_items=40", "generate.days=3", "generate.n_bots=1"]

    gen = _submit("generate", zip_path, root, *small)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert "== recsys generate: done" in gen.stdout

    clean = _submit("clean", zip_path, root)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "== recsys clean: done" in clean.stdout
    days = sorted(p.name for p in (root / "clean").iterdir() if p.name.startswith(f"{schema.EVENT_DATE}="))
    assert len(days) == 3
    table = pq.read_table(root / "clean")
    assert table.num_rows > 0
    assert set(schema.CLEAN_SCHEMA.fieldNames()) <= set(table.column_names)


def test_spark_submit_reports_bad_config_in_one_line(tmp_path):
    zip_path = build_zip(tmp_path / "recsys_spark.zip")
    out = _submit("clean", zip_path, tmp_path / "work", "clean.input_format=xml")
    assert out.returncode == 2
    # Spark's PythonRunner merges the driver's stderr into stdout, so look at both.
    printed = out.stdout + out.stderr
    assert "recsys clean: error: clean.input_format: 'xml' is not one of 'csv', 'json', 'parquet'" in printed
    assert "Traceback" not in printed


def test_spark_submit_settings_win_over_the_config(tmp_path):
    """--master and --name on spark-submit's command line beat the config's spark section."""
    script = tmp_path / "probe.py"
    script.write_text(
        "from recsys_spark.config import SparkConfig\n"
        "from recsys_spark.spark import get_session\n"
        "spark = get_session(SparkConfig(master='local[2]', app_name='from_config', show_progress=False))\n"
        "sc = spark.sparkContext\n"
        "print('PROBE', sc.master, sc.appName, spark.conf.get('spark.sql.session.timeZone'))\n"
        "spark.stop()\n"
    )
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": str(REPO)}
    cmd = [str(SPARK_SUBMIT), "--master", "local[1]", "--name", "from_submit",
           "--conf", "spark.ui.enabled=false", str(script)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # The config's own settings (not given to spark-submit) still apply.
    assert "PROBE local[1] from_submit UTC" in out.stdout
