"""Redact the PII that rules can find reliably: emails, phone numbers, card numbers and IBANs.

Logged requests become training data, and training data is copied, shared and memorised: strip
what identifies a person before a row leaves the log. Four kinds have a shape that a regular
expression finds and a checksum confirms, so they are replaced by a typed placeholder
([EMAIL], [PHONE], [CARD], [IBAN]) that keeps the sentence readable for training:

- cards: 13 to 19 digits, spaces or dashes allowed (dots between groups of four), kept only if
  the Luhn check passes;
- IBANs: a known country code, that country's length, and the ISO 13616 mod-97 check;
- phones: an international number (+ and country code) or a common national format; ten bare
  digits only in the North American shape, so most order numbers survive (not all: see --report);
- emails: local part, @, a domain with a dot.

What rules miss: names, street addresses, and anything written to dodge a pattern ("jane at
example dot com", digits spelled out). `python redact.py --report` runs the project's own test
set (pii_cases.jsonl) and prints what was caught and missed per kind. When rules are not enough,
use Presidio (https://github.com/data-privacy-stack/presidio): named-entity models plus checksummed
recognisers for dozens of entity types. As of 2026-11 it is presidio-analyzer 2.2.366 on PyPI, MIT
licensed and actively released; it moved from Microsoft to the community-run Data Privacy Stack
organisation in 2026 (docs: https://presidio.dataprivacystack.org).

    python snippets/data_flywheel/redact.py "card 4111 1111 1111 1111, mail jo@example.com"
    python snippets/data_flywheel/redact.py --report
"""

import argparse
import json
import re
from collections import Counter
from pathlib import Path

KINDS = ("email", "iban", "card", "phone")  # the order they are applied in: most specific first
CASES = Path(__file__).with_name("pii_cases.jsonl")

EMAIL = re.compile(r"\b[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# A run of digits is judged whole: no card or phone number is carved out of a longer number.
NOT_AFTER_NUMBER = r"(?<![\w+-])(?<!\d[ .-])"
NOT_BEFORE_NUMBER = r"(?![\w-])(?![ .-]\d)"
CARD = re.compile(
    NOT_AFTER_NUMBER
    + r"""(?:
        \d(?:[ -]?\d){12,18}                        # 4111 1111 1111 1111, 4111-1111-...
      | \d{4}(?:\.\d{4}){2}\.\d{1,4}(?:\.\d{1,3})?  # 4111.1111.1111.1111: groups of four
    )"""
    + NOT_BEFORE_NUMBER,
    re.VERBOSE,
)  # a dot anywhere else is a decimal point: 1767225600.123456 is a time, not a card
IBAN_START = re.compile(r"\b[A-Za-z]{2}\d{2}")
PHONE = re.compile(
    NOT_AFTER_NUMBER
    + r"""(?:
        \+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,5}  # international: +44 (0)20 7946 0958
      | (?:1[ .-]?)?\(\d{3}\)[ ]?\d{3}[ .-]\d{4}         # North American: (415) 555-0134
      | (?:1[ .-])?\d{3}[ .-]\d{3}[ .-]\d{4}             # 415-555-0134, 1-415-555-0134
      | 1?[2-9]\d{2}[2-9]\d{6}                           # 4155550134, bare: only the NANP shape
      | 0\d{1,4}(?:[ .-]?\d{2,4}){2,4}                   # trunk 0: 020 7946 0958, 06 12 34 56 78
    )"""
    + NOT_BEFORE_NUMBER,
    re.VERBOSE,
)  # NANP: area and exchange codes start with 2-9, so ten bare digits like 3001204588 are kept

# Length of a valid IBAN per country code, from the SWIFT IBAN Registry. A country missing here
# is not redacted: add it rather than loosen the check.
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22,
    "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def luhn_ok(digits: str) -> bool:
    """The Luhn check every payment card number passes (and 9 in 10 random numbers fail)."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    iban = iban.upper()
    if len(iban) != IBAN_LENGTHS.get(iban[:2]) or not (iban.isascii() and iban.isalnum()):
        return False
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


def iban_spans(text: str) -> list[tuple[int, int]]:
    """Where the valid IBANs are. The country code fixes how many letters and digits to read
    (single spaces between them allowed), which stops an IBAN before the word that follows it.
    """
    spans = []
    for start in IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(start[0][:2].upper())
        if length is None or (spans and start.start() < spans[-1][1]):
            continue
        exact = re.compile(rf"\w(?: ?\w){{{length - 1}}}(?!\w)", re.ASCII)
        found = exact.match(text, start.start())
        if found and iban_ok(found[0].replace(" ", "")):
            spans.append(found.span())
    return spans


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _sub(pattern: re.Pattern, placeholder: str, text: str, valid) -> tuple[str, int]:
    """Replace the matches that pass `valid`; return the new text and how many were replaced."""
    count = 0

    def replace(match: re.Match) -> str:
        nonlocal count
        if not valid(match[0]):
            return match[0]
        count += 1
        return placeholder

    return pattern.sub(replace, text), count


def redact(text: str) -> tuple[str, Counter]:
    """Return the text with PII replaced by typed placeholders, and how many of each kind."""
    counts = Counter()
    text, counts["email"] = _sub(EMAIL, "[EMAIL]", text, lambda s: True)
    spans = iban_spans(text)
    for start, end in reversed(spans):
        text = text[:start] + "[IBAN]" + text[end:]
    counts["iban"] = len(spans)
    text, counts["card"] = _sub(CARD, "[CARD]", text, lambda s: luhn_ok(_digits(s)))
    text, counts["phone"] = _sub(PHONE, "[PHONE]", text, lambda s: 9 <= len(_digits(s)) <= 15)
    return text, +counts  # unary plus drops the kinds that were not found


def load_cases(path: Path = CASES) -> list[dict]:
    """The project's PII test set: one JSON object per line (text, expected, pii, keep)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def catch_report(cases: list[dict]) -> dict[str, dict[str, int]]:
    """Per kind of PII in the cases: how many values redaction removed (caught) or left (missed).

    A value counts as caught when it no longer appears in the redacted text. `keep` values
    (order numbers, amounts) must survive; one that does not is counted as over_redacted.
    """
    report: dict[str, dict[str, int]] = {}
    keep = "not PII (must be kept)"
    for case in cases:
        redacted, _ = redact(case["text"])
        for item in case.get("pii", []):
            row = report.setdefault(item["kind"], {"caught": 0, "missed": 0})
            row["missed" if item["value"] in redacted else "caught"] += 1
        for value in case.get("keep", []):
            row = report.setdefault(keep, {"kept": 0, "over_redacted": 0})
            row["kept" if value in redacted else "over_redacted"] += 1
    order = [*KINDS, *sorted(set(report) - {*KINDS, keep}), keep]
    return {kind: report[kind] for kind in order if kind in report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", nargs="*", help="text to redact (words are joined by spaces)")
    parser.add_argument("--report", action="store_true", help="catch/miss counts on the test set")
    parser.add_argument("--cases", type=Path, default=CASES, help="the test set for --report")
    args = parser.parse_args()
    if args.report:
        for kind, row in catch_report(load_cases(args.cases)).items():
            print(f"{kind:24} " + "  ".join(f"{k} {v}" for k, v in row.items()))
    elif args.text:
        redacted, counts = redact(" ".join(args.text))
        print(redacted)
        print(json.dumps(dict(counts)))
    else:
        parser.error("give a text to redact, or --report")


if __name__ == "__main__":
    main()
