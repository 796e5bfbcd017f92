"""data_flywheel/redact.py: every case of the project's PII test set, the checksums, the CLI."""

import json
import subprocess
import sys

import pytest
from helpers import REPO, SNIPPETS, load_snippet, run_snippet

sys.path.insert(0, str(REPO / "hooks"))
import render_data  # the hook that renders the page's catch table

redact = load_snippet("data_flywheel/redact.py")
CASES = redact.load_cases()
MARKER = "<!-- render: redaction_report -->"
KEEP_LABEL = "not PII (must be kept) (kept / wrongly redacted)"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["text"][:40])
def test_every_case_redacts_to_its_expected_text(case):
    redacted, counts = redact.redact(case["text"])
    assert redacted == case["expected"]
    placeholders = sum(case["expected"].count(f"[{kind.upper()}]") for kind in redact.KINDS)
    assert sum(counts.values()) == placeholders
    assert redact.redact(redacted)[0] == redacted  # placeholders are never redacted again


def test_the_test_set_is_large_and_has_hits_misses_and_keeps():
    assert len(CASES) >= 40
    assert sum("keep" in c for c in CASES) >= 8
    assert sum("note" in c for c in CASES) >= 10  # the misses say why they are missed


def rendered_table() -> dict[str, list[int]]:
    """The catch table as the page shows it: the page's own marker, rendered by the site's hook."""
    page = (REPO / "docs/data-flywheel/index.md").read_text()
    assert MARKER in page
    lines = render_data.render(MARKER).splitlines()
    assert lines[:2] == ["| kind | caught | missed |", "|---|---:|---:|"]
    cells = [line.strip("|").split("|") for line in lines[2:]]
    return {label.strip(): [int(a), int(b)] for label, a, b in cells}


def declared_table() -> dict[str, list[int]]:
    """The same table from what each case declares in `expected`, without running redact():
    a PII value still in the expected text is a miss, a `keep` value gone from it is a mistake."""
    table: dict[str, list[int]] = {}
    for case in CASES:
        for item in case.get("pii", []):
            table.setdefault(item["kind"], [0, 0])[item["value"] in case["expected"]] += 1
        for value in case.get("keep", []):
            table.setdefault(KEEP_LABEL, [0, 0])[value not in case["expected"]] += 1
    return table


def test_catch_report_is_the_table_the_page_renders():
    assert rendered_table() == declared_table()
    page = (REPO / "docs/data-flywheel/index.md").read_text()
    assert f"test set of {len(CASES)} cases" in page  # the prose counts the same file


def test_counts_per_kind():
    text = "a@example.com b@example.org 4111-1111-1111-1111 +1 415 555 0134 DE89370400440532013000"
    redacted, counts = redact.redact(text)
    assert redacted == "[EMAIL] [EMAIL] [CARD] [PHONE] [IBAN]"
    assert counts == {"email": 2, "card": 1, "phone": 1, "iban": 1}
    assert redact.redact("nothing to see, order 58213907")[1] == {}


def test_checksums():
    assert redact.luhn_ok("4111111111111111") and not redact.luhn_ok("4111111111111112")
    assert redact.iban_ok("gb82west12345698765432")  # case does not matter
    assert not redact.iban_ok("GB82WEST1234569876543")  # one character short for GB
    assert not redact.iban_ok("ZZ82WEST12345698765432")  # no such country
    assert not redact.iban_ok("GB82WESTé2345698765432")  # letters are A to Z only


def test_no_number_is_carved_out_of_a_longer_one():
    for text in ("ref 41111111111111111111", "ref 4111 1111 1111 1111 0", "id 0207946095812345678"):
        assert redact.redact(text) == (text, {})
    for text in ("id 41555501340", "id 24155550134", "ref 4111.1111.1111.1111.11111"):
        assert redact.redact(text) == (text, {})  # the new shapes are judged whole as well
    assert redact.iban_spans("DE89370400440532013000X") == []  # glued to more text: not an IBAN


def test_cli_redacts_text_and_reports():
    out = run_snippet("data_flywheel/redact.py", "mail", "jo@example.com", "or", "020 7946 0958")
    assert out.splitlines() == ["mail [EMAIL] or [PHONE]", json.dumps({"email": 1, "phone": 1})]
    report = run_snippet("data_flywheel/redact.py", "--report").splitlines()
    for line, (kind, row) in zip(report, redact.catch_report(CASES).items(), strict=True):
        assert line.split() == [*kind.split(), *(str(x) for pair in row.items() for x in pair)]
    proc = subprocess.run(
        [sys.executable, str(SNIPPETS / "data_flywheel/redact.py")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "give a text to redact, or --report" in proc.stderr
