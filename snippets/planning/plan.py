"""Turn a customer-needs spec into a costed deployment plan in Markdown, with the reasons.

    python snippets/planning/plan.py data/specs/internal-chat.yaml > plan.md
    python snippets/planning/plan.py data/specs/internal-chat.yaml --write bundle/ > plan.md

Steps 1 to 5 of the deployment path in one pass: validate the needs, read the model's config.json
(a supported architecture only), size its memory in the format it will be served in, estimate each
host's throughput from its accelerator's data-sheet figures (or, for the local embedding model on
CPUs, from this guide's own benchmark), split a model too big for one GPU across a tensor-parallel
group, count replicas for the peak rate and for the time-to-first-token target, cost a day of
traffic, drop every host that breaks a rule or the budget (saying why, with the figure it rests on),
and compare with an API. A spec that leaves `dtype` unset is served in bf16 if any host allows it;
if none does, the planner tries FP8 weights, then a published int4 checkpoint, then an FP8 KV cache,
and says which it chose and what that costs in quality.

make_plan() returns the plan as a dict, the engine settings included (see its docstring); plan()
renders it as Markdown; --write DIR also writes the deployment bundle (bundle.py): the vLLM command,
Kubernetes manifests and alerting rules.
"""

import argparse
import functools
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
import budget
import compute
from hosts import DATA, load_gpus, load_hosts, price_for, rule_exclusion, usable_bytes
from spec import SpecError, config_path, known_model_names, load_spec

REPO = DATA.parent
DECODE_EFFICIENCY = (
    0.6  # share of the bandwidth bound real engines reach (assumption, see the page)
)
COMPUTE_EFFICIENCY = 0.35  # share of data-sheet FLOP/s reached in prefill and encoders (assumption)
TARGET_UTILISATION = 0.7
MAX_BATCH = 64
MEMORY_RESERVE = 0.10  # of each GPU's memory, for the runtime, CUDA graphs and fragmentation
SERVING_CEILING_RPS = (
    2000  # what one replica's HTTP front handles, whatever the accelerator (assumption)
)
TP_DEGREES = (1, 2, 4, 8)
TTFT_QUANTILE = 0.95
FORMATS = {
    "bf16": "safetensors in bfloat16, the checkpoint as published",
    "fp8": "FP8 weights (W8A8) that vLLM makes from the bf16 checkpoint at load (`--quantization fp8`); the "
    "FP8 speed-up needs FP8 tensor cores (Ada, Hopper, Blackwell, MI300X)",
    "int8": "an INT8 checkpoint (W8A8 with SmoothQuant-style scales, or weight-only W8A16)",
    "int4": "an AWQ or GPTQ int4 checkpoint (W4A16, group size 128), run with Marlin kernels",
}
CAVEATS = {
    "fp8": "FP8 weights lose a little accuracy",
    "int4": "int4 weights lose more accuracy than FP8, most on reasoning, code and long inputs",
    "kv": "an FP8 KV cache without calibrated scales can lose accuracy on long contexts",
}


class PlanError(ValueError):
    """A spec the planner cannot satisfy or a model it cannot plan; str() is one line."""


@dataclass(frozen=True)
class Format:
    """How the model is served: weights and KV-cache dtypes, and the checkpoint when it is not the
    model's own (a published int4 one). `fallback` marks a format the planner chose, not the spec."""

    weights: str = "bf16"
    kv: str = "bf16"
    checkpoint: str | None = None
    method: str | None = None  # the checkpoint's quantisation: awq or gptq
    fallback: bool = False


def is_llm(spec: dict) -> bool:
    return spec["use_case"] in ("chat", "generation")


def load_model(spec: dict, spec_path: Path) -> dict:
    """The spec's model: its config.json (checked), where it was read, and any recorded int4 checkpoint."""
    path = config_path(spec, spec_path)
    if path:
        try:
            config = compute.load_config(path)
        except compute.ConfigError as error:
            raise PlanError(f"{spec_path}: 'model': {error}") from None
        return {"name": spec["model"], "config": config, "source": str(path), "int4": None}
    entry = yaml.safe_load((DATA / "model_configs.yaml").read_text())["models"][spec["model"]]
    return {
        "name": spec["model"],
        "config": entry["config"],
        "source": entry["source"],
        "int4": entry.get("int4"),
    }


def hub_id(source: str) -> str | None:
    """org/name of a Hugging Face model from its config.json address, else None."""
    found = re.match(r"https://huggingface\.co/([^/]+/[^/]+)/", source)
    return found.group(1) if found else None


def formats(spec: dict, model: dict) -> list[Format]:
    """Formats to try, in order. A spec that sets `dtype` gets exactly that (KV cache in bf16 unless
    it says otherwise, as vLLM's --kv-cache-dtype auto). Otherwise: bf16; FP8 weights on GPUs with FP8
    tensor cores; a published int4 checkpoint if one is recorded; last, an FP8 KV cache on the smallest
    of those weights. A checkpoint stored quantized (gpt-oss's MXFP4 experts) keeps its weights."""
    int4 = model["int4"] or {}
    if "dtype" in spec:
        weights = spec["dtype"].get("weights", "bf16")
        checkpoint = int4.get("name") if weights == "int4" else None
        return [
            Format(weights, spec["dtype"].get("kv_cache", "bf16"), checkpoint, int4.get("method"))
        ]
    if not is_llm(spec):
        return [Format()]
    if compute.stored_mxfp4(model["config"]):
        return [Format(), Format(kv="fp8", fallback=True)]
    ladder = [Format(), Format("fp8", fallback=True)]
    if int4:
        ladder.append(Format("int4", "bf16", int4["name"], int4["method"], fallback=True))
    return [*ladder, replace(ladder[-1], kv="fp8")]


def tflops(gpu: dict, weights: str) -> float:
    """Data-sheet FLOP/s the prefill runs at: FP8 tensor cores for FP8 weights where the GPU has them;
    int8 and int4 are counted as weight-only (W8A16, W4A16), which computes in 16 bits."""
    return (
        gpu["fp8_tflops"] if weights == "fp8" and gpu["fp8_tflops"] else gpu["bf16_tflops"]
    ) * 1e12


def link_bytes_s(host: dict, gpu: dict) -> float:
    """One-way bandwidth between the GPUs of an instance: the GPU link where it has one, else PCIe."""
    both_ways = gpu["gpu_link_gb_s"] if host["interconnect"] == "gpu-link" else gpu["pcie_gb_s"]
    return both_ways / 2 * 1e9


def prefill_seconds(
    config: dict, gpu: dict, fmt: Format, tp: int, link: float, tokens: int
) -> float:
    """One forward pass over `tokens` prompt tokens on a `tp`-way group: their FLOPs at the reached
    share of the data sheet, plus their all-reduces; never less than one read of the weights."""
    flops_s = compute.prefill_flops(config, tokens) / (
        tp * tflops(gpu, fmt.weights) * COMPUTE_EFFICIENCY
    )
    allreduce_s = tokens * compute.allreduce_bytes_per_token(config, tp) / link
    read_s = compute.decode_step_bytes(config, tokens, 0, fmt.weights, fmt.kv, tp) / (
        gpu["bandwidth_gb_s"] * 1e9 * DECODE_EFFICIENCY
    )
    return max(flops_s + allreduce_s, read_s)


def max_model_len(
    spec: dict, config: dict, kv_space: float, fmt: Format, tp: int
) -> tuple[int, str] | None:
    """--max-model-len and where it comes from. The spec's token counts are a typical request, not the
    longest, so: the spec's max_context_tokens if it gives one (None if one such sequence does not fit
    in the KV space left), else vLLM's default, the model's context length, cut where one sequence of
    it would not fit to the largest power of two that does (never below a typical request)."""
    if spec.get("max_context_tokens"):
        longest = spec["max_context_tokens"]
        if compute.kv_bytes_per_sequence(config, longest, fmt.kv, tp) > kv_space:
            return None
        return longest, "the spec's max_context_tokens"
    context = compute.shape(config)["context"]
    held = compute.kv_cache_tokens(config, kv_space, fmt.kv, tp)
    if held >= context:
        return context, "the model's context length (max_position_embeddings), vLLM's default"
    typical = spec["input_tokens"] + spec["output_tokens"]
    cut = max(typical, 2 ** int(math.log2(held)))
    return cut, (
        f"the model's context ({context:,} tokens) cut to a power of two: one sequence of it would "
        f"not fit, the KV space left holds {held:,} tokens"
    )


def batched_tokens(spec: dict, batch: int) -> int:
    """--max-num-batched-tokens: the smallest power of two that holds a typical prompt plus one decode
    token for each running sequence, so a prompt is prefilled in one step and the prompts admitted
    with it add at most that budget to its time to first token."""
    return 2 ** math.ceil(math.log2(spec["input_tokens"] + batch))


def llm_capacity(
    config: dict, gpu: dict, spec: dict, tp: int = 1, link: float = math.inf, fmt: Format = Format()
) -> dict:
    """Requests/s of one tensor-parallel group of `tp` GPUs at the largest batch whose request latency
    still meets the p95 target, with the engine settings that go with it; `link` is the one-way
    GPU-to-GPU bandwidth the all-reduces use."""
    tokens = spec["input_tokens"] + spec["output_tokens"]
    kv_space = compute.kv_space_per_gpu(config, usable_bytes(gpu), fmt.weights, MEMORY_RESERVE, tp)
    fit = compute.sequences_that_fit(
        config, usable_bytes(gpu), tokens, fmt.weights, MEMORY_RESERVE, fmt.kv, tp
    )
    longest = max_model_len(spec, config, kv_space, fmt, tp) if fit else None
    if longest is None:
        return {
            "fits": False,
            "tp": tp,
            "weights_per_gpu": compute.weight_bytes(config, fmt.weights) / tp,
            "kv_space": kv_space,
        }
    allreduce = compute.allreduce_bytes_per_token(config, tp) / link
    prefill_s = prefill_seconds(config, gpu, fmt, tp, link, spec["input_tokens"])
    context = spec["input_tokens"] + spec["output_tokens"] // 2
    for batch in range(min(fit, MAX_BATCH), 0, -1):
        decode_tps = DECODE_EFFICIENCY * compute.decode_tokens_per_second_bound(
            config, gpu["bandwidth_gb_s"] * 1e9, batch, context, fmt.weights, fmt.kv, tp
        )
        step_s = batch / decode_tps + batch * allreduce  # one token for every sequence of the batch
        latency = prefill_s + spec["output_tokens"] * step_s
        if batch == 1:
            alone = {"latency_s": latency, "prefill_s": prefill_s, "tokens_per_s": 1 / step_s}
        if latency * 1000 <= spec["latency_p95_ms"]:
            budget_tokens = batched_tokens(spec, batch)
            return {
                "fits": True,
                "tp": tp,
                "batch": batch,
                "fit": fit,
                "memory_batch": min(fit, MAX_BATCH),
                "latency_s": latency,
                "prefill_s": prefill_s,
                "capacity_rps": 1 / (prefill_s + spec["output_tokens"] * step_s / batch),
                "max_model_len": longest[0],
                "max_model_len_from": longest[1],
                "kv_space": kv_space,
                "max_num_batched_tokens": budget_tokens,
                "prefill_step_s": prefill_seconds(config, gpu, fmt, tp, link, budget_tokens),
            }
    return {"fits": True, "tp": tp, "too_slow": alone}


def meets_ttft_floor(cap: dict, spec: dict) -> bool:
    """Whether one prefill step leaves room for the TTFT target (no target: always)."""
    return "ttft_p95_ms" not in spec or cap["prefill_step_s"] * 1000 <= spec["ttft_p95_ms"]


def llm_layout(config: dict, gpu: dict, spec: dict, host: dict, fmt: Format = Format()) -> dict:
    """The tensor-parallel degree that gives an instance the most requests/s within the latency
    targets. An instance of n GPUs runs n / tp groups side by side."""
    heads = compute.shape(config)["heads"]
    tried = [
        llm_capacity(config, gpu, spec, tp, link_bytes_s(host, gpu), fmt)
        for tp in TP_DEGREES
        if tp <= max(host["gpus"], 1) and heads % tp == 0
    ]
    usable = [c for c in tried if "capacity_rps" in c and meets_ttft_floor(c, spec)]
    for c in usable:
        c["groups"] = max(host["gpus"], 1) // c["tp"]
        c["instance_rps"] = c["capacity_rps"] * c["groups"]
    if usable:
        return max(usable, key=lambda c: c["instance_rps"])
    ttft_bound = [c for c in tried if "capacity_rps" in c]
    if ttft_bound:
        return {**min(ttft_bound, key=lambda c: c["prefill_step_s"]), "ttft_too_slow": True}
    slow = [c for c in tried if c["fits"]]
    return min(slow, key=lambda c: c["too_slow"]["latency_s"]) if slow else tried[-1]


def ttft_p95_s(cap: dict, arrival_rps: float) -> float:
    """Time to first token at p95 for one engine receiving `arrival_rps`: the wait for one of its
    max-num-seqs slots (M/M/c, each slot held for a request's latency) plus one scheduler step that
    prefills at most max-num-batched-tokens prompt tokens, its own and those admitted with it."""
    wait = budget.wait_quantile(arrival_rps, cap["batch"], cap["latency_s"], TTFT_QUANTILE)
    return wait + cap["prefill_step_s"]


def replicas_for_ttft(spec: dict, cap: dict) -> int:
    """The fewest instances that bring the p95 time to first token at the peak rate within target."""
    target, replicas = spec["ttft_p95_ms"] / 1000, 1
    while ttft_p95_s(cap, spec["peak_requests_per_second"] / (replicas * cap["groups"])) > target:
        replicas += 1
    return replicas


def size_fleet(spec: dict, cap: dict) -> dict:
    """Instances for the peak, which target sets their number, and the p95 TTFT they give."""
    for_rate = budget.replicas_needed(
        spec["peak_requests_per_second"], cap["instance_rps"], TARGET_UTILISATION
    )
    llm_row = "batch" in cap  # encoders have no slots to queue for
    for_ttft = replicas_for_ttft(spec, cap) if llm_row and "ttft_p95_ms" in spec else 0
    if for_ttft > for_rate:
        binding = "TTFT"
    elif cap.get("batch", 0) < cap.get("memory_batch", 0):
        binding = "whole-request latency"
    else:
        binding = "peak rate"
    serving = max(for_rate, for_ttft)
    fleet = {"replicas_for_rate": for_rate, "replicas_for_ttft": for_ttft, "binding": binding}
    if llm_row:
        arrival = spec["peak_requests_per_second"] / (serving * cap["groups"])
        fleet["ttft_p95_s"] = ttft_p95_s(cap, arrival)
        fleet["wait_p95_s"] = fleet["ttft_p95_s"] - cap["prefill_step_s"]
    spare = 1 if spec["availability"] >= 0.999 else 0
    return {**fleet, "replicas": serving + spare, "spare": spare}


@functools.cache
def measured_cpu_embeddings_rps(latency_p95_ms: float) -> float:
    """Requests/s one replica of this guide's embedding server carries on 2 CPU cores with its
    p95 latency within `latency_p95_ms`: the highest Poisson arrival rate its capacity benchmark
    sustained within that target, the median over the benchmark's repeats. Closed-loop
    throughput would overstate it: a replica run flat out queues, and its p95 grows."""
    measured = json.loads((REPO / "benchmarks" / "results" / "capacity.json").read_text())
    sweeps = measured["engines"]["this guide's embedding server"]["sweeps"]
    return statistics.median(
        max((r["rate"] for r in sweep if sustained(r, latency_p95_ms)), default=0.0)
        for sweep in sweeps
    )


def sustained(run: dict, latency_p95_ms: float) -> bool:
    """An open-loop run answered every arrival within the latency target at its p95. (A server
    that cannot keep up fails the latency test first: its queue, and every wait, keeps growing.)"""
    return run["errors"] == 0 and run["latency_p95"] <= latency_p95_ms


def encoder_capacity(config: dict, gpu: dict | None, spec: dict, host: dict) -> dict:
    """Encoders are compute-bound: FLOPs per request over the FLOP/s reached; on CPUs, measured.
    Each GPU of an instance serves its own copy of the (small) model."""
    if gpu is None:
        if spec["model"] != "all-minilm-l6-v2":
            return {"fits": False}
        rps = measured_cpu_embeddings_rps(spec["latency_p95_ms"])
        return {
            "fits": rps > 0,  # 0: no measured rate met the target
            "capacity_rps": rps,
            "instance_rps": rps,
            "latency_s": None,
            "measured": True,
        }
    flops = 2 * compute.parameter_count(config) * spec["input_tokens"]
    rps = min(gpu["bf16_tflops"] * 1e12 * COMPUTE_EFFICIENCY / flops, SERVING_CEILING_RPS)
    return {
        "fits": True,
        "capacity_rps": rps,
        "instance_rps": rps * host["gpus"],
        "latency_s": None,
        "measured": False,
    }


def too_slow(cap: dict, spec: dict) -> str:
    alone = cap["too_slow"]
    group = f" on {cap['tp']} GPUs" if cap["tp"] > 1 else ""
    return (
        f"too slow: estimated {alone['latency_s']:.1f} s per request even alone{group} (prefill "
        f"{alone['prefill_s']:.2f} s + {spec['output_tokens']} tokens at {alone['tokens_per_s']:.1f} tokens/s) "
        f"> p95 target {spec['latency_p95_ms'] / 1000:g} s"
    )


def ttft_too_slow(cap: dict, spec: dict) -> str:
    group = f" on {cap['tp']} GPUs" if cap["tp"] > 1 else ""
    return (
        f"too slow for the TTFT target: one step prefilling {cap['max_num_batched_tokens']:,} prompt tokens "
        f"takes {cap['prefill_step_s']:.2f} s{group} > p95 target {spec['ttft_p95_ms'] / 1000:g} s"
    )


def does_not_fit(cap: dict, spec: dict, gpu: dict, fmt: Format) -> str:
    per_gpu = cap["weights_per_gpu"] / 2**30
    group = f" each of {cap['tp']} GPUs" if cap["tp"] > 1 else ""
    longest = spec.get("max_context_tokens")
    request = f"one {longest:,}-token request (max_context_tokens)" if longest else "one request"
    return (
        f"does not fit: {per_gpu:.1f} GiB of {fmt.weights} weights on{group or ' the GPU'} plus the {fmt.kv} KV "
        f"cache of {request} exceed {1 - MEMORY_RESERVE:.0%} of {usable_bytes(gpu) / 2**30:.1f} GiB"
    )


def evaluate(
    spec: dict, config: dict, host: dict, gpus: dict, n_params: int, fmt: Format | None = None
) -> dict:
    """One host: its capacity, replicas and monthly cost, or the reason it is out."""
    fmt = fmt or formats(spec, {"config": config, "int4": None})[0]
    row = {"host": host, "format": fmt}
    reason = rule_exclusion(spec, host)
    if reason:
        return {**row, "out": reason}
    gpu = gpus.get(host["gpu"]) if host["gpu"] else None
    if gpu is None and (is_llm(spec) or n_params > 1e9):
        return {
            **row,
            "out": f"no accelerator: a {n_params / 1e9:.1f} B-parameter {spec['use_case']} model needs a GPU",
        }
    if fmt.fallback and fmt.weights == "fp8" and not gpu["fp8_tflops"]:
        return {
            **row,
            "out": f"no FP8 tensor cores ({host['gpu']}): FP8 weights are tried only on GPUs that have them",
        }
    cap = (
        llm_layout(config, gpu, spec, host, fmt)
        if is_llm(spec)
        else encoder_capacity(config, gpu, spec, host)
    )
    if not cap["fits"]:
        return {
            **row,
            "out": does_not_fit(cap, spec, gpu, fmt)
            if gpu
            else "no CPU throughput measured for this model",
        }
    if "too_slow" in cap:
        return {**row, "out": too_slow(cap, spec)}
    if cap.get("ttft_too_slow"):
        return {**row, "out": ttft_too_slow(cap, spec)}
    row.update(cap)
    row.update(size_fleet(spec, cap))
    row["price"] = price_for(spec, host)
    if row["price"] is None:
        return {**row, "uncosted": host.get("note") or "no price recorded for the regions allowed"}
    per_hour = row["price"]["per_hour"]
    if host["min_replicas"] is None:
        row["monthly"] = budget.always_on_monthly(per_hour, row["replicas"])
    else:
        traffic = budget.Traffic(
            spec["requests_per_day"], spec["peak_requests_per_second"], spec["peak_hours_per_day"]
        )
        row["monthly"] = budget.autoscaled_monthly(
            per_hour,
            traffic,
            row["replicas"],
            cap["instance_rps"],
            host["min_replicas"],
            TARGET_UTILISATION,
            cap.get("latency_s") or 0,
        )
    if row["monthly"] > spec["budget_per_month_usd"]:
        return {
            **row,
            "out": f"over budget: ${row['monthly']:,.0f} a month > ${spec['budget_per_month_usd']:,}",
        }
    return row


def feasible(row: dict) -> bool:
    return "out" not in row and ("monthly" in row or "uncosted" in row)


def rows_for(spec: dict, model: dict) -> tuple[Format, list[Format], list[dict]]:
    """Every host's row in the first format (see formats) for which some host is feasible; if none
    is, the rows of the last format tried."""
    gpus, hosts = load_gpus(), load_hosts()
    n_params = compute.parameter_count(model["config"])
    tried = []
    for fmt in formats(spec, model):
        tried.append(fmt)
        rows = [evaluate(spec, model["config"], host, gpus, n_params, fmt) for host in hosts]
        if any(feasible(r) for r in rows):
            break
    return fmt, tried, rows


def evaluate_all(spec: dict, spec_path: Path = DATA / "specs") -> tuple[dict, list[dict]]:
    """The model's config and every host's row, in data/hosts.yaml order, in the format the plan serves."""
    model = load_model(spec, Path(spec_path))
    return model["config"], rows_for(spec, model)[2]


def nothing_satisfies(spec: dict, spec_path: Path, fmt: Format, rows: list[dict]) -> str:
    """One line: why no host is left, counted by reason."""
    kinds = {
        "do not fit": "does not fit",
        "are too slow": "too slow",
        "lack an accelerator": "no accelerator",
        "lack FP8": "no FP8",
    }
    counts = {
        label: sum(r["out"].startswith(prefix) for r in rows) for label, prefix in kinds.items()
    }
    over = [r for r in rows if r["out"].startswith("over budget")]
    counts["break its rules"] = len(rows) - sum(counts.values()) - len(over)
    parts = [f"{n} {label}" for label, n in counts.items() if n]
    if over:
        cheapest = min(r["monthly"] for r in over)
        parts.append(
            f"{len(over)} are over budget (cheapest ${cheapest:,.0f} a month > ${spec['budget_per_month_usd']:,})"
        )
    served = describe(fmt)
    return f"{spec_path}: no host satisfies the spec ({served}): " + ", ".join(parts)


def describe(fmt: Format) -> str:
    weights = f"{fmt.weights} weights" + (f" ({fmt.checkpoint})" if fmt.checkpoint else "")
    return f"{weights}, {fmt.kv} KV cache"


def make_plan(spec_path: Path) -> dict:
    """The plan as data. Raises SpecError, PlanError (one line each) for input the planner refuses.

    Returns a dict with: `spec` (the validated spec), `model` (name, config, source, int4), `format`
    (the Format served), `formats_tried`, `rows` (every host's row, in data/hosts.yaml order), `kept`
    (costed hosts within budget, cheapest first), `uncosted` (hosts that fit but have no price for
    the spec's regions), `chosen` (the cheapest kept row, else the first uncosted one) and `engine`,
    the settings of the chosen host: host, gpu, gpus_per_instance, tensor_parallel_size,
    copies_per_instance, replicas, spare, binding, monthly_usd, model (what to serve: a Hub id, the
    int4 checkpoint or the config path), hub_id, weights_dtype, kv_cache_dtype, quantization (fp8, awq,
    gptq or None), max_model_len, max_model_len_from, max_num_seqs, max_num_batched_tokens,
    gpu_memory_utilization, latency_p95_s, ttft_p95_s. The engine fields only an LLM has are None
    for an encoder."""
    spec_path = Path(spec_path)
    spec = load_spec(spec_path, known_model_names())
    model = load_model(spec, spec_path)
    context = compute.shape(model["config"])["context"] if is_llm(spec) else None
    if context and spec.get("max_context_tokens", 0) > context:
        raise PlanError(
            f"{spec_path}: 'max_context_tokens': {spec['max_context_tokens']:,} is longer than "
            f"{model['name']}'s context of {context:,} tokens"
        )
    fmt, tried, rows = rows_for(spec, model)
    kept = sorted((r for r in rows if feasible(r) and "monthly" in r), key=lambda r: r["monthly"])
    uncosted = [r for r in rows if feasible(r) and "uncosted" in r]
    if not kept and not uncosted:
        raise PlanError(nothing_satisfies(spec, spec_path, fmt, rows))
    chosen = (kept or uncosted)[0]
    return {
        "spec": spec,
        "model": model,
        "format": fmt,
        "formats_tried": tried,
        "rows": rows,
        "kept": kept,
        "uncosted": uncosted,
        "chosen": chosen,
        "engine": engine_settings(spec, model, fmt, chosen),
    }


def engine_settings(spec: dict, model: dict, fmt: Format, row: dict) -> dict:
    """The serving settings the plan assumed for the chosen host (see make_plan)."""
    host, llm = row["host"], is_llm(spec)
    quantization = {"fp8": "fp8", "int4": fmt.method}.get(fmt.weights) if llm else None
    return {
        "host": host["name"],
        "gpu": host["gpu"],
        "gpus_per_instance": host["gpus"],
        "tensor_parallel_size": row.get("tp", 1),
        "copies_per_instance": row.get("groups", 1),
        "replicas": row["replicas"],
        "spare": row["spare"],
        "binding": row["binding"],
        "monthly_usd": row.get("monthly"),
        "model": fmt.checkpoint or hub_id(model["source"]) or model["source"],
        "hub_id": hub_id(model["source"]),
        "weights_dtype": fmt.weights,
        "kv_cache_dtype": fmt.kv if llm else None,
        "quantization": quantization,
        "max_model_len": row.get("max_model_len"),
        "max_model_len_from": row.get("max_model_len_from"),
        "max_num_seqs": row.get("batch"),
        "max_num_batched_tokens": row.get("max_num_batched_tokens"),
        "gpu_memory_utilization": round(1 - MEMORY_RESERVE, 2) if llm else None,
        "latency_p95_s": row.get("latency_s"),
        "ttft_p95_s": row.get("ttft_p95_s"),
    }


def price_cell(price: dict) -> str:
    """Where the price comes from, and whether it was re-checked."""
    checked = (
        f"re-checked {price['checked']}"
        if price["verified"]
        else f"**not re-checked** ({price['checked']})"
    )
    return f"${price['per_hour']:g}/h, {price['location']}; [as of {price['as_of'] or 'unknown'}]({price['source']}), {checked}"


def layout_cell(row: dict, host: dict, gpus: dict) -> str:
    """How one replica (one rented instance) uses its GPUs."""
    if not row.get("tp"):
        return (
            f"{host['gpus']} GPU{'s' if host['gpus'] > 1 else ''}" if host["gpus"] else "CPUs only"
        )
    link = gpus[host["gpu"]]["gpu_link"] if host["interconnect"] == "gpu-link" else "PCIe"
    group = f"tp={row['tp']} over {link}" if row["tp"] > 1 else "1 GPU"
    return f"{row['groups']} copies, {group} each" if row["groups"] > 1 else group


def interconnect_lines(config: dict, fmt: Format, gpu: dict, row: dict, spec: dict) -> list[str]:
    """Why a tensor-parallel replica needs its GPU link: the all-reduce time of one decode step over that
    link and over PCIe, beside the time the step spends reading memory."""
    tp, batch = row["tp"], row["batch"]
    layout = compute.tensor_parallel_layout(config, tp, fmt.weights, fmt.kv)
    context = spec["input_tokens"] + spec["output_tokens"] // 2
    read_ms = (
        compute.decode_step_bytes(config, batch, context, fmt.weights, fmt.kv, tp)
        / (gpu["bandwidth_gb_s"] * 1e9)
        * 1000
    )
    sent = batch * layout["allreduce_per_token"]
    sent_mb, pcie_ms = sent / 1e6, sent / (gpu["pcie_gb_s"] / 2 * 1e9) * 1000
    link_ms = sent / (gpu["gpu_link_gb_s"] / 2 * 1e9) * 1000 if gpu["gpu_link"] else None
    over_link = f"{link_ms:.1f} ms over {gpu['gpu_link']}, " if link_ms else ""
    return [
        "",
        (
            f"Each replica splits the model over {tp} GPUs (tensor parallel): "
            f"{layout['weights_per_gpu'] / 2**30:.1f} GiB of weights and "
            f"{layout['kv_per_token_per_gpu'] / 2**10:.0f} KiB of KV cache per token on each GPU. "
            f"At batch {batch} one decode step spends at least {read_ms:.1f} ms reading memory on each GPU "
            f"and all-reduces {sent_mb:.0f} MB through each GPU's link: {over_link}{pcie_ms:.1f} ms over "
            "PCIe. That is why the GPUs of a replica should share a GPU link."
        ),
    ]


def kv_line(config: dict, kv: str, spec: dict) -> str:
    """KV cache per token and per request; sliding-window layers named with their window."""
    s = compute.shape(config)
    windows = [w for w in s["windows"] if w]
    per_token = compute.kv_bytes_per_token(config, kv) / 2**10
    per_request = compute.kv_bytes_per_sequence(
        config, spec["input_tokens"] + spec["output_tokens"], kv
    )
    line = f"KV cache in {kv}: {per_token:.0f} KiB per token"
    if windows:
        line += (
            f" while every layer grows; {len(windows)} of {s['layers']} layers are sliding-window layers "
            f"that keep only their last {max(windows):,} tokens"
        )
    return line + f", {per_request / 2**20:.0f} MiB per request at full length"


def format_lines(fmt: Format, plan: dict) -> list[str]:
    """The format served, why, and its quality caveat."""
    config, name = plan["model"]["config"], plan["model"]["name"]
    lines = ["- format: " + FORMATS[fmt.weights] + "; served by vLLM (continuous batching)"]
    if fmt.checkpoint:
        lines.append(
            f"- served checkpoint: {fmt.checkpoint} ({fmt.method}), {plan['model']['int4']['of']}"
        )
    elif fmt.weights == "int4":
        lines.append(
            f"- no published AWQ or GPTQ checkpoint is recorded for {name}: quantize one (vLLM's "
            "--quantization awq on the bf16 checkpoint passes the parser and fails at load)"
        )
    if compute.stored_mxfp4(config):
        lines.append(
            "- the experts are stored in MXFP4 (quantization_config) and stay so; the rest is bf16"
        )
    if fmt.fallback:
        caveats = [CAVEATS[fmt.weights]] if fmt.weights in CAVEATS else []
        caveats += [CAVEATS["kv"]] if fmt.kv == "fp8" else []
        earlier = "; ".join(describe(f) for f in plan["formats_tried"][:-1])
        lines.append(
            f"- **quantised because nothing fitted the budget in {earlier}**: {' and '.join(caveats)}. "
            "Run the quality bar on this format before it ships"
        )
    elif is_llm(plan["spec"]) and fmt.weights != "bf16":
        lines.append("- check the quantized model on the quality bar before it ships")
    return lines


def engine_lines(plan: dict) -> list[str]:
    """The engine settings the plan assumed, each with where it comes from."""
    spec, e, row = plan["spec"], plan["engine"], plan["chosen"]
    if not is_llm(spec):
        return []
    kv_left = row["kv_space"] / 2**30
    longest = compute.kv_bytes_per_sequence(
        plan["model"]["config"], e["max_model_len"], e["kv_cache_dtype"], e["tensor_parallel_size"]
    )
    flags = [f"--tensor-parallel-size {e['tensor_parallel_size']}", "--dtype bfloat16"]
    flags += [f"--quantization {e['quantization']}"] if e["quantization"] == "fp8" else []
    flags += ["--kv-cache-dtype fp8"] if e["kv_cache_dtype"] == "fp8" else []
    lines = [
        "",
        f"## Engine settings ({e['host']})",
        "",
        f"- model `{e['model']}`, " + " ".join(f"`{f}`" for f in flags),
        (
            f"- `--max-model-len {e['max_model_len']}`: {e['max_model_len_from']}; one sequence of it needs "
            f"{longest / 2**30:.2f} GiB of KV cache on each GPU, {kv_left:.1f} GiB are left there"
        ),
        (
            f"- `--max-num-seqs {e['max_num_seqs']}`: the largest batch whose request latency "
            f"({row['latency_s']:.1f} s) meets the p95 target; memory holds {row['fit']} typical requests"
            + (f", the planner stops at {MAX_BATCH}" if row["fit"] > MAX_BATCH else "")
        ),
        (
            f"- `--max-num-batched-tokens {e['max_num_batched_tokens']}`: the smallest power of two that holds a "
            f"typical prompt ({spec['input_tokens']} tokens) and one token of each running sequence; it bounds "
            "the prompt tokens prefilled together in one step"
        ),
        f"- `--gpu-memory-utilization {e['gpu_memory_utilization']}`: {MEMORY_RESERVE:.0%} left to the runtime",
    ]
    if "ttft_p95_ms" in spec:
        lines.append(
            f"- time to first token, p95: about {row['ttft_p95_s']:.2f} s at the peak rate (target "
            f"{spec['ttft_p95_ms'] / 1000:g} s): {row['wait_p95_s']:.2f} s waiting for one of the "
            f"{row['batch']} slots plus {row['prefill_step_s']:.2f} s for a step that prefills up to "
            f"{row['max_num_batched_tokens']:,} prompt tokens"
        )
    return lines + ["", binding_line(row)]


def binding_line(row: dict) -> str:
    """Which target sets the number of instances."""
    spare = ", plus one spare for the availability target" if row["spare"] else ""
    if row["binding"] == "TTFT":
        return (
            f"The TTFT target sets the instance count: {row['replicas_for_ttft']} instance(s){spare}, where "
            f"the peak rate alone needs {row['replicas_for_rate']}."
        )
    if row["binding"] == "whole-request latency":
        return (
            f"The whole-request latency target sets the instance count: it caps the batch at {row['batch']} "
            f"where memory allows {row['memory_batch']}, so the peak needs {row['replicas_for_rate']} "
            f"instance(s){spare}."
        )
    return f"The peak rate sets the instance count: {row['replicas_for_rate']} instance(s){spare}."


def model_lines(plan: dict) -> list[str]:
    spec, model, fmt = plan["spec"], plan["model"], plan["format"]
    config = model["config"]
    n, active = compute.parameter_count(config), compute.active_parameter_count(config)
    s = compute.shape(config)
    active_text = ""
    if s["experts"]:
        active_text = f", {active / 1e9:.2f} B active per token ({s['experts_per_token']} of {s['experts']} experts)"
    elif active != n:
        active_text = f", {active / 1e9:.2f} B of them in the language model"
    kv = (
        kv_line(config, fmt.kv, spec)
        if is_llm(spec)
        else "no KV cache (one forward pass per request)"
    )
    lines = [
        f"- **{model['name']}**: {n / 1e9:.2f} B parameters{active_text} (config: {model['source']})",
        f"- weights in {fmt.weights}: {compute.weight_bytes(config, fmt.weights) / 2**30:.2f} GiB; {kv}",
    ]
    if not is_llm(spec):
        return lines + [
            "- format: safetensors (or ONNX for ONNX Runtime), served with dynamic batching"
        ]
    return lines + format_lines(fmt, plan)


def needs_lines(spec: dict) -> list[str]:
    ttft = (
        f"; p95 time to first token {spec['ttft_p95_ms'] / 1000:g} s"
        if "ttft_p95_ms" in spec
        else ""
    )
    longest = (
        f"; longest request {spec['max_context_tokens']:,} tokens"
        if "max_context_tokens" in spec
        else ""
    )
    return [
        (
            f"- {spec['use_case']}, {spec['requests_per_day']:,} requests a day, peak "
            f"{spec['peak_requests_per_second']:g}/s for {spec['peak_hours_per_day']:g} h a day"
        ),
        (
            f"- {spec['input_tokens']} input and {spec['output_tokens']} output tokens per request{longest}; "
            f"p95 latency target {spec['latency_p95_ms'] / 1000:g} s{ttft}; availability {spec['availability']:.1%}"
        ),
        (
            f"- data: PII {'yes' if spec['privacy']['pii'] else 'no'}, residency "
            f"{', '.join(spec['privacy']['data_residency'])}, on-premises "
            f"{'required' if spec['privacy']['on_premises'] else 'not required'}; budget ${spec['budget_per_month_usd']:,} a month"
        ),
        f"- quality bar: {spec['quality_bar']}",
    ]


def shortlist_lines(plan: dict, gpus: dict) -> list[str]:
    spec, kept = plan["spec"], plan["kept"]
    if not kept:
        return [
            "**No costed host meets every rule and the budget.** See the exclusions and the hosts to price below."
        ]
    lines = [
        "| host | GPUs of a replica | replicas at peak (set by) | capacity per replica | monthly cost | per 1,000 requests | price |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in kept:
        capacity = f"{r['instance_rps']:.2f} req/s" + (" (measured)" if r.get("measured") else "")
        lines.append(
            f"| {r['host']['name']} | {layout_cell(r, r['host'], gpus)} | {r['replicas']} ({r['binding']}) | "
            f"{capacity} | ${r['monthly']:,.0f} | "
            f"${budget.per_request(r['monthly'], spec['requests_per_day']) * 1000:.3f} | {price_cell(r['price'])} |"
        )
    best = kept[0]
    lines += [
        "",
        f"**Recommendation: {best['host']['name']}**, {best['replicas']} replica(s), about ${best['monthly']:,.0f} a month.",
    ]
    if best.get("tp", 1) > 1:
        lines += interconnect_lines(
            plan["model"]["config"], plan["format"], gpus[best["host"]["gpu"]], best, spec
        )
    return lines


def api_lines(plan: dict) -> list[str]:
    spec = plan["spec"]
    api_prices = yaml.safe_load((DATA / "hosts.yaml").read_text())["api_prices"]
    api = next(a for a in api_prices if ("embedding" in a["name"]) != is_llm(spec))
    api_cost = budget.api_monthly(
        spec["requests_per_day"],
        spec["input_tokens"],
        spec["output_tokens"],
        api["input_per_million"],
        api["output_per_million"],
    )
    checked = "" if api["verified"] else ", **not re-checked**"
    lines = [
        "",
        "## Against a per-token API",
        "",
        (
            f"{api['name']} at ${api['input_per_million']} / ${api['output_per_million']} per 1M input / output "
            f"tokens ([as of {api['as_of']}]({api['source']}){checked}) would cost about ${api_cost:,.0f} a month "
            "for this traffic."
        ),
    ]
    if plan["kept"]:
        even = budget.break_even_requests_per_day(
            plan["kept"][0]["monthly"],
            spec["input_tokens"],
            spec["output_tokens"],
            api["input_per_million"],
            api["output_per_million"],
        )
        lines.append(
            f"Self-hosting on the recommended host breaks even above about {math.ceil(even):,} requests a day "
            "(a different model: compare quality on your evaluation set too)."
        )
    return lines


def assumption_lines(spec: dict) -> list[str]:
    lines = [
        "",
        "## Assumptions",
        "",
        (
            f"- engines reach {DECODE_EFFICIENCY:.0%} of the memory-bandwidth bound in decode and "
            f"{COMPUTE_EFFICIENCY:.0%} of data-sheet FLOP/s in prefill; batch at most {MAX_BATCH}; "
            f"{MEMORY_RESERVE:.0%} of each GPU's memory left to the runtime"
        ),
        (
            "- tensor-parallel all-reduces move at the one-way data-sheet bandwidth of the GPU link (or PCIe), "
            "latency not counted"
        ),
        f"- replicas sized for the peak at {TARGET_UTILISATION:.0%} utilisation"
        + (", plus one spare for the availability target" if spec["availability"] >= 0.999 else ""),
        (
            "- fixed fleets (VMs) are billed 730 hours a month for the peak's replicas; autoscaled hosts run "
            f"the peak's replicas for the {spec['peak_hours_per_day']:g} peak hours and the off-peak need, never "
            "below their minimum, for the rest of the day"
        ),
        (
            "- a host that scales to zero stays up while requests keep arriving within its idle timeout "
            f"({budget.IDLE_TIMEOUT_S // 60} minutes assumed); cold starts are not costed"
        ),
    ]
    if "ttft_p95_ms" in spec:
        lines.append(
            "- time to first token: requests arrive at random (Poisson) at the peak rate, spread evenly over the "
            "engines; a request waits for one of an engine's --max-num-seqs slots, each held for a request's "
            "latency (an M/M/c queue, Erlang C; conservative for requests of similar length), then one scheduler "
            "step prefills it with the prompts admitted alongside, at most --max-num-batched-tokens tokens"
        )
    return lines


def plan(spec_path: Path) -> str:
    """The plan in Markdown (make_plan renders)."""
    p = make_plan(spec_path)
    spec, gpus = p["spec"], load_gpus()
    lines = [
        f"# Plan: {spec['name']}",
        "",
        (
            f"Generated by `snippets/planning/plan.py` from `{Path(spec_path).name}`. Prices and hardware figures come "
            "from `data/` with their sources and dates; throughput is an estimate until you measure it."
        ),
        "",
        "## Needs",
        "",
        *needs_lines(spec),
        "",
        "## Model and format",
        "",
        *model_lines(p),
        "",
        "## Host shortlist",
        "",
        *shortlist_lines(p, gpus),
    ]
    if p["uncosted"]:
        lines += ["", "To price yourself (no price recorded for this spec's regions):", ""]
        lines += [
            f"- {r['host']['name']}: {r['replicas']} replica(s) at {r['instance_rps']:.2f} req/s each; {r['uncosted']}"
            for r in p["uncosted"]
        ]
    lines += engine_lines(p)
    lines += ["", "## Excluded, and why", ""]
    lines += [f"- {r['host']['name']}: {r['out']}" for r in p["rows"] if "out" in r] or ["- none"]
    lines += api_lines(p) + assumption_lines(spec)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="Turn a customer-needs spec into a costed deployment plan"
    )
    parser.add_argument("spec", type=Path, help="the spec, a YAML file")
    parser.add_argument(
        "--write", type=Path, metavar="DIR", help="also write the deployment bundle into DIR"
    )
    args = parser.parse_args()
    import bundle  # imports this module: loaded here, not at the top

    try:
        written = bundle.write(args.spec, args.write) if args.write else []
        print(plan(args.spec), end="")
    except (SpecError, PlanError, bundle.BundleError) as error:
        sys.exit(str(error))
    if written:
        print(f"wrote {', '.join(p.name for p in written)} to {args.write}", file=sys.stderr)
