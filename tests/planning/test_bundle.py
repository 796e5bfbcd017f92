"""planning/bundle.py through `plan.py --write`: for every example spec, the vLLM command and the
Deployment's args pass vLLM 0.32's own argument parser, the manifests pass kubernetes-validate in
strict mode (a kind it has no schema for fails, where its command line only warns), the KEDA
ScaledObject passes KEDA's published CRD schema, and the alert rules pass promtool. Every figure
is recomputed from the plan the test makes from data/, none is typed here."""

import json
import shlex
import subprocess
import sys

import kubernetes_validate
import pytest
import yaml
from helpers import REPO, SNIPPETS, load_snippet
from scale_out.crd_schema import problems, strict_validator
from vllm_cpu import VLLM_PYTHON, vllm_env, vllm_version
from vllm_kit import parse_vllm_args

bundle = load_snippet("planning/bundle.py")
planner = bundle.planner
SPECS = sorted((REPO / "data" / "specs").glob("*.yaml"))
KUBERNETES = ("1.30", kubernetes_validate.utils.latest_version())  # oldest supported, newest known
SCALED_OBJECT = "keda-v2.20.2-scaledobject-v1alpha1-schema.json.gz"
RULES_SNIPPET = SNIPPETS / "visualisation" / "vllm_alert_rules.yml"
# vLLM's own validation of --custom-histogram-buckets, which its parser leaves to config time, and
# the default bounds bundle.py extends; run in .venv-vllm beside the parser.
BUCKET_CHECK = """
import json, sys
from vllm.config.observability import ObservabilityConfig
from vllm.v1.metrics.buckets import REQUEST_LATENCY_BUCKETS, TIME_TO_FIRST_TOKEN_BUCKETS
out = {"defaults": {"request_latency": REQUEST_LATENCY_BUCKETS,
                    "time_to_first_token": TIME_TO_FIRST_TOKEN_BUCKETS}, "errors": []}
for buckets in json.load(sys.stdin):
    try:
        ObservabilityConfig(custom_histogram_buckets=buckets)
        out["errors"].append(None)
    except ValueError as error:
        out["errors"].append(str(error).splitlines()[2].strip())
print(json.dumps(out))
"""


def command_of(serve_sh: str) -> str:
    """The command serve.sh runs: continuations joined, `exec` dropped."""
    joined = serve_sh.replace("\\\n", " ")
    [line] = [line for line in joined.splitlines() if line.startswith("exec ")]
    return shlex.join(shlex.split(line)[1:])


def documents(files: dict) -> dict:
    """The manifests of a bundle by kind."""
    return {d["kind"]: d for d in yaml.safe_load_all(files["kubernetes.yaml"])}


def container(files: dict) -> dict:
    [vllm] = documents(files)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return vllm


def deployment_command(files: dict) -> str:
    return shlex.join(container(files)["command"] + container(files)["args"])


def flags(command: str) -> dict:
    """`vllm serve M --a 1 --b 2` -> {"--a": "1", "--b": "2"}."""
    words = shlex.split(command)[3:]
    return dict(zip(words[::2], words[1::2], strict=True))


@pytest.fixture(scope="module")
def plans() -> dict:
    """spec file name -> (plan, the row the manifests are for, its engine settings)."""
    out = {}
    for path in SPECS:
        plan = planner.make_plan(path)
        row, _ = bundle.kubernetes_row(plan)
        out[path.name] = (
            plan,
            row,
            planner.engine_settings(plan["spec"], plan["model"], plan["format"], row),
        )
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict:
    """spec file name -> {file name: text}, written by `plan.py SPEC --write DIR` as a reader runs it."""
    out = {}
    for path in SPECS:
        folder = tmp_path_factory.mktemp(path.stem)
        proc = subprocess.run(
            [sys.executable, str(SNIPPETS / "planning" / "plan.py"), str(path), "--write", folder],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("# Plan: ")  # the plan is still printed
        out[path.name] = {p.name: p.read_text() for p in folder.iterdir()}
    return out


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict:
    """Bundles for formats the example specs do not reach: FP8 weights, a published int4
    checkpoint, and a model given by its own config.json."""
    folder = tmp_path_factory.mktemp("variants")
    base = yaml.safe_load((REPO / "data" / "specs" / "internal-chat.yaml").read_text())
    config = yaml.safe_load((REPO / "data" / "model_configs.yaml").read_text())["models"]
    (folder / "my-model").mkdir()
    (folder / "my-model" / "config.json").write_text(json.dumps(config["qwen3-8b"]["config"]))
    specs = {
        "fp8": {**base, "dtype": {"weights": "fp8"}, "budget_per_month_usd": 100_000},
        "int4": {**base, "dtype": {"weights": "int4"}, "budget_per_month_usd": 100_000},
        "own-config": {**base, "model": "my-model/config.json", "budget_per_month_usd": 100_000},
    }
    out = {}
    for name, spec in specs.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec))
        out[name] = bundle.bundle_files(folder / f"{name}.yaml")
    return out


def bucket_lists(files: dict) -> dict:
    return json.loads(flags(command_of(files["serve.sh"]))["--custom-histogram-buckets"])


@pytest.fixture(scope="module")
def vllm_verdicts(bundles, variants) -> dict:
    """vLLM's parser over every command at once (one start of vLLM's Python, about 7 s), with a
    misspelt flag that must fail; meanwhile vLLM's config validation checks every bucket list
    and one that must fail."""
    every = [*bundles.values(), *variants.values()]
    lists = [bucket_lists(files) for files in every] + [{"request_latency": [12, 1.5]}]
    buckets = subprocess.Popen(
        [str(VLLM_PYTHON), "-c", BUCKET_CHECK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=vllm_env(1),
    )
    commands = {command_of(files["serve.sh"]) for files in every}
    commands |= {deployment_command(files) for files in every}
    typo = command_of(bundles["internal-chat.yaml"]["serve.sh"]).replace(
        "--max-num-seqs", "--max-num-seq5"
    )
    parsed = parse_vllm_args(sorted(commands) + [typo])
    out, err = buckets.communicate(json.dumps(lists), timeout=180)
    assert buckets.returncode == 0, err[-2000:]
    return {"parsed": parsed, "typo": typo, "buckets": json.loads(out.splitlines()[-1])}


def test_plan_writes_the_bundle(bundles):
    """The four example specs of step 1 and the mixture-of-experts one, at least."""
    assert set(bundles) >= {
        "embedding-api.yaml",
        "internal-chat.yaml",
        "moe-chat.yaml",
        "on-prem-regulated.yaml",
        "research-70b.yaml",
    }
    for files in bundles.values():
        assert set(files) == {"serve.sh", "kubernetes.yaml", "alert_rules.yml", "README.md"}


def test_vllms_parser_accepts_every_command_and_refuses_a_typo(vllm_verdicts):
    parsed = dict(vllm_verdicts["parsed"])
    assert parsed.pop(vllm_verdicts["typo"]) == (
        "vllm serve: error: unrecognized arguments: --max-num-seq5 6"
    )
    assert parsed and all(error is None for error in parsed.values()), parsed


def test_the_deployment_runs_the_command_the_parser_checked(bundles, plans):
    """Same host, same command: where the manifests are for the recommended host, serve.sh and
    the Deployment's args are one command; otherwise each is that host's."""
    for name, files in bundles.items():
        plan, row, engine = plans[name]
        assert deployment_command(files) == shlex.join(bundle.vllm_argv(plan, engine))
        assert command_of(files["serve.sh"]) == shlex.join(bundle.vllm_argv(plan, plan["engine"]))
        if row is plan["chosen"]:
            assert deployment_command(files) == command_of(files["serve.sh"])


def test_flags_are_the_plans_settings(bundles, plans):
    for name, files in bundles.items():
        plan, _, engine = plans[name]
        spec, given = plan["spec"], flags(deployment_command(files))
        assert given["--tensor-parallel-size"] == str(engine["tensor_parallel_size"])
        assert given["--served-model-name"] == spec["model"]
        assert int(given["--shutdown-timeout"]) >= spec["latency_p95_ms"] / 1000
        buckets = json.loads(given["--custom-histogram-buckets"])
        assert spec["latency_p95_ms"] / 1000 in buckets["request_latency"]
        if not planner.is_llm(spec):
            assert given["--runner"] == "pooling" and "--max-num-seqs" not in given
            continue
        ttft_target = spec.get("ttft_p95_ms", 0) / 1000
        assert ttft_target in buckets.get("time_to_first_token", [0])
        for flag in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
            assert given["--" + flag.replace("_", "-")] == str(engine[flag])
        assert float(given["--gpu-memory-utilization"]) == engine["gpu_memory_utilization"]
        assert given.get("--kv-cache-dtype", "auto") == (
            "fp8" if engine["kv_cache_dtype"] == "fp8" else "auto"
        )


def test_quantised_and_local_models(variants):
    fp8, int4, own = (flags(deployment_command(variants[k])) for k in ("fp8", "int4", "own-config"))
    assert fp8["--quantization"] == "fp8"
    published = yaml.safe_load((REPO / "data" / "model_configs.yaml").read_text())["models"]
    checkpoint = published["llama-3.1-8b"]["int4"]
    assert shlex.split(deployment_command(variants["int4"]))[2] == checkpoint["name"]
    assert int4["--quantization"] == checkpoint["method"]
    assert shlex.split(deployment_command(variants["own-config"]))[2].endswith("my-model")
    assert own["--served-model-name"] == "my-model" and "--quantization" not in own
    assert "The model is a local folder" in variants["own-config"]["README.md"]


def test_bucket_lists_pass_vllms_own_validation(vllm_verdicts):
    """The parser takes any JSON for --custom-histogram-buckets; vLLM checks the lists when it
    builds its config, and the defaults bundle.py extends are vLLM's own."""
    out = vllm_verdicts["buckets"]
    assert out["errors"][:-1] == [None] * (len(out["errors"]) - 1)
    assert "must be strictly increasing" in out["errors"][-1]
    assert out["defaults"] == bundle.VLLM_BUCKETS


def kubernetes_problems(manifest: dict) -> list[str]:
    """Strict validation: Kubernetes' own kinds by kubernetes-validate at the oldest and newest
    versions this bundle targets, KEDA's ScaledObject by its CRD. A kind neither knows fails."""
    if manifest["kind"] == "ScaledObject":
        return problems(manifest, strict_validator(SCALED_OBJECT))
    found = []
    for version in KUBERNETES:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(map(str, error.path))
            found.append(f"{version}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            found.append(f"{version}: {error.message}")
    return found


def test_manifests_pass_strict_validation(bundles):
    for name, files in bundles.items():
        kinds = documents(files)
        assert set(kinds) == {"Deployment", "Service", "ScaledObject"}, name
        for manifest in kinds.values():
            assert kubernetes_problems(manifest) == [], (name, manifest["kind"])


def test_strict_validation_can_fail(bundles):
    kinds = documents(bundles["internal-chat.yaml"])
    misspelt = json.loads(json.dumps(kinds["Deployment"]))
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert kubernetes_problems(misspelt)[0].endswith(
        "Additional properties are not allowed ('readinesProbe' was unexpected)"
    )
    removed = {**kinds["Deployment"], "apiVersion": "extensions/v1beta1"}
    assert kubernetes_problems(removed)[0] == (
        "1.30: Couldn't find schema for kind Deployment with api version extensions/v1beta1 "
        "for kubernetes version 1.30"
    )
    scaled = json.loads(json.dumps(kinds["ScaledObject"]))
    scaled["spec"]["minReplicas"] = scaled["spec"].pop("minReplicaCount")
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 7
    assert kubernetes_problems(scaled) == [
        "spec.triggers.0.metadata.threshold: 7 is not of type 'string'",
        "spec: Additional properties are not allowed ('minReplicas' was unexpected)",
    ]
    unknown = {**kinds["ScaledObject"], "kind": "ScaledJob"}
    assert "Couldn't find schema for kind ScaledJob" in kubernetes_problems(unknown)[0]


def test_kubernetes_validates_command_line_only_warns_for_an_unknown_kind(tmp_path, bundles):
    """Why the tests use the Python API: the command line passes a kind it cannot check."""
    manifest = tmp_path / "scaledobject.yaml"
    manifest.write_text(yaml.safe_dump(documents(bundles["internal-chat.yaml"])["ScaledObject"]))
    cli = [sys.executable, "-m", "kubernetes_validate", "--strict", str(manifest)]
    proc = subprocess.run(cli, capture_output=True, text=True)
    assert proc.returncode == 0 and "WARN" in proc.stdout and "ScaledObject" in proc.stdout


def test_the_deployment_drains_probes_and_holds_the_model(bundles, plans):
    for name, files in bundles.items():
        plan, _, engine = plans[name]
        pod = documents(files)["Deployment"]["spec"]["template"]["spec"]
        vllm = container(files)
        assert vllm["image"] == f"vllm/vllm-openai:v{vllm_version().split()[-1]}"  # the parser's
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == engine["tensor_parallel_size"]
        shutdown = int(flags(deployment_command(files))["--shutdown-timeout"])
        pre_stop = int(vllm["lifecycle"]["preStop"]["exec"]["command"][1])
        assert pod["terminationGracePeriodSeconds"] > pre_stop + shutdown
        weights = planner.compute.weight_bytes(plan["model"]["config"], plan["format"].weights)
        startup = vllm["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= (
            weights / bundle.DOWNLOAD_BYTES_S + bundle.WARMUP_S
        )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert vllm[probe]["httpGet"] == {"path": "/health", "port": "http"}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
        assert int(volumes["models"]["emptyDir"]["sizeLimit"].removesuffix("Gi")) * 2**30 > weights
        mounts = {m["mountPath"] for m in vllm["volumeMounts"]}
        assert mounts == {"/dev/shm", "/models"}
        secrets = {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in vllm["env"] if "valueFrom" in e
        }
        assert set(secrets) == {"VLLM_API_KEY", "HF_TOKEN"}
        assert secrets["HF_TOKEN"]["optional"] and not secrets["VLLM_API_KEY"].get("optional")
        assert "--api-key" not in vllm["args"]  # vLLM reads VLLM_API_KEY itself


def test_model_revision_is_pinned_or_said_not_to_be(bundles):
    for files in bundles.values():
        assert "--revision" not in container(files)["args"]  # data/ reads configs from main
        assert "The model revision is not pinned" in files["README.md"]
    commit = "0e9e39f249a16976918f6564b8830bc894c89659"
    assert bundle.revision(f"https://huggingface.co/org/m/blob/{commit}/config.json") == commit
    assert bundle.revision("https://huggingface.co/org/m/blob/main/config.json") is None


def test_scaling_follows_the_availability_target_and_the_costed_replicas(bundles, plans):
    for name, files in bundles.items():
        plan, row, _ = plans[name]
        scaling = documents(files)["ScaledObject"]["spec"]
        spare = 1 if plan["spec"]["availability"] >= 0.999 else 0
        assert scaling["minReplicaCount"] == 1 + spare
        pods_per_instance = max(row["host"]["gpus"], 1) // row.get("tp", 1)
        assert scaling["maxReplicaCount"] == row["replicas"] * pods_per_instance
        [trigger] = scaling["triggers"]
        assert trigger["type"] == "prometheus"
        assert trigger["metadata"]["query"].startswith("sum(vllm:num_requests_waiting{")
        assert int(trigger["metadata"]["threshold"]) >= 1


def test_manifests_are_for_the_cheapest_self_managed_nvidia_host(plans):
    """The cheapest feasible GPU VM or on-premises row with NVIDIA GPUs (vLLM's CUDA image, the
    NVIDIA device plugin); without one, the recommended host's layout."""
    gpus = planner.load_gpus()

    def nvidia(row: dict) -> bool:
        return (
            bool(row["host"]["gpu"]) and gpus[row["host"]["gpu"]]["architecture"] in bundle.NVIDIA
        )

    for name, (plan, row, _) in plans.items():
        candidates = [
            r
            for r in plan["kept"] + plan["uncosted"]
            if r["host"]["kind"] in ("gpu-cloud", "on-premises") and nvidia(r)
        ]
        assert row is (candidates[0] if candidates else plan["chosen"]), name
        assert nvidia(row), name
        if plan["kept"] and candidates and "monthly" in row:
            assert row["monthly"] == min(r["monthly"] for r in candidates if "monthly" in r)


def test_alert_rules_follow_the_spec(bundles, tmp_path):
    """The snippet on the pages is the internal-chat bundle's rules; every bundle's pass promtool."""
    assert bundles["internal-chat.yaml"]["alert_rules.yml"] == RULES_SNIPPET.read_text()
    for name, files in bundles.items():
        rules = tmp_path / f"{name}.rules.yml"
        rules.write_text(files["alert_rules.yml"])
        proc = subprocess.run(
            ["promtool", "check", "rules", str(rules)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_input_is_one_line(tmp_path):
    plan_py = str(SNIPPETS / "planning" / "plan.py")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cases = {
        "missing spec": (
            [str(tmp_path / "nope.yaml"), "--write", str(tmp_path / "b")],
            "cannot read the spec",
        ),
        "folder is a file": (
            [str(SPECS[0].with_name("internal-chat.yaml")), "--write", str(a_file)],
            "cannot write the bundle",
        ),
    }
    for case, (args, message) in cases.items():
        proc = subprocess.run([sys.executable, plan_py, *args], capture_output=True, text=True)
        assert proc.returncode == 1, case
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "b").exists()
