"""Both notebooks, top to bottom, on the outputs of a tiny pipeline run, in a kernel of this Python."""

from __future__ import annotations

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]  # reads the tiny Horovod run of conftest

NOTEBOOKS = REPO / "notebooks"
KERNEL = "recsys-spark-tests"


def kernel_of_this_python(folder) -> None:
    """A kernelspec that starts ipykernel with sys.executable (not whatever "python3" is here)."""
    spec = folder / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))


def execute(name: str, out_dir) -> nbformat.NotebookNode:
    """Run every cell in order (the first error fails the test); save the executed copy in out_dir."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(notebook, kernel_name=KERNEL, timeout=900,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, out_dir / name)
    return notebook


def figures(notebook: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))


def test_notebooks_run_top_to_bottom_on_a_tiny_pipeline_run(tmp_path, tiny_pipeline, monkeypatch):
    kernel_of_this_python(tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("RECSYS_WORK", str(tiny_pipeline.root))

    explore = execute("01_explore_clickstream.ipynb", tmp_path)
    assert figures(explore) == 5  # funnel, sessions, long tail, active users, retention
    results = execute("02_model_results.ipynb", tmp_path)
    assert figures(results) == 2  # rankers, segments
    printed = "".join(o.get("text", "") for c in results.cells for o in c.get("outputs", []))
    assert "recsys_two_tower version 1 on" in printed
