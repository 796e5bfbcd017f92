"""The site itself: every inline Python block runs, every snippet is included and tested,
and the strict build passes (broken links, anchors or includes fail it)."""

import ast
import re
import subprocess
import sys

import pytest
from helpers import REPO, SNIPPETS
from pytest_examples import CodeExample, EvalExample, find_examples

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


def strings_used_in_code(path) -> set[str]:
    """Every string literal a test file uses in code: its docstrings and comments do not count."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def untested(snippets: list[str], test_files) -> list[str]:
    """Snippets whose path (relative to snippets/) no test uses in code to run, import or include them."""
    used = set().union(*(strings_used_in_code(p) for p in test_files))
    return [s for s in snippets if not any(text.endswith(s) for text in used)]


def test_every_snippet_has_a_test():
    """A snippet no test names in its code is untested advice: fail until a test runs it."""
    test_files = [p for p in (REPO / "tests").rglob("*.py") if p.name != "test_docs.py"]
    assert untested(snippet_files(), test_files) == []


def test_a_mention_in_a_comment_or_docstring_is_not_a_test(tmp_path):
    mention = tmp_path / "test_mention.py"
    mention.write_text(
        '"""Covers backends/llm_server.py."""\n# and backends/llm_server.py\n'
        'def test_x():\n    """backends/llm_server.py"""\n    assert True\n'
    )
    use = tmp_path / "test_use.py"
    use.write_text('SERVER = "backends/llm_server.py"\n')
    assert untested(["backends/llm_server.py"], [mention]) == ["backends/llm_server.py"]
    assert untested(["backends/llm_server.py"], [mention, use]) == []


def test_every_snippet_is_on_a_page():
    """Snippets exist to be read: each one is included in at least one page."""
    pages = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    included = set(re.findall(r'--8<-- "([^":]+)', pages))
    missing = [s for s in snippet_files() if s not in included]
    assert not missing, f"snippets included by no page: {missing}"


def test_strict_build(built_site):
    """mkdocs build --strict (the session's build): any warning (link, anchor, missing include,
    notebook error) fails it."""
    assert (built_site / "index.html").exists()


def test_broken_anchor_fails_the_build(tmp_path):
    """Proof that the build check can fail: a copy of the site with one broken anchor."""
    for name in ("snippets", "benchmarks", "data", "hooks", "mkdocs.yml"):
        (tmp_path / name).symlink_to(REPO / name)
    subprocess.run(["cp", "-r", str(DOCS), str(tmp_path / "docs")], check=True)
    page = tmp_path / "docs" / "index.md"
    page.write_text(page.read_text() + "\n\nSee [nowhere](budget/index.md#no-such-heading).\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "no-such-heading" in proc.stderr


@pytest.mark.parametrize(
    ("page", "sections"),
    [
        ("customer-needs/index.md", ["tool-calling", "lora-adapters", "batch-jobs"]),
        ("budget/index.md", ["lora-adapters", "batch-jobs"]),
        ("backends/index.md", [""]),
    ],
)
def test_the_deciding_pages_link_the_engine_features(page, sections):
    """Where a reader decides (needs, budget) and where engines are chosen, the features page's
    sections are a link away; the strict build checks that the anchors exist."""
    text = (DOCS / page).read_text()
    target = "features.md" if page.startswith("backends/") else "../backends/features.md"
    for section in sections:
        assert f"]({target}{'#' + section if section else ''})" in text, section
