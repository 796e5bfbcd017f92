"""Notebooks on the site are executed by the strict build; this runs them directly too, so a
failing cell names itself in the test report."""

import re

import nbformat
import pytest
from helpers import REPO
from nbconvert.preprocessors import ExecutePreprocessor

NOTEBOOKS = sorted((REPO / "docs").rglob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_reports_percentiles(path):
    notebook = nbformat.read(path, as_version=4)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(
        notebook, {"metadata": {"path": str(path.parent)}}
    )
    printed = "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "torch threads: 2" in printed
    p50, p95, p99 = (
        float(v)
        for v in re.search(r"p50 ([\d.]+) ms, p95 ([\d.]+) ms, p99 ([\d.]+) ms", printed).groups()
    )
    assert 0 < p50 <= p95 <= p99
    images = [
        out
        for cell in notebook.cells
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, "the dashboard notebook must draw its plots"
