"""The data flywheel, run for real: serve, log, collect feedback, export, retrain, canary, decide.

Intent routing of support requests: all-MiniLM-L6-v2 embeddings (from this guide's embedding
server) and a logistic-regression head (scikit-learn). Round 0 trains the head on 2 examples per
intent. Each later round:

1. sends fresh requests through the intent router, which logs every answer (request log, SQLite);
2. simulated users rate answers: a right answer gets +1, a wrong one -1 with the right intent as
   the correction; a stated share of users gives no feedback, and a stated share of corrections
   are wrong (noise);
3. exports the reviewed requests (redacted, de-duplicated) and trains a new head on them;
4. registers it, evaluates it on the fixed held-out split, and deploys it as a canary beside the
   current head;
5. promotes it or rolls it back by the rule in `decide`, from held-out accuracy and live feedback.

    python snippets/data_flywheel/flywheel_loop.py --out flywheel-run

starts its own embedding server and router on free loopback ports, runs 3 seeds, and writes
flywheel-run/flywheel.json, flywheel.md and flywheel.png (held-out accuracy per round).
"""

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import registry
from export_dataset import export

DATA = HERE / "support_requests.jsonl"
EMBEDDING_SERVER = HERE.parent / "backends" / "embedding_server.py"
ROUTER = HERE / "intent_router.py"


# --8<-- [start:rule]
def decide(
    stable_accuracy: float,
    candidate_accuracy: float,
    live: dict[str, tuple[int, int]],
    stable: str,
    candidate: str,
    min_ratings: int = 15,
    max_live_drop: float = 0.10,
) -> tuple[str, str]:
    """Promote the candidate only if it is at least as accurate on the held-out set AND, during
    the canary, its share of thumbs-up is no more than `max_live_drop` below the stable head's
    (each with at least `min_ratings` ratings); otherwise roll it back. `live` maps a version to
    (ratings, thumbs up)."""
    if candidate_accuracy < stable_accuracy:
        return "rollback", f"held-out accuracy {candidate_accuracy:.3f} < {stable_accuracy:.3f}"
    (cand_n, cand_up), (stable_n, stable_up) = live.get(candidate, (0, 0)), live.get(stable, (0, 0))
    if min(cand_n, stable_n) < min_ratings:
        return (
            "rollback",
            f"too few live ratings to judge ({cand_n} and {stable_n} < {min_ratings})",
        )
    if cand_up / cand_n < stable_up / stable_n - max_live_drop:
        return "rollback", f"live thumbs-up {cand_up / cand_n:.2f} vs {stable_up / stable_n:.2f}"
    return "promote", (
        f"held-out {candidate_accuracy:.3f} >= {stable_accuracy:.3f}; live thumbs-up "
        f"{cand_up / cand_n:.2f} vs {stable_up / stable_n:.2f}"
    )


# --8<-- [end:rule]


def live_feedback(log_db: Path, since: float) -> dict[str, tuple[int, int]]:
    """Per model version: (ratings, thumbs up) of requests answered since `since`."""
    with sqlite3.connect(log_db) as conn:
        rows = conn.execute(
            "SELECT r.model_version, COUNT(*), SUM(f.rating = 1) FROM requests r "
            "JOIN feedback f ON f.request_id = r.id WHERE r.created_at >= ? "
            "GROUP BY r.model_version",
            (since,),
        ).fetchall()
    return {version: (n, up) for version, n, up in rows}


def simulated_users(
    requests: list[dict],
    intents: list[str],
    rng: np.random.Generator,
    feedback_rate: float,
    noise: float,
) -> list[dict]:
    """Draw, before any answer is seen, what each user will do: whether they give feedback at
    all, and which wrong correction they give if theirs is one of the noisy ones. Drawing first
    keeps a seed's run identical whatever order concurrent answers come back in."""
    users = []
    for request in requests:
        wrong = [i for i in intents if i != request["intent"]]
        users.append(
            {
                "rates": bool(rng.random() < feedback_rate),
                "noisy": bool(rng.random() < noise),
                "noisy_label": str(rng.choice(wrong)),
            }
        )
    return users


def reaction(answer: str, truth: str, user: dict) -> dict | None:
    """The user's feedback: nothing, +1 for a right answer, or -1 with a correction."""
    if not user["rates"]:
        return None
    if answer == truth:
        return {"rating": 1}
    return {"rating": -1, "correction": user["noisy_label"] if user["noisy"] else truth}


class Services:
    """The embedding server and the intent router as processes on free loopback ports."""

    def __init__(self, work: Path, embedding_url: str | None):
        self.work, self.processes = work, []
        self.embedding_url = embedding_url or self.start(
            [sys.executable, str(EMBEDDING_SERVER)], "/health"
        )

    def start(self, command: list[str], ready_path: str) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "services.log").open("a"),
        )
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError(
                    f"{Path(command[1]).name} exited; see {self.work / 'services.log'}"
                )
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{Path(command[1]).name} did not start")

    def router(self, registry_dir: Path, stable: str, log_db: Path) -> str:
        return self.start(
            [
                sys.executable,
                str(ROUTER),
                "--registry",
                str(registry_dir),
                "--stable",
                stable,
                "--embedding-url",
                self.embedding_url,
                "--log-db",
                str(log_db),
            ],
            "/health",
        )

    def stop_last(self) -> None:
        process = self.processes.pop()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)

    def stop_all(self) -> None:
        while self.processes:
            self.stop_last()


def embed(url: str, texts: list[str]) -> np.ndarray:
    vectors = []
    for i in range(0, len(texts), 64):
        response = httpx.post(
            url + "/v1/embeddings",
            timeout=120,
            json={
                "model": "all-MiniLM-L6-v2",
                "input": texts[i : i + 64],
                "encoding_format": "base64",
            },
        )
        response.raise_for_status()
        vectors += [
            np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in response.json()["data"]
        ]
    return np.stack(vectors)


async def serve_traffic(
    router_url: str, requests: list[dict], users: list[dict], concurrency: int = 8
) -> list[dict]:
    """Send each request through the router, as its user, and post that user's feedback."""
    results, queue = [], list(zip(requests, users))

    async def client_loop():
        async with httpx.AsyncClient(base_url=router_url, timeout=120) as client:
            while queue:
                request, user = queue.pop(0)
                answer = (await client.post("/v1/classify", json={"text": request["text"]})).json()
                feedback = reaction(answer["intent"], request["intent"], user)
                if feedback:
                    (
                        await client.post("/v1/feedback", json={"id": answer["id"], **feedback})
                    ).raise_for_status()
                results.append(
                    {
                        **answer,
                        "text": request["text"],
                        "truth": request["intent"],
                        "feedback": feedback,
                    }
                )

    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return results


def accuracy(head, vectors: np.ndarray, labels: list[str]) -> float:
    return float(np.mean(head.predict(vectors) == np.array(labels)))


# --8<-- [start:round]
def run_seed(
    seed: int,
    args: argparse.Namespace,
    services: Services,
    work: Path,
    data: list[dict],
    heldout: tuple[np.ndarray, list[str]],
) -> list[dict]:
    """Round 0, then args.rounds rounds of serve -> feedback -> export -> retrain -> canary -> decide."""
    rng = np.random.default_rng(seed)
    intents = sorted({row["intent"] for row in data})
    pool = [data[i] for i in rng.permutation(len(data)) if data[i]["split"] == "train"]
    seed_rows = [
        row for intent in intents for row in [r for r in pool if r["intent"] == intent][:2]
    ]
    pool = [row for row in pool if row not in seed_rows]
    registry_dir, log_db = work / "registry", work / "requests.db"
    seed_vectors = embed(services.embedding_url, [row["text"] for row in seed_rows])
    head = registry.train_head(seed_vectors, [row["intent"] for row in seed_rows], seed)
    stable, stable_accuracy = "v0", accuracy(head, *heldout)
    registry.save(
        registry_dir,
        "v0",
        head,
        {"trained_on": len(seed_rows), "heldout_accuracy": stable_accuracy},
    )
    router = services.router(registry_dir, "v0", log_db)
    rounds = [
        {
            "round": 0,
            "serving": "v0",
            "heldout_accuracy": stable_accuracy,
            "examples": len(seed_rows),
        }
    ]
    for number in range(1, args.rounds + 1):
        traffic, pool = pool[: args.traffic], pool[args.traffic :]
        served = asyncio.run(
            serve_traffic(
                router,
                traffic,
                simulated_users(traffic, intents, rng, args.feedback_rate, args.noise),
            )
        )
        card = export(log_db, "classification", work / f"export-{number}", eval_fraction=0.2)
        rows = [
            json.loads(line)
            for name in ("train", "eval")
            for line in (work / f"export-{number}" / f"{name}.jsonl").read_text().splitlines()
        ]
        rows = sorted(rows, key=lambda row: row["text"]) + [
            {"text": r["text"], "label": r["intent"]} for r in seed_rows
        ]
        head = registry.train_head(
            embed(services.embedding_url, [r["text"] for r in rows]),
            [r["label"] for r in rows],
            seed,
        )
        candidate, candidate_accuracy = f"v{number}", accuracy(head, *heldout)
        registry.save(
            registry_dir,
            candidate,
            head,
            {
                "parent": stable,
                "trained_on": len(rows),
                "export": card["examples"],
                "heldout_accuracy": candidate_accuracy,
            },
        )
        canary_start = time.time()
        httpx.post(
            router + "/v1/canary", json={"candidate": candidate, "share": 0.5}
        ).raise_for_status()
        canary, pool = pool[: args.canary], pool[args.canary :]
        asyncio.run(
            serve_traffic(
                router,
                canary,
                simulated_users(canary, intents, rng, args.feedback_rate, args.noise),
            )
        )
        verdict, reason = decide(
            stable_accuracy,
            candidate_accuracy,
            live_feedback(log_db, canary_start),
            stable,
            candidate,
        )
        httpx.post(router + f"/v1/{verdict}").raise_for_status()
        if verdict == "promote":
            stable, stable_accuracy = candidate, candidate_accuracy
        rounds.append(
            {
                "round": number,
                "served": len(served),
                "candidate": candidate,
                "candidate_accuracy": candidate_accuracy,
                "decision": verdict,
                "reason": reason,
                "serving": stable,
                "heldout_accuracy": stable_accuracy,
                "examples": len(rows),
                "live_accuracy": float(np.mean([r["intent"] == r["truth"] for r in served])),
            }
        )
        print(f"seed {seed} round {number}: {verdict} {candidate} ({reason})", flush=True)
    services.stop_last()  # this seed's router
    return rounds


# --8<-- [end:round]


def summarise(runs: dict[int, list[dict]], args: argparse.Namespace) -> dict:
    """Held-out accuracy of the serving head per round: mean and range over the seeds."""
    per_round = []
    for number in range(args.rounds + 1):
        values = [rounds[number]["heldout_accuracy"] for rounds in runs.values()]
        per_round.append(
            {
                "round": number,
                "mean": round(float(np.mean(values)), 4),
                "min": round(min(values), 4),
                "max": round(max(values), 4),
            }
        )
    decisions = Counter(r["decision"] for rounds in runs.values() for r in rounds[1:])
    return {
        "seeds": sorted(runs),
        "rounds": args.rounds,
        "traffic_per_round": args.traffic,
        "canary_per_round": args.canary,
        "feedback_rate": args.feedback_rate,
        "noise": args.noise,
        "per_round": per_round,
        "decisions": dict(decisions),
        "gain_points": round((per_round[-1]["mean"] - per_round[0]["mean"]) * 100, 1),
        "runs": {str(seed): rounds for seed, rounds in runs.items()},
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown_table(result: dict) -> str:
    lines = [
        "| round | held-out accuracy of the serving head, mean (range) over seeds |",
        "|---:|---|",
    ]
    lines += [
        f"| {r['round']} | {r['mean']:.1%} ({r['min']:.1%} to {r['max']:.1%}) |"
        for r in result["per_round"]
    ]
    lines += [
        "",
        f"Seeds {', '.join(map(str, result['seeds']))}; {result['traffic_per_round']} requests and a "
        f"{result['canary_per_round']}-request canary per round; {result['feedback_rate']:.0%} of users give "
        f"feedback, {result['noise']:.0%} of corrections are wrong. Decisions: "
        + ", ".join(f"{n} {d}" for d, n in sorted(result["decisions"].items()))
        + f". Gain from round 0 to the last round: {result['gain_points']:+.1f} points ({result['date']}).",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    rounds = [r["round"] for r in result["per_round"]]
    ax.fill_between(
        rounds,
        [r["min"] for r in result["per_round"]],
        [r["max"] for r in result["per_round"]],
        alpha=0.25,
        label="range over seeds",
    )
    ax.plot(rounds, [r["mean"] for r in result["per_round"]], "o-", label="mean")
    ax.set(
        xlabel="round",
        ylabel="held-out accuracy",
        xticks=rounds,
        ylim=(0, 1),
        title="Intent routing: the serving head after each round",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("flywheel-run"), help="output folder (must not exist)"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--traffic", type=int, default=70, help="requests per round")
    parser.add_argument(
        "--canary", type=int, default=60, help="requests while the candidate is a canary"
    )
    parser.add_argument(
        "--feedback-rate", type=float, default=0.8, help="share of users who rate an answer"
    )
    parser.add_argument(
        "--noise", type=float, default=0.1, help="share of corrections that are wrong"
    )
    parser.add_argument(
        "--embedding-url", help="an embedding server to use instead of starting one"
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="also write the table, JSON and plot where this guide's page reads them",
    )
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"--out: {args.out} already exists; choose a new folder")
    if (
        not (0 < args.feedback_rate <= 1 and 0 <= args.noise < 1)
        or min(args.seeds, args.rounds, args.traffic) < 1
    ):
        parser.error(
            "--feedback-rate in (0, 1], --noise in [0, 1), --seeds, --rounds, --traffic >= 1"
        )
    data = [json.loads(line) for line in DATA.read_text().splitlines()]
    needed = 20 + args.rounds * (args.traffic + args.canary)
    if needed > sum(row["split"] == "train" for row in data):
        parser.error(
            f"{needed} training requests needed; the data set has "
            f"{sum(row['split'] == 'train' for row in data)}: lower --rounds, --traffic or --canary"
        )
    args.out.mkdir(parents=True)
    if args.publish:  # the page's run records what it measured: benchmarks/provenance.py
        sys.path.insert(0, str(HERE.parents[1] / "benchmarks"))
        from provenance import changes_since, provenance

        servers = [ROUTER] if args.embedding_url else [ROUTER, EMBEDDING_SERVER]
        started = provenance([Path(__file__), DATA, *servers])
    services = Services(args.out, args.embedding_url)
    try:
        heldout_rows = [row for row in data if row["split"] == "heldout"]
        heldout = (
            embed(services.embedding_url, [r["text"] for r in heldout_rows]),
            [r["intent"] for r in heldout_rows],
        )
        runs = {
            seed: run_seed(seed, args, services, args.out / f"seed-{seed}", data, heldout)
            for seed in range(args.seeds)
        }
    finally:
        services.stop_all()
    result = summarise(runs, args)
    (args.out / "flywheel.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "flywheel.md").write_text(markdown_table(result))
    plot(result, args.out / "flywheel.png")
    if args.publish:
        repo = HERE.parents[1]
        started["changed_during_run"] = changes_since(started)
        published = {"provenance": started, **result}
        (repo / "benchmarks" / "results" / "flywheel.json").write_text(
            json.dumps(published, indent=2) + "\n"
        )
        (repo / "benchmarks" / "results" / "flywheel.md").write_text(markdown_table(result))
        (repo / "docs" / "data-flywheel" / "img").mkdir(parents=True, exist_ok=True)
        plot(result, repo / "docs" / "data-flywheel" / "img" / "flywheel.png")
    print(markdown_table(result))


if __name__ == "__main__":
    main()
