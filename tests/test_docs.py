"""The site itself: every inline Python block runs, every snippet is included and tested,
and the strict build passes (broken links, anchors or includes fail it)."""

import os
import re
import subprocess
import sys

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

from helpers import REPO, SNIPPETS

DOCS = REPO / "docs"
INCLUDE = "--8<--"
INLINE_EXAMPLES = [ex for ex in find_examples(str(DOCS)) if INCLUDE not in ex.source]


@pytest.mark.parametrize("example", INLINE_EXAMPLES, ids=str)
def test_inline_python_blocks(example: CodeExample, eval_example: EvalExample):
    """Each inline block is linted and run; `#>` comments must equal what it prints."""
    eval_example.set_config(line_length=100, ruff_ignore=["E402"])
    if eval_example.update_examples:
        eval_example.format(example)
        eval_example.run_print_update(example)
    else:
        eval_example.lint(example)
        eval_example.run_print_check(example)


def snippet_files() -> list[str]:
    return sorted(str(p.relative_to(SNIPPETS)) for p in SNIPPETS.rglob("*.py"))


def test_every_snippet_has_a_test():
    """A snippet no test names is untested advice: fail until a test runs it."""
    tests_text = "\n".join(p.read_text() for p in (REPO / "tests").rglob("test_*.py") if p.name != "test_docs.py")
    untested = [s for s in snippet_files() if s not in tests_text]
    assert not untested, f"snippets without a test: {untested}"


def test_every_snippet_is_on_a_page():
    """Snippets exist to be read: each one is included in at least one page."""
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    included = set(re.findall(r'--8<-- "([^":]+)', pages))
    missing = [s for s in snippet_files() if s not in included]
    assert not missing, f"snippets included by no page: {missing}"


def test_strict_build(tmp_path):
    """mkdocs build --strict: any warning (link, anchor, missing include, notebook error) fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert not re.search(r"^WARNING\s+-", proc.stderr, re.M), proc.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").exists()


def test_broken_anchor_fails_the_build(tmp_path):
    """Proof that the build check can fail: a copy of the site with one broken anchor."""
    for name in ("snippets", "benchmarks", "data", "hooks", "mkdocs.yml"):
        (tmp_path / name).symlink_to(REPO / name)
    subprocess.run(["cp", "-r", str(DOCS), str(tmp_path / "docs")], check=True)
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\n\nSee [nowhere](budget/index.md#no-such-heading).\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "no-such-heading" in proc.stderr
