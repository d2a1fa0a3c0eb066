"""The command line: one-line errors, exit codes, the packaged zip."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from recsys_spark.packaging import build_zip

from tests.conftest import REPO

pytestmark = pytest.mark.unit


def _recsys(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "recsys_spark", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "train.epoch=3"], "recsys train: error: unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
        (["clean", "spark.shuffle_partitions=lots"], "recsys clean: error: spark.shuffle_partitions: expected an integer, got str 'lots'"),
        (["clean", "--config", "conf/nope.yaml"], "recsys clean: error: config file not found: " + str(REPO / "conf" / "nope.yaml")),
    ],
)
def test_config_errors_are_one_line_with_exit_2(args, expected):
    out = _recsys(*args)
    assert out.returncode == 2
    assert out.stderr.strip() == expected


# One bad key of each section; every stage checks every section before Spark starts (a mistake
# in evaluate's settings stops `recsys clean` at once, not hours later after training).
BAD_KEYS = {
    "spark": ("spark.observation_timeout_s=0", "spark.observation_timeout_s must be > 0 (every wait has a bound), got 0.0"),
    "generate": ("generate.p_cart=1.5", "generate.p_cart must be in [0, 1], got 1.5"),
    "clean": ("clean.session_gap_minutes=0", "clean.session_gap_minutes must be >= 1, got 0"),
    "featurize": ("featurize.dq_max_null_rate.prize=0.5",
                  "featurize.dq_max_null_rate.prize: no such column of the clean events (did you mean price?)"),
    "train": ("train.plateau_factor=0", "train.plateau_factor must lie in (0, 1], got 0.0"),
    "search": ("search.trials=-1", "search.trials must be >= 0, got -1"),
    "evaluate": ("evaluate.ks=[0,10]", "evaluate.ks: expected positive cut-offs, got [0, 10]"),
    "score": ("score.run_date=yesterday", "score.run_date: 'yesterday' is not an ISO date (YYYY-MM-DD)"),
    "publish": ("publish.run_date=2019-13-01", "publish.run_date: '2019-13-01' is not an ISO date (YYYY-MM-DD)"),
    "serve": ("serve.keep_versions=1", "serve.keep_versions must be >= 2, got 1"),
}


@pytest.mark.parametrize("section", list(BAD_KEYS))
@pytest.mark.parametrize("stage", ["clean", "train"])
def test_a_bad_key_of_any_section_stops_any_stage_before_spark_starts(tmp_path, stage, section):
    override, message = BAD_KEYS[section]
    code = ("import sys, recsys_spark.spark as s\n"
            "def refuse(*a, **k): raise SystemExit('Spark was started')\n"
            "s.get_session = refuse\n"
            "from recsys_spark.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = subprocess.run([sys.executable, "-c", code, stage, f"paths.root={tmp_path}", override],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip() == f"recsys {stage}: error: {message}"


@pytest.mark.parametrize("stage, key", [("clean", "raw"), ("featurize", "clean"), ("train", "features"), ("score", "features"),
                                        ("publish", "recommendations")])
def test_missing_input_path_is_one_line_naming_path_and_key(tmp_path, stage, key):
    out = _recsys(stage, f"paths.root={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"recsys {stage}: error: input path {tmp_path / key} does not exist (config key paths.{key})"
    )


def test_unknown_stage_is_rejected_by_argparse():
    out = _recsys("explode")
    assert out.returncode == 2 and "invalid choice: 'explode'" in out.stderr


def test_an_option_of_another_stage_is_refused():
    out = _recsys("score", "--rollback")
    assert out.returncode == 2 and "--rollback is an option of recsys publish, not of recsys score" in out.stderr


def test_packaged_zip_imports_without_site_packages(tmp_path):
    zpath = build_zip(tmp_path / "recsys_spark.zip")
    names = zipfile.ZipFile(zpath).namelist()
    assert "recsys_spark/__init__.py" in names and "recsys_spark/config/__init__.py" in names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    # -S: no site-packages, so the package can only come from the zip.
    out = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(zpath)!r}); "
         "import recsys_spark, recsys_spark.errors; print(recsys_spark.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(zpath / "recsys_spark" / "__init__.py")


def test_a_job_entry_parses_the_options_of_its_stage_only(capsys):
    from recsys_spark.cli import run_stage

    assert run_stage("clean", ["clean.session_gap_minutes=0"]) == 2
    assert capsys.readouterr().err.strip() == "recsys clean: error: clean.session_gap_minutes must be >= 1, got 0"
    assert run_stage("publish", ["--rollback", "publish.run_date=2019-10-12"]) == 2
    assert capsys.readouterr().err.strip() == ("recsys publish: error: publish.rollback=true switches back to the "
                                               "previous version: it publishes no run date (drop "
                                               "publish.run_date=2019-10-12)")
