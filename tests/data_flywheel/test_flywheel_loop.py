"""data_flywheel/flywheel_loop.py, intent_router.py and registry.py on real data, real servers and
a real request log: the promotion rule, a canary that logs which version answered, a worse head
rolled back and a better one promoted, and the loop's measured gain as the page shows it.
"""

import json
import subprocess
import sys
import zlib

import httpx
import numpy as np
import pytest
from helpers import REPO, SNIPPETS, load_snippet, serve

LOOP = "data_flywheel/flywheel_loop.py"
RESULTS = REPO / "benchmarks" / "results"


@pytest.fixture(scope="module")
def loop():
    return load_snippet(LOOP)


@pytest.fixture(scope="module")
def data(loop):
    return [json.loads(line) for line in loop.DATA.read_text().splitlines()]


def test_the_rule_promotes_only_a_candidate_better_offline_and_no_worse_live(loop):
    live = {"v1": (40, 30), "v2": (40, 31)}
    assert loop.decide(0.80, 0.85, live, "v1", "v2")[0] == "promote"
    assert (
        loop.decide(0.80, 0.85, {"v1": (40, 30), "v2": (40, 27)}, "v1", "v2")[0] == "promote"
    )  # within 10
    assert loop.decide(0.80, 0.85, {"v1": (40, 30), "v2": (40, 25)}, "v1", "v2") == (
        "rollback",
        "live thumbs-up 0.62 vs 0.75",
    )
    assert loop.decide(0.80, 0.79, live, "v1", "v2")[0] == "rollback"  # worse on the held-out set
    assert (
        loop.decide(0.80, 0.85, {"v1": (40, 30), "v2": (5, 5)}, "v1", "v2")[0] == "rollback"
    )  # too few


def test_simulated_users_are_fixed_before_the_answers(loop, data):
    intents = sorted({row["intent"] for row in data})
    first = loop.simulated_users(data[:50], intents, np.random.default_rng(3), 0.8, 0.1)
    again = loop.simulated_users(data[:50], intents, np.random.default_rng(3), 0.8, 0.1)
    assert first == again and 30 <= sum(u["rates"] for u in first) <= 48
    user = {"rates": True, "noisy": False, "noisy_label": "x"}
    assert loop.reaction("billing_refund", "billing_refund", user) == {"rating": 1}
    assert loop.reaction("return_item", "billing_refund", user) == {
        "rating": -1,
        "correction": "billing_refund",
    }
    assert (
        loop.reaction("return_item", "billing_refund", {**user, "noisy": True})["correction"] == "x"
    )
    assert loop.reaction("return_item", "billing_refund", {**user, "rates": False}) is None


def register_heads(tmp_path, embedding_url: str, loop, data) -> tuple:
    """A good head (the whole training split) and a bad one (the same texts, labels shuffled)."""
    registry = load_snippet("data_flywheel/registry.py")
    train = [row for row in data if row["split"] == "train"]
    vectors = loop.embed(embedding_url, [row["text"] for row in train])
    labels = [row["intent"] for row in train]
    heldout = [row for row in data if row["split"] == "heldout"]
    heldout_vectors = loop.embed(embedding_url, [row["text"] for row in heldout])
    accuracy = {}
    for version, version_labels in (
        ("good", labels),
        ("bad", list(np.random.default_rng(0).permutation(labels))),
    ):
        head = registry.train_head(vectors, version_labels)
        accuracy[version] = loop.accuracy(head, heldout_vectors, [row["intent"] for row in heldout])
        registry.save(tmp_path / "registry", version, head, {"heldout_accuracy": accuracy[version]})
    loaded, meta = registry.load(tmp_path / "registry", "good")
    assert meta["heldout_accuracy"] == accuracy["good"] and list(loaded.classes_) == sorted(
        set(labels)
    )
    assert (
        loaded.predict(heldout_vectors)
        == registry.train_head(vectors, labels).predict(heldout_vectors)
    ).all()
    return accuracy, heldout


def canary_round(
    router_url: str, loop, requests: list[dict], intents: list[str], start: str, candidate: str
):
    httpx.post(
        router_url + "/v1/canary", json={"candidate": candidate, "share": 0.5}
    ).raise_for_status()
    users = loop.simulated_users(requests, intents, np.random.default_rng(1), 1.0, 0.0)
    return loop.asyncio.run(loop.serve_traffic(router_url, requests, users))


@pytest.mark.parametrize(
    "stable, candidate, verdict", [("good", "bad", "rollback"), ("bad", "good", "promote")]
)
def test_a_worse_head_is_rolled_back_and_a_better_one_promoted(
    embedding_server, loop, data, tmp_path, stable, candidate, verdict
):
    accuracy, heldout = register_heads(tmp_path, embedding_server.url, loop, data)
    assert accuracy["good"] > 0.8 and accuracy["bad"] < 0.3
    intents = sorted({row["intent"] for row in data})
    log_db = tmp_path / "router.db"
    with serve(
        "data_flywheel/intent_router.py",
        "--registry",
        str(tmp_path / "registry"),
        "--stable",
        stable,
        "--embedding-url",
        embedding_server.url,
        "--log-db",
        str(log_db),
    ) as router:
        since = loop.time.time()
        served = canary_round(router.url, loop, heldout[:80], intents, stable, candidate)
        by_version = {row["model_version"] for row in served}
        assert by_version == {stable, candidate}  # both answered, and each answer says which
        for row in served:  # the split is by a hash of the caller: the same caller, the same side
            expected = candidate if zlib.crc32(row["text"].encode()) % 10_000 < 5_000 else stable
            assert row["model_version"] == expected
        live = loop.live_feedback(log_db, since)
        assert sum(n for n, _ in live.values()) == 80
        decision, reason = loop.decide(
            accuracy[stable], accuracy[candidate], live, stable, candidate
        )
        assert decision == verdict, reason
        httpx.post(f"{router.url}/v1/{decision}").raise_for_status()
        after = httpx.get(router.url + "/v1/versions").json()
        assert after["candidate"] is None and after["stable"] == (
            candidate if verdict == "promote" else stable
        )
        answer = httpx.post(router.url + "/v1/classify", json={"text": heldout[0]["text"]}).json()
        assert answer["model_version"] == after["stable"]


def test_router_errors_are_clear(embedding_server, loop, data, tmp_path):
    register_heads(tmp_path, embedding_server.url, loop, data)
    with serve(
        "data_flywheel/intent_router.py",
        "--registry",
        str(tmp_path / "registry"),
        "--stable",
        "good",
        "--embedding-url",
        embedding_server.url,
    ) as router:
        assert httpx.post(router.url + "/v1/promote").status_code == 409  # no candidate
        missing = httpx.post(router.url + "/v1/canary", json={"candidate": "v9"})
        assert (
            missing.status_code == 404 and "no version 'v9'" in missing.json()["error"]["message"]
        )
        assert httpx.post(router.url + "/v1/classify", json={"text": ""}).status_code == 400
    proc = subprocess.run(
        [
            sys.executable,
            str(SNIPPETS / "data_flywheel/intent_router.py"),
            "--registry",
            str(tmp_path / "registry"),
            "--stable",
            "nope",
        ],
        capture_output=True,
        text=True,
    )
    assert (
        proc.returncode == 2
        and "no version 'nope'" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_the_loop_runs_end_to_end_and_improves(embedding_server, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            str(SNIPPETS / LOOP),
            "--out",
            str(out),
            "--seeds",
            "1",
            "--rounds",
            "2",
            "--traffic",
            "100",
            "--canary",
            "60",
            "--embedding-url",
            embedding_server.url,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "flywheel.json").read_text())
    rounds = result["runs"]["0"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert rounds[-1]["heldout_accuracy"] > rounds[0]["heldout_accuracy"] + 0.05
    assert all(r["decision"] in ("promote", "rollback") for r in rounds[1:])
    assert (out / "seed-0" / "registry" / "v2" / "meta.json").exists()
    assert (out / "flywheel.png").read_bytes()[:4] == b"\x89PNG"
    card = json.loads((out / "seed-0" / "export-2" / "data_card.json").read_text())
    assert card["examples"]["train"] + card["examples"]["eval"] > 100
    again = subprocess.run(
        [sys.executable, str(SNIPPETS / LOOP), "--out", str(out)], capture_output=True, text=True
    )
    assert again.returncode == 2 and "already exists" in again.stderr  # never overwrites a run


def test_the_published_run_shows_the_gain(loop):
    """The page's table is the last full run's output: 3 seeds, 4 rounds, at least +10 points."""
    result = json.loads((RESULTS / "flywheel.json").read_text())
    assert len(result["seeds"]) >= 3 and result["rounds"] >= 4
    assert result["gain_points"] >= 10
    assert (RESULTS / "flywheel.md").read_text() == loop.markdown_table(result)
    assert (REPO / "docs" / "data-flywheel" / "img" / "flywheel.png").exists()
