"""Every figure on a page comes from a results file through the render hook: a number with a unit
typed in a page's prose fails, unless tests/figures_allowed.yaml lists it with its source (a
published figure, an example's input, a setting, a target). Every placeholder on the pages
resolves against the results files as they are."""

import re
import sys

import pytest
import yaml
from helpers import REPO

DOCS = REPO / "docs"
ALLOWED = yaml.safe_load((REPO / "tests" / "figures_allowed.yaml").read_text())
KINDS = {"published", "example", "setting", "target", "test", "arithmetic"}
NUMBER = r"\d[\d,]*(?:\.\d+)?"
UNIT = (
    r"(?:\s?(?:ms|µs|%|MB|GB|TB|KB|GiB|MiB|KiB|req/s|tok/s|requests/s|tokens/s)"
    r"|[x×]"  # a factor written against its number (4.1x); "2 x 32 layers" is arithmetic
    r"|\s(?:s|times|×))"  # seconds only after a space: "200s" are HTTP statuses
)
FIGURE = re.compile(rf"(?<![\w.$/-])({NUMBER}(?:(?: to |-|–| and ){NUMBER})?){UNIT}(?![\w/])")
# What is not prose: inline code, HTML comments (the hook's markers and placeholders), link targets.
NOT_PROSE = re.compile(r"`[^`]*`|<!--.*?-->|\]\([^)]*\)")


def typed_figures(markdown: str) -> list[tuple[int, str]]:
    """(line number, figure) for each number with a unit in the prose of a page: outside fenced
    code, included files, inline code, the hook's markers and link targets."""
    found, fenced = [], False
    for number, line in enumerate(markdown.splitlines(), start=1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or line.startswith("--8<--"):
            continue
        found += [(number, m.group(0)) for m in FIGURE.finditer(NOT_PROSE.sub(" ", line))]
    return found


def pages() -> dict[str, str]:
    return {p.relative_to(DOCS).as_posix(): p.read_text() for p in sorted(DOCS.rglob("*.md"))}


def allowed_on(page: str) -> set[str]:
    return {f for entry in ALLOWED if entry["page"] == page for f in entry["figures"]}


def test_the_scanner_finds_figures_in_prose_only():
    page = (
        "Each step takes about 45 ms, so 4.1x more and 50 to 300 requests/s; 3 s or 12 %.\n"
        "Not these: `3 ms` <!-- result: llm_server bare_prefill_ms --> ms, 2 x 32 layers, get 200s,\n"
        "[text](https://example.org/10%20ms), H100, p95, 2026-11-27, version 5.24.0.\n"
        "```\n"
        "timeout = 600 s\n"
        "```\n"
        '--8<-- "results/llm_server.md"\n'
    )
    assert [f for _, f in typed_figures(page)] == [
        "45 ms",
        "4.1x",
        "50 to 300 requests/s",
        "3 s",
        "12 %",
    ]


def test_figures_in_prose_come_from_results_or_the_allowlist():
    typed = [
        f"docs/{page}:{line}: {figure}"
        for page, text in pages().items()
        for line, figure in typed_figures(text)
        if figure not in allowed_on(page)
    ]
    assert not typed, (
        "figures typed into prose: quote them with <!-- result: ... --> from a results file, or "
        "list them in tests/figures_allowed.yaml with their source:\n" + "\n".join(typed)
    )


def test_every_allowed_figure_is_on_its_page_with_a_kind_and_a_source():
    """A stale entry would let the same figure come back unnoticed, so each one must still be
    typed on its page."""
    texts = pages()
    for entry in ALLOWED:
        assert entry["kind"] in KINDS and entry["source"].strip(), entry
        on_page = {f for _, f in typed_figures(texts[entry["page"]])}
        assert set(entry["figures"]) <= on_page, (entry["page"], set(entry["figures"]) - on_page)


def test_every_placeholder_on_the_pages_resolves():
    sys.path.insert(0, str(REPO / "hooks"))
    import render_data

    for page, text in pages().items():
        try:
            rendered = render_data.render(text)
        except (ValueError, TypeError, OSError) as error:
            pytest.fail(f"docs/{page}: {error}")
        assert "<!-- result:" not in rendered and "<!-- figure:" not in rendered, page


def test_who_wins_names_each_contests_best_from_the_results():
    """The verdicts on the scaling-out page: for each workload the contender with the highest
    figure in its results file, and the runner-up beside it."""
    sys.path.insert(0, str(REPO / "hooks"))
    import render_data

    rows = [
        r for r in render_data.who_wins().splitlines() if r.startswith("| ") and "|---" not in r
    ]
    rows = {r.split(" | ")[0][2:]: r.split(" | ") for r in rows[1:]}
    assert set(rows) == {contest[0] for contest in render_data.CONTESTS}
    for workload, source, what, _ in render_data.CONTESTS:
        figures = render_data.contest_figures(source, render_data.measured(source), what)
        assert len(figures) >= 3, workload
        best, second = sorted(figures.values(), reverse=True)[:2]
        winner, (runner_up, shown) = rows[workload][1], rows[workload][3].rsplit(", ", 1)
        assert figures[winner] == best and winner != runner_up, workload
        assert figures[runner_up] == second and shown == f"{second:.1f}", workload
    page = (DOCS / "backends" / "scaling-out.md").read_text()
    assert "<!-- render: who_wins -->" in page
