"""benchmarks/provenance.py: every results file says which commit, files and package versions its
figures were measured on, and the page says under each table what has changed since."""

import hashlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys

import pytest
from helpers import REPO

RESULTS = REPO / "benchmarks" / "results"
HEX40, HEX64 = re.compile(r"[0-9a-f]{40}"), re.compile(r"[0-9a-f]{64}")


def load(name: str, path):
    """A module by its path: benchmarks/ on sys.path would shadow the servers' modules."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def provenance():
    return load("provenance", REPO / "benchmarks" / "provenance.py")


@pytest.fixture(scope="module")
def render_data():
    return load("render_data", REPO / "hooks" / "render_data.py")


def git_show(commit: str, path: str) -> bytes:
    return subprocess.run(
        ["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, check=True
    ).stdout


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.stem)
def test_every_results_file_has_provenance(path):
    """The commit (or how it was found afterwards), the date, a hash of each measured file and the
    versions of the packages they import. Unless the run had uncommitted changes, each hash is
    the file's at that commit, so the block cannot be edited by hand unnoticed."""
    block = json.loads(path.read_text()).get("provenance")
    assert block, f"{path.name} has no provenance: rerun its benchmark"
    assert block["commit"] is None or HEX40.fullmatch(block["commit"]), block["commit"]
    assert block["dirty"] in (True, False, None)
    assert re.match(r"\d{4}-\d\d-\d\d", block["date"])
    assert block["files"] and all(HEX64.fullmatch(h) for h in block["files"].values())
    assert block["packages"] and all(
        v is None or v[0].isdigit() for v in block["packages"].values()
    )
    if block["commit"] is None or block["dirty"] is None:
        assert block.get("commit_source") or block.get("notes"), "say how the commit was found"
    if block["commit"] and block["dirty"] is not True:
        for file, digest in block["files"].items():
            assert hashlib.sha256(git_show(block["commit"], file)).hexdigest() == digest, file


def test_a_run_records_its_files_imports_and_packages(provenance):
    block = provenance.provenance([REPO / "benchmarks" / "prefix_cache.py"])
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert block["commit"] == head.stdout.strip()
    assert {
        "benchmarks/prefix_cache.py",
        "benchmarks/llm_server.py",  # it imports MODEL_DIR from there
        "benchmarks/harness.py",
        "benchmarks/workloads.py",
        "benchmarks/provenance.py",
    } <= set(block["files"])
    assert block["packages"]["transformers"] == importlib.metadata.version("transformers")
    assert provenance.changes_since(block) == []


def test_a_snippet_imports_from_its_folder_then_the_servers_kit(provenance):
    """The Ray app imports embedding_server from snippets/backends, not the benchmark of the same
    name, and every local module the servers import comes along."""
    files = provenance.measured_files(
        ["snippets/scale_out/embeddings_on_ray.py"], provenance.read_tree
    )
    assert "snippets/backends/embedding_server.py" in files
    assert "snippets/backends/server_kit.py" in files
    assert "benchmarks/embedding_server.py" not in files


def test_every_import_of_the_measured_code_resolves(provenance):
    """The rule the hashes rely on (own folder, then SEARCHED_AFTER_OWN_FOLDER) holds for every snippet and
    benchmark: an import it cannot place is neither the standard library nor a package here."""
    providers = importlib.metadata.packages_distributions()
    unplaced = []
    for file in [*REPO.glob("snippets/**/*.py"), *REPO.glob("benchmarks/**/*.py")]:
        path = file.relative_to(REPO).as_posix()
        for module in provenance.imported_modules(file.read_bytes()):
            local = provenance.local_module(module, path, provenance.read_tree)
            if not (local or module in sys.stdlib_module_names or module in providers):
                unplaced.append(f"{path}: {module}")
    assert not unplaced


def test_a_changed_file_or_package_is_named_under_the_table(
    provenance, render_data, tmp_path, monkeypatch
):
    block = provenance.provenance([REPO / "benchmarks" / "request_log_cost.py"])
    block["dirty"] = False  # whatever the tree holds while this test runs
    block["files"]["benchmarks/harness.py"] = "0" * 64
    block["packages"]["numpy"] = "1.0.0"
    (tmp_path / "example.json").write_text(json.dumps({"provenance": block}))
    monkeypatch.setattr(render_data, "RESULTS", tmp_path)
    line = render_data.render('--8<-- "results/example.md"').splitlines()[-1]
    assert f"Measured on `{block['commit'][:7]}`, {block['date'][:10]}." in line
    now = importlib.metadata.version("numpy")
    assert line.endswith(f"**Changed since:** `benchmarks/harness.py`, `numpy 1.0.0 -> {now}`.*")


def test_a_pin_matches_its_local_build(provenance):
    assert provenance.same_version("2.13.0", "2.13.0+cpu")
    assert not provenance.same_version("2.13.0+cpu", "2.13.0+cu128")
    assert not provenance.same_version("2.13.0", "2.13.1")


def test_a_result_without_provenance_is_refused(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from publish import publish
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    with pytest.raises(ValueError, match="no provenance"):
        publish("example", {"figure": 1}, "| table |\n", tmp_path)
    assert not (tmp_path / "example.json").exists()


def test_a_placeholder_quotes_a_field_and_refuses_an_unknown_one(render_data):
    llm = json.loads((RESULTS / "llm_server.json").read_text())
    row = next(
        r for r in llm["summary"] if (r["mode"], r["load"]) == ("continuous batching", "8 clients")
    )
    page = (
        '<!-- result: llm_server summary mode="continuous batching" load="8 clients" '
        "tpot_p50 :.1f --> ms"
    )
    assert render_data.render(page) == f"{row['tpot_p50']:.1f} ms"
    for wrong in ("llm_server no_such_field", "llm_server summary mode=nobody tpot_p50"):
        with pytest.raises(ValueError, match="result placeholder"):
            render_data.render(f"<!-- result: {wrong} -->")
