"""benchmarks/gui_apps.py: its line counter counts what a reader must read, and the figures the
GUI page quotes (benchmarks/results/gui_apps.json) match the apps as they are now."""

import importlib.util
import json
import sys

import pytest
from helpers import REPO

RESULT = REPO / "benchmarks/results/gui_apps.json"


@pytest.fixture(scope="module")
def gui_apps():
    sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its neighbour publish.py
    spec = importlib.util.spec_from_file_location("gui_apps", REPO / "benchmarks/gui_apps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_code_lines_leave_out_docstrings_comments_and_blanks(gui_apps, tmp_path):
    source = tmp_path / "app.py"
    source.write_text(
        '"""Module docstring,\non two lines."""\n\nimport os  # counted\n\n\n'
        'def f():\n    """One line."""\n    # a comment\n    return os.sep\n'
    )
    assert gui_apps.code_lines(source) == 3  # import, def, return
    page = tmp_path / "page.html"
    page.write_text(
        "<!doctype html>\n<!--\n  a comment\n-->\n<p>hi</p>\n\n<script>\n"
        "  // a comment\n  go();\n</script>\n"
    )
    assert gui_apps.code_lines(page) == 5


def test_published_figures_match_the_apps(gui_apps):
    result = json.loads(RESULT.read_text())
    for name, app in result["apps"].items():
        assert app["lines_of_code"] == gui_apps.code_lines(REPO / app["file"]), (
            f"{app['file']} changed: rerun python benchmarks/gui_apps.py"
        )
        if name != "HTML and JavaScript":  # a static page has no server to start
            assert len(app["chat_usable_s"]) == result["runs"] >= 3
            assert all(0 < h < u for h, u in zip(app["http_ready_s"], app["chat_usable_s"]))
