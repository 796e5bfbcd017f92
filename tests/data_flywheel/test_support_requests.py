"""data_flywheel/support_requests.jsonl: the labelled intent data set the flywheel loop learns from.

It must be big enough, balanced, split once and for all, free of near-duplicates (which would
inflate held-out accuracy), and hard in the right way: intents share their vocabulary.
"""

import itertools
import json
import re
from collections import Counter, defaultdict

from helpers import SNIPPETS, load_snippet

INTENTS = {
    "account_access", "billing_refund", "cancel_subscription", "change_plan", "delivery_status",
    "product_question", "return_item", "shipping_address", "technical_bug",
    "update_payment_method",
}  # fmt: skip
DATA = SNIPPETS / "data_flywheel/support_requests.jsonl"
ROWS = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
BY_INTENT = defaultdict(list)
for _row in ROWS:
    BY_INTENT[_row["intent"]].append(_row)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def test_rows_are_well_formed():
    for row in ROWS:
        assert set(row) == {"text", "intent", "split"}, row
        assert row["text"] == row["text"].strip() and row["text"], row
        assert row["intent"] in INTENTS and row["split"] in ("train", "heldout"), row


def test_size_and_balance():
    assert len(ROWS) >= 640
    counts = Counter(row["intent"] for row in ROWS)
    assert set(counts) == INTENTS
    mean = len(ROWS) / len(counts)
    assert all(0.8 * mean <= n <= 1.2 * mean for n in counts.values()), counts


def test_heldout_is_a_quarter_of_every_intent():
    for intent, rows in BY_INTENT.items():
        heldout = sum(row["split"] == "heldout" for row in rows)
        assert 0.2 <= heldout / len(rows) <= 0.3, (intent, heldout, len(rows))


def test_no_duplicates_or_near_duplicates():
    """No two texts share more than 80% of their words (token Jaccard similarity)."""
    tokens = [words(row["text"]) for row in ROWS]
    close = [
        (ROWS[i]["text"], ROWS[j]["text"])
        for i, j in itertools.combinations(range(len(ROWS)), 2)
        if len(tokens[i] & tokens[j]) > 0.8 * len(tokens[i] | tokens[j])
    ]
    assert close == []


def test_intents_share_vocabulary():
    """The words a keyword router would key on appear under several intents."""
    for word in ("refund", "money", "charged", "cancel", "card", "order", "plan", "address"):
        intents = {row["intent"] for row in ROWS if word in words(row["text"])}
        assert len(intents) >= 3, (word, intents)


def test_not_one_template_per_intent():
    """Each intent uses many words, and no opening pair of words starts more than 15% of it."""
    for intent, rows in BY_INTENT.items():
        openings = Counter(" ".join(row["text"].lower().split()[:2]) for row in rows)
        assert openings.most_common(1)[0][1] <= 0.15 * len(rows), (intent, openings.most_common(3))
        assert len(set().union(*(words(row["text"]) for row in rows))) >= 250, intent


def test_some_requests_carry_pii_that_redaction_removes():
    redact = load_snippet("data_flywheel/redact.py")
    found = Counter()
    for row in ROWS:
        found.update(redact.redact(row["text"])[1])
    assert set(found) == {"email", "phone", "card", "iban"}
