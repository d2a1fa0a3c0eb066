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


@pytest.mark.parametrize("stage, key", [("clean", "raw"), ("featurize", "clean"), ("train", "features"), ("score", "features")])
def test_missing_input_path_is_one_line_naming_path_and_key(tmp_path, stage, key):
    out = _recsys(stage, f"paths.root={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"recsys {stage}: error: input path {tmp_path / key} does not exist (config key paths.{key})"
    )


def test_unknown_stage_is_rejected_by_argparse():
    out = _recsys("explode")
    assert out.returncode == 2 and "invalid choice: 'explode'" in out.stderr


def test_packaged_zip_imports_without_site_packages(tmp_path):
    zpath = build_zip(tmp_path / "recsys_spark.zip")
    names = zipfile.ZipFile(zpath).namelist()
    assert "recsys_spark/__init__.py" in names and "recsys_spark/config.py" in names
    assert not any("__pycache__" in n or n.startswith("tests/") for n in names)
    # -S: no site-packages, so the package can only come from the zip.
    out = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(zpath)!r}); "
         "import recsys_spark, recsys_spark.errors; print(recsys_spark.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(zpath / "recsys_spark" / "__init__.py")
