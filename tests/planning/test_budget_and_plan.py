"""planning/budget.py, hosts.py and plan.py: hand-checked costs, dated prices, exclusions with the figure
they rest on, and a hand-computed monthly cost for every example plan."""

import copy
import datetime
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, SNIPPETS, load_snippet, run_snippet

budget = load_snippet("planning/budget.py")
hosts = load_snippet("planning/hosts.py")
plan = load_snippet("planning/plan.py")
compute = plan.compute
SPECS = REPO / "data" / "specs"
HOSTS = {h["name"]: h for h in hosts.load_hosts()}
CONFIGS = {
    k: v["config"]
    for k, v in yaml.safe_load((REPO / "data" / "model_configs.yaml").read_text())["models"].items()
}
EU = {"privacy": {"pii": True, "data_residency": ["EU"], "on_premises": False}}


def rows_of(spec_name: str) -> dict:
    spec = plan.load_spec(SPECS / f"{spec_name}.yaml", plan.known_model_names())
    return {r["host"]["name"]: r for r in plan.evaluate_all(spec)[1]}


def test_budget_arithmetic():
    assert budget.replicas_needed(600, 400, 0.7, spare=1) == 4  # ceil(600 / 280) = 3, plus a spare
    assert budget.always_on_monthly(1.0, 2) == 1460
    assert budget.per_request(730, 1000) == pytest.approx(730 / 30_400)
    # $0.15 in / $0.60 out per 1M tokens, 800 + 250 tokens: $0.00027 a request
    assert budget.api_monthly(1, 800, 250, 0.15, 0.60) == pytest.approx(0.00027 * 30.4)
    assert budget.break_even_requests_per_day(
        0.00027 * 30.4 * 1000, 800, 250, 0.15, 0.60
    ) == pytest.approx(1000)
    assert (
        run_snippet(
            "planning/budget.py",
            "--price-per-hour",
            "1",
            "--replicas",
            "2",
            "--requests-per-day",
            "1000",
        ).strip()
        == "$1,460 per month, $48.026 per 1,000 requests"
    )


def test_peak_window_and_off_peak_billing():
    day = budget.Traffic(requests_per_day=6000, peak_rps=0.8, peak_hours=2)
    assert day.offpeak_requests == 6000 - 0.8 * 2 * 3600 == 240 and day.offpeak_hours == 22
    # 240 requests in 22 h: one every 330 s, longer than 300 s idle + 10 s of work, so the replica sleeps
    # between them and each keeps it up 310 s: 240 x 310 / 3600 = 20.67 replica-hours
    assert budget.offpeak_replica_hours(day, 0.45, request_seconds=10) == pytest.approx(
        240 * 310 / 3600
    )
    assert (
        budget.offpeak_replica_hours(day, 0.45, min_replicas=1, request_seconds=10) == 22
    )  # kept warm anyway
    # 3 peak replicas for 2 h + 20.67 h off peak, $1 an hour, 30.4 days: not one replica's day
    assert budget.autoscaled_monthly(1.0, day, 3, 0.45, request_seconds=10) == pytest.approx(
        (3 * 2 + 240 * 310 / 3600) * 30.4
    )
    busy = budget.Traffic(requests_per_day=86_400, peak_rps=2, peak_hours=6)
    # 86,400 - 2 x 6 x 3,600 = 43,200 requests in 18 h = 0.667/s, one every 1.5 s: never idle; at 0.5/s per
    # replica and 70 % busy that is ceil(0.667 / 0.35) = 2 replicas for 18 h
    assert budget.offpeak_replica_hours(busy, 0.5) == 2 * 18
    assert (
        budget.offpeak_replica_hours(budget.Traffic(5760, 0.8, 2), 0.45) == 0
    )  # all traffic in the peak


def test_host_rules():
    assert hosts.rule_exclusion(EU, HOSTS["Lambda 1x H100 SXM instance"]) == "no region in EU"
    assert hosts.rule_exclusion(EU, HOSTS["AWS EC2 g5.xlarge (1x A10G)"]) is None
    assert hosts.rule_exclusion(EU, HOSTS["Modal serverless L4"]).startswith(
        "requests pass through US"
    )
    us_or_eu = {"privacy": {"pii": False, "data_residency": ["US", "EU"], "on_premises": False}}
    assert hosts.rule_exclusion(us_or_eu, HOSTS["Modal serverless L4"]) is None
    on_prem = {"privacy": {"pii": True, "data_residency": ["ANY"], "on_premises": True}}
    assert (
        hosts.rule_exclusion(on_prem, HOSTS["Modal serverless L4"]) == "data must stay on premises"
    )


def test_a_spec_pays_the_price_of_a_region_it_allows():
    anywhere = {"privacy": {"pii": False, "data_residency": ["ANY"], "on_premises": False}}
    assert hosts.price_for(EU, HOSTS["AWS EC2 g5.xlarge (1x A10G)"])["location"] == "eu-north-1"
    assert (
        hosts.price_for(anywhere, HOSTS["AWS EC2 g5.xlarge (1x A10G)"])["per_hour"] == 1.006
    )  # the cheaper
    modal = HOSTS["Modal serverless H100"]
    assert hosts.price_for(anywhere, modal)["per_hour"] == 3.9492  # no region pinned: base price
    assert hosts.price_for(EU, modal)["per_hour"] == pytest.approx(
        3.9492 * 1.5
    )  # pinned: Modal's x1.5
    assert hosts.price_for(EU, HOSTS["Amazon SageMaker AI ml.g5.xlarge endpoint (1x A10G)"]) is None


def test_every_price_is_sourced_dated_and_marked():
    data = yaml.safe_load((REPO / "data" / "hosts.yaml").read_text())
    assert "as_of" not in data  # no file-level date that reads as price freshness
    for price in [p for h in data["hosts"] for p in h["prices"]] + data["api_prices"]:
        assert price["source"].startswith("https://") and price["checked_via"], price
        assert isinstance(price["checked"], datetime.date) and isinstance(
            price["verified"], bool
        ), price
        assert price["as_of"] or not price["verified"], (
            price
        )  # an undated figure cannot count as re-checked
    lambda8 = HOSTS["Lambda 8x H100 SXM instance"]
    assert lambda8["gpus"] == 8 and lambda8["prices"][0]["per_hour"] == pytest.approx(
        8 * 3.99
    )  # whole instance
    assert all(p["per_hour"] != 2.99 for h in HOSTS.values() for p in h["prices"])
    for gpu in ("H200", "B200", "MI300X"):
        assert any(gpu in h["gpu"] for h in HOSTS.values() if h["gpu"] and h["prices"]), gpu


def test_internal_chat_plan():
    """A10G in bf16 for Llama 3.1 8B (16.06 GB of weights, 128 KiB of KV cache per token):
    prefill  (2 x 8.030e9 x 800 + 32 x 800^2 x 4096) FLOP / (125e12 x 0.35) = 0.2956 s
    batch 6  step reads 16.0605e9 + 6 x 925 x 131,072 = 16.788e9 B; 0.6 x 6 x 600e9 / 16.788e9 = 128.7 tok/s
             one token per sequence every 6 / 128.7 = 46.6 ms; 0.2956 + 250 x 0.0466 = 11.95 s <= 12 s
    batch 7  0.6 x 7 x 600e9 / 16.909e9 = 149.0 tok/s, 47.0 ms a step: 12.04 s > 12 s, too slow
    capacity 1 / (0.2956 + 250 x 0.0466 / 6) = 0.447 req/s; ceil(0.8 / (0.447 x 0.7)) = 3 replicas for
             the rate, 4 for the 1.5 s TTFT target (worked out in the next test)"""
    rows = rows_of("internal-chat")
    hf = rows["Hugging Face Inference Endpoints nvidia-a10g x1 (AWS)"]
    assert hf["batch"] == 6 and hf["latency_s"] == pytest.approx(11.95, abs=0.01)
    assert hf["capacity_rps"] == pytest.approx(0.447, abs=0.001) and hf["replicas_for_rate"] == 3
    assert hf["replicas"] == hf["replicas_for_ttft"] == 4 and hf["binding"] == "TTFT"
    # scale to zero, EU price $1: 4 replicas x 2 peak hours, then 240 requests 330 s apart, each keeping
    # a replica up 300 s + 11.95 s: 240 x 311.95 / 3600 = 20.80 h; (8 + 20.80) x $1 x 30.4 = $875.5
    monthly = (4 * 2 + 240 * (300 + 11.954) / 3600) * 1.0 * 30.4
    assert hf["monthly"] == pytest.approx(monthly, abs=0.05)
    assert rows["AWS EC2 g5.xlarge (1x A10G)"]["monthly"] == pytest.approx(
        4 * 1.067 * 730
    )  # EU price, always on
    text = run_snippet("planning/plan.py", str(SPECS / "internal-chat.yaml"))
    assert (
        "**Recommendation: Hugging Face Inference Endpoints nvidia-a10g x1 (AWS)**, 4 replica(s), "
        f"about ${monthly:,.0f}"
    ) in text
    assert (
        "The TTFT target sets the instance count: 4 instance(s), where the peak rate alone needs 3."
        in text
    )
    assert (
        "**llama-3.1-8b**: 8.03 B parameters" in text
        and "KV cache in bf16: 128 KiB per token" in text
    )
    assert "- Lambda 1x H100 SXM instance: no region in EU" in text
    assert "- AWS EC2 c7i.xlarge (4 vCPU, no GPU): no accelerator" in text
    # 300 GB/s: 0.6 x 300e9 / (16.0605e9 + 925 x 131,072) = 11.1 tok/s at batch 1; 250 tokens take 22.5 s
    assert (
        "- AWS EC2 g6.xlarge (1x L4): too slow: estimated 22.8 s per request even alone (prefill 0.31 s "
        "+ 250 tokens at 11.1 tokens/s) > p95 target 12 s"
    ) in text


def test_time_to_first_token_by_hand():
    """Internal chat on HF's A10G. Each engine has 6 slots (--max-num-seqs), each held for a request's
    11.954 s. At 3 instances 0.8 / 3 = 0.2667 requests/s reach each: a = 0.2667 x 11.954 = 3.188 erlangs.
    Erlang C  (a^6/6! x 6/(6-a)) / (sum over k < 6 of a^k/k! + a^6/6! x 6/(6-a)) = 0.1253: 12.5 % wait
    p95 wait  0.1253 e^(-(6/11.954 - 0.2667) t) = 0.05, t = ln(2.505) / 0.2353 = 3.90 s
    prefill   --max-num-batched-tokens 1024 (800 prompt + 6 running -> a power of two) in one step:
              (2 x 8.030e9 x 1024 + 32 x 1024^2 x 4096) / (125e12 x 0.35) = 0.379 s
    TTFT p95  3.90 + 0.38 = 4.28 s > 1.5 s at 3 instances; at 4, a = 2.391 and C = 0.039 < 5 %: 0.38 s"""
    hf = rows_of("internal-chat")["Hugging Face Inference Endpoints nvidia-a10g x1 (AWS)"]

    def erlang_c(c: int, a: float) -> float:
        queued = a**c / math.factorial(c) * c / (c - a)
        return queued / (sum(a**k / math.factorial(k) for k in range(c)) + queued)

    a3 = 0.8 / 3 * hf["latency_s"]
    assert erlang_c(6, a3) == pytest.approx(0.1253, abs=0.0001) == budget.erlang_c(6, a3)
    wait = math.log(erlang_c(6, a3) / 0.05) / (6 / hf["latency_s"] - 0.8 / 3)
    assert wait == pytest.approx(3.90, abs=0.01)
    prefill = (2 * 8_030_261_248 * 1024 + 32 * 1024**2 * 4096) / (125e12 * 0.35)
    assert hf["max_num_batched_tokens"] == 1024 and hf["prefill_step_s"] == pytest.approx(prefill)
    assert plan.ttft_p95_s(hf, 0.8 / 3) == pytest.approx(wait + prefill)
    assert erlang_c(6, 0.8 / 4 * hf["latency_s"]) < 0.05
    assert hf["ttft_p95_s"] == pytest.approx(prefill) and hf["wait_p95_s"] == 0


def write_spec(tmp_path, name: str, **changes) -> Path:
    """An example spec with some fields changed (None removes one), written to tmp_path."""
    spec = yaml.safe_load((SPECS / f"{name}.yaml").read_text())
    spec = {k: v for k, v in {**spec, **changes}.items() if v is not None}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_tighter_ttft_target_changes_the_plan(tmp_path):
    """Without a TTFT target the rate sets 3 instances; at 1.5 s the queue for slots needs 4; below
    one prefill step (0.38 s on an A10G) the A10G hosts are out."""
    plans = {
        ttft: plan.make_plan(write_spec(tmp_path, "internal-chat", ttft_p95_ms=ttft))["engine"]
        for ttft in (None, 5000, 1500)
    }
    a10g = "Hugging Face Inference Endpoints nvidia-a10g x1 (AWS)"
    assert plans[None]["host"] == plans[5000]["host"] == plans[1500]["host"] == a10g
    assert [plans[t]["replicas"] for t in (None, 5000, 1500)] == [3, 3, 4]
    assert [plans[t]["binding"] for t in (None, 1500)] == ["whole-request latency", "TTFT"]
    assert plans[None]["monthly_usd"] == pytest.approx(
        (3 * 2 + 240 * (300 + 11.954) / 3600) * 30.4, abs=0.05
    )  # $815, the plan before TTFT was honoured
    rows = {
        r["host"]["name"]: r
        for r in plan.make_plan(write_spec(tmp_path, "internal-chat", ttft_p95_ms=300))["rows"]
    }
    assert rows[a10g]["out"].startswith(
        "too slow for the TTFT target: one step prefilling 1,024 prompt tokens takes 0.38 s > p95 target 0.3 s"
    )


def test_max_model_len_fits_one_sequence_in_the_kv_cache_left(tmp_path):
    """The spec's token counts are typical: --max-model-len is the spec's max_context_tokens, else the
    model's context cut to what the KV cache left holds. On an A10G, Llama 3.1 8B leaves
    23,028 MiB x 0.9 - 16.06 GB = 5.28 GiB: 43,269 tokens of 128 KiB, so 131,072 becomes 32,768."""
    engine = plan.make_plan(SPECS / "internal-chat.yaml")["engine"]
    config = CONFIGS["llama-3.1-8b"]
    space = 23028 * 2**20 * 0.9 - 16_060_522_496
    assert compute.kv_cache_tokens(config, space) == 43_269
    assert (
        engine["max_model_len"] == 32_768
        and "cut to a power of two" in engine["max_model_len_from"]
    )
    assert compute.kv_bytes_per_sequence(config, engine["max_model_len"]) <= space
    longest = plan.make_plan(write_spec(tmp_path, "internal-chat", max_context_tokens=8192))[
        "engine"
    ]
    assert (longest["max_model_len"], longest["max_model_len_from"]) == (
        8192,
        "the spec's max_context_tokens",
    )
    # 40,000 tokens fit in one A10G's KV space (5.0 GB of 5.66 GB), 50,000 do not (6.3 GB)
    rows = {
        r["host"]["name"]: r
        for r in plan.make_plan(write_spec(tmp_path, "internal-chat", max_context_tokens=50_000))[
            "rows"
        ]
    }
    assert rows["AWS EC2 g5.xlarge (1x A10G)"]["out"].startswith(
        "does not fit: 15.0 GiB of bf16 weights on the GPU plus the bf16 KV cache of one 50,000-token request"
    )


def test_mixture_of_experts_plan():
    """gpt-oss-20b: 12.82 GiB with its experts in MXFP4 on a 22.5 GiB A10G; 4.19 B of 20.91 B active;
    the 32,768-token longest request needs 12 full layers x 32,768 + 12 windows x 128 tokens of 2 KiB:
    0.75 GiB; the whole-request latency target caps the batch at 16."""
    p = plan.make_plan(SPECS / "moe-chat.yaml")
    engine, chosen = p["engine"], p["chosen"]
    config = CONFIGS["gpt-oss-20b"]
    assert engine["model"] == "openai/gpt-oss-20b" and engine["quantization"] is None
    assert (
        engine["max_model_len"] == 32_768
        and engine["max_model_len_from"] == "the spec's max_context_tokens"
    )
    assert compute.kv_bytes_per_sequence(config, 32_768) == (12 * 32_768 + 12 * 128) * 2048
    assert engine["binding"] == "whole-request latency" and chosen["batch"] < chosen["memory_batch"]
    assert engine["replicas"] == chosen["replicas_for_rate"] + 1  # 99.9 %: one spare
    text = plan.plan(SPECS / "moe-chat.yaml")
    assert "20.91 B parameters, 4.19 B active per token (4 of 32 experts)" in text
    assert "the experts are stored in MXFP4 (quantization_config) and stay so" in text
    assert "12 of 24 layers are sliding-window layers that keep only their last 128 tokens" in text


def test_quantised_fallback_only_when_bf16_does_not_fit_the_budget(tmp_path):
    """Llama 3.1 70B with no dtype: within $15,000 bf16 runs on 2 H200s; at $6,000 FP8 weights on one
    H200 (GPUs without FP8 tensor cores are not offered FP8); at $3,000 nothing costed fits and the
    int4 checkpoint recorded in data/ is served. A spec that pins bf16 keeps it, and hears that
    nothing fits."""

    def engine(budget_usd):
        p = plan.make_plan(
            write_spec(tmp_path, "research-70b", dtype=None, budget_per_month_usd=budget_usd)
        )
        return p, p["engine"]

    _, roomy = engine(15000)
    assert (roomy["weights_dtype"], roomy["kv_cache_dtype"], roomy["tensor_parallel_size"]) == (
        "bf16",
        "bf16",
        2,
    )
    p, fp8 = engine(6000)
    assert (fp8["weights_dtype"], fp8["quantization"], fp8["tensor_parallel_size"]) == (
        "fp8",
        "fp8",
        1,
    )
    assert [f.weights for f in p["formats_tried"]] == ["bf16", "fp8"]
    assert {
        r["host"]["gpu"] for r in p["rows"] if r.get("out", "").startswith("no FP8 tensor cores")
    } == {
        "A10G-24GB",
        "A100-SXM-80GB",
    }
    text = plan.plan(write_spec(tmp_path, "research-70b", dtype=None, budget_per_month_usd=6000))
    assert (
        "**quantised because nothing fitted the budget in bf16 weights, bf16 KV cache**: FP8 weights lose"
        in text
    )
    p, int4 = engine(3000)
    assert (
        int4["weights_dtype"] == "int4"
        and int4["model"] == "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"
    )
    assert (
        int4["quantization"] == "awq" and int4["monthly_usd"] is None
    )  # only hosts you price yourself
    pinned = write_spec(tmp_path, "research-70b", budget_per_month_usd=6000)
    proc = subprocess.run(
        [sys.executable, SNIPPETS / "planning/plan.py", pinned],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        proc.returncode == 1
        and len(proc.stderr.splitlines()) == 1
        and "Traceback" not in proc.stderr
    )
    assert proc.stderr.startswith(
        f"{pinned}: no host satisfies the spec (bf16 weights, fp8 KV cache): "
    )
    assert "are over budget (cheapest $7,296 a month > $6,000)" in proc.stderr


def test_make_plan_gives_the_engine_settings():
    engine = plan.make_plan(SPECS / "research-70b.yaml")["engine"]
    assert engine == {
        "host": "Hugging Face Inference Endpoints nvidia-h200 x2 (AWS)",
        "gpu": "H200-SXM-141GB",
        "gpus_per_instance": 2,
        "tensor_parallel_size": 2,
        "copies_per_instance": 1,
        "replicas": 1,
        "spare": 0,
        "binding": "peak rate",
        "monthly_usd": pytest.approx(10 * 24 * 30.4),
        "model": "meta-llama/Llama-3.1-70B",
        "hub_id": "meta-llama/Llama-3.1-70B",
        "weights_dtype": "bf16",
        "kv_cache_dtype": "fp8",
        "quantization": None,
        "max_model_len": 131_072,
        "max_model_len_from": "the model's context length (max_position_embeddings), vLLM's default",
        "max_num_seqs": 64,
        "max_num_batched_tokens": 4096,
        "gpu_memory_utilization": 0.9,
        "latency_p95_s": pytest.approx(11.97, abs=0.01),
        "ttft_p95_s": engine["ttft_p95_s"],
    }
    embedding = plan.make_plan(SPECS / "embedding-api.yaml")["engine"]
    assert embedding["max_num_seqs"] is None and embedding["kv_cache_dtype"] is None


def test_a_context_longer_than_the_model_is_one_line(tmp_path):
    path = write_spec(tmp_path, "internal-chat", max_context_tokens=200_000)
    proc = subprocess.run(
        [sys.executable, SNIPPETS / "planning/plan.py", path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and proc.stderr == (
        f"{path}: 'max_context_tokens': 200,000 is longer than llama-3.1-8b's context of 131,072 tokens\n"
    )


def test_embedding_plan_uses_the_measured_capacity_at_its_latency_target():
    """The CPU host is sized from the highest Poisson rate the capacity benchmark sustained within
    the spec's p95 target (results/capacity.json), and the cheapest host is recommended, whichever
    side of the CPU/GPU line the latest measurement puts it."""
    target = yaml.safe_load((SPECS / "embedding-api.yaml").read_text())["latency_p95_ms"]
    rps = plan.measured_cpu_embeddings_rps(target)
    assert 0 < rps <= plan.measured_cpu_embeddings_rps(target * 10)  # a looser target, no fewer
    replicas = math.ceil(600 / (rps * 0.7)) + 1  # the availability target 99.9 % adds a spare
    rows = rows_of("embedding-api")
    c7i = rows["AWS EC2 c7i.xlarge (4 vCPU, no GPU)"]
    assert c7i["replicas"] == replicas and c7i["monthly"] == pytest.approx(replicas * 0.1785 * 730)
    text = run_snippet("planning/plan.py", str(SPECS / "embedding-api.yaml"))
    assert f"{rps:.2f} req/s (measured)" in text
    costed = [r for r in rows.values() if "monthly" in r and "out" not in r]
    cheapest = min(costed, key=lambda r: r["monthly"])
    assert f"**Recommendation: {cheapest['host']['name']}**" in text
    assert "**not re-checked**" in text  # the c7i price has no dated reading


def test_on_premises_plan_excludes_every_cloud_and_costs_your_own_price():
    text = run_snippet("planning/plan.py", str(SPECS / "on-prem-regulated.yaml"))
    excluded = [line for line in text.splitlines() if line.endswith(": data must stay on premises")]
    assert len(excluded) == sum(not h["on_premises"] for h in HOSTS.values()) >= 8
    assert "- On-premises server (1x L40S): 1 replica(s) at 1.44 req/s each" in text
    # with your own amortised price, say $1.50 an hour, the fixed server costs 1 x 730 x $1.50 = $1,095
    server = copy.deepcopy(HOSTS["On-premises server (1x L40S)"])
    server["prices"] = [{"region": "ANY", "location": "your site", "per_hour": 1.50}]
    spec = plan.load_spec(SPECS / "on-prem-regulated.yaml", plan.known_model_names())
    config, _ = plan.evaluate_all(spec)
    row = plan.evaluate(spec, config, server, hosts.load_gpus(), 7.6e9)
    assert row["replicas"] == 1 and row["monthly"] == pytest.approx(1 * 730 * 1.50)


def test_70b_plan_splits_the_model_over_two_gpus():
    """Llama 3.1 70B, bf16 weights (141.107e9 B) and fp8 KV cache, on HF's 2x H200 (141 GiB, 4.8 TB/s,
    NVLink 900 GB/s both ways), tensor parallel 2:
    per GPU  70.554e9 B of weights; KV 2 x 80 layers x 4 of 8 KV heads x 128 x 1 B = 80 KiB per token
    fits     (141 x 0.9 x 2^30 - 70.554e9) / (81,920 x 2,400) = 334 sequences: batch capped at 64
    prefill  (2 x 70.554e9 x 2000 + 80 x 2000^2 x 8192) / (2 x 989e12 x 0.35) = 0.4114 s, plus 2000 tokens
             of all-reduce, 80 x 2 x 2 x 1/2 x 8192 x 2 B = 2.62 MB each at 450 GB/s: 0.0117 s -> 0.4231 s
    decode   each step reads 70.554e9 + 64 x 2200 x 81,920 = 82.09e9 B per GPU: 0.6 x 64 x 4.8e12 / 82.09e9
             = 2245 tok/s, 28.5 ms, plus 64 x 2.62 MB / 450 GB/s = 0.37 ms of all-reduce: 28.88 ms a step
    latency  0.4231 + 400 x 0.02888 = 11.97 s <= 25 s; capacity 1 / (0.4231 + 400 x 0.02888 / 64) = 1.657/s"""
    rows = rows_of("research-70b")
    h200x2 = rows["Hugging Face Inference Endpoints nvidia-h200 x2 (AWS)"]
    assert h200x2["tp"] == 2 and h200x2["batch"] == 64
    assert h200x2["prefill_s"] == pytest.approx(0.4231, abs=0.0005)
    assert h200x2["latency_s"] == pytest.approx(11.97, abs=0.01)
    assert h200x2["capacity_rps"] == pytest.approx(1.657, abs=0.001) and h200x2["replicas"] == 1
    # 8,000 - 0.6 x 3 x 3,600 = 1,520 requests in 21 h, one every 50 s: the replica never sleeps, so
    # $10 x (1 x 3 h + 1 x 21 h) x 30.4 days = $7,296
    assert h200x2["monthly"] == pytest.approx(10 * (1 * 3 + 1 * 21) * 30.4)
    one_h200 = rows["Hugging Face Inference Endpoints nvidia-h200 x1 (AWS)"]["out"]
    assert one_h200.startswith(
        "does not fit: 131.4 GiB of bf16 weights on the GPU"
    )  # 141.1e9 B > 0.9 x 141 GiB
    text = run_snippet("planning/plan.py", str(SPECS / "research-70b.yaml"))
    assert (
        "| Hugging Face Inference Endpoints nvidia-h200 x2 (AWS) | tp=2 over NVLink 4 | 1 (peak rate) |"
        in text
    )
    assert "65.7 GiB of weights and 80 KiB of KV cache per token on each GPU" in text
    assert (
        "0.4 ms over NVLink 4, 2.6 ms over PCIe" in text
    )  # 64 x 2.62 MB = 168 MB at 450 vs 64 GB/s


def test_bad_spec_gets_one_line_per_problem(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(
        (SPECS / "internal-chat.yaml").read_text().replace("budget_per_month_usd: 2500", "")
    )
    proc = subprocess.run(
        [sys.executable, SNIPPETS / "planning/plan.py", path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        proc.returncode == 1 and proc.stderr.strip() == f"{path}: 'budget_per_month_usd': missing"
    )


def test_site_pages_are_generated_by_the_build():
    sys.path.insert(0, str(REPO / "hooks"))
    import render_data

    page = render_data.render((REPO / "docs" / "planning" / "index.md").read_text())
    for name in (
        "Internal chat assistant",
        "High-volume embedding API",
        "Regulated on-premises deployment",
        "Engineering research assistant (70B)",
    ):
        assert f"## Plan: {name}" in page
    hosts_page = render_data.render((REPO / "docs" / "compute-host" / "index.md").read_text())
    assert (
        "**not re-checked**" in hosts_page
        and "| Lambda 8x H100 SXM instance | 8 x H100-SXM-80GB (GPU link)" in hosts_page
    )
    budget_page = render_data.render((REPO / "docs" / "budget" / "index.md").read_text())
    assert "<!-- render:" not in budget_page and "<!-- figure:" not in budget_page
    rps = plan.measured_cpu_embeddings_rps(render_data.embedding_target_ms())
    assert f"{rps:g} requests/s measured per replica" in budget_page
    hf = rows_of("internal-chat")["Hugging Face Inference Endpoints nvidia-a10g x1 (AWS)"]
    assert (
        f"**${hf['monthly']:,.0f}** on Hugging Face Inference Endpoints nvidia-a10g x1 (AWS)"
        in budget_page
    )


def test_gddr6_cards_are_planned_with_the_memory_nvidia_smi_reports():
    """An L4 is sold as 24 GB; nvidia-smi reports 23,034 MiB (22.5 GiB), 1.5 GiB less than 24 GiB
    (data/gpus.yaml names the source). HBM cards report within 1 % of their nominal GiB."""
    gpus = hosts.load_gpus()
    assert hosts.usable_bytes(gpus["L4-24GB"]) == 23034 * 2**20
    assert hosts.usable_bytes(gpus["A10G-24GB"]) == 23028 * 2**20
    assert hosts.usable_bytes(gpus["L40S-48GB"]) == 46068 * 2**20
    assert hosts.usable_bytes(gpus["H100-SXM-80GB"]) == 80 * 2**30
    out = [row["out"] for row in rows_of("research-70b").values() if "out" in row]
    l4 = [reason for reason in out if "does not fit" in reason and "of 22.5 GiB" in reason]
    assert l4, out  # a 70B model is refused against the L4's real 22.5 GiB, not 24
