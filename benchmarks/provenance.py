"""Where a benchmark's figures come from, written beside them in its results file.

The block records the commit the run was on, whether a measured file differed from that commit
(`dirty`), when the run started, a sha256 of every file the run measured (the benchmark script,
the servers it started and every local module they import) and the versions of the packages those
files import. The render hook compares it with the tree it builds from and prints, under the
table, what has changed since the run.

Local imports are followed statically, the way the scripts find them at run time: a file imports
from its own folder, then from the folders others put on sys.path: snippets/backends (the servers'
shared kit), snippets/planning (the calculator, for the capacity benchmarks) and benchmarks/
(where the flywheel finds this module when it publishes). Whatever else is not in the standard
library is an installed package.
"""

import ast
import datetime
import functools
import hashlib
import importlib.metadata
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEARCHED_AFTER_OWN_FOLDER = ("snippets/backends", "snippets/planning", "benchmarks")
Reader = Callable[[str], bytes | None]  # a repository-relative path -> its bytes, None if absent


def provenance(measured: list[Path], packages: tuple[str, ...] = ()) -> dict:
    """The provenance of a run over `measured` (scripts, servers, data files) starting now.

    `packages` names distributions a run uses without importing them (a peer started as a
    command, such as `transformers serve`)."""
    files = measured_files([relative(path) for path in measured], read_tree)
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": git("status", "--porcelain", "--", *files) != "",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "files": {path: sha256(read_tree(path)) for path in files},
        "packages": installed_versions(imported_distributions(files, read_tree) | set(packages)),
    }


def files_at(commit: str, measured: list[str]) -> dict[str, str]:
    """sha256 of each file a run over `measured` would have measured at `commit` (from git)."""
    read = read_commit(commit)
    return {path: sha256(read(path)) for path in measured_files(measured, read)}


def changes_since(block: dict) -> list[str]:
    """What differs between a results file's provenance and the tree and packages here: a file's
    path, or 'package old -> new'. A version recorded as unknown (None) is not compared, and one
    recorded from a pin (2.13.0) matches its local build (2.13.0+cpu), as pip's == does."""
    changed = [
        path
        for path, digest in block["files"].items()
        if (data := read_tree(path)) is None or sha256(data) != digest
    ]
    now = installed_versions(set(block["packages"]))
    changed += [
        f"{name} {version} -> {now[name] or 'not installed'}"
        for name, version in block["packages"].items()
        if version is not None and not same_version(version, now[name])
    ]
    return changed


def same_version(recorded: str, installed: str | None) -> bool:
    """Equal, or a pin without a local label (2.13.0) against its local build (2.13.0+cpu)."""
    return installed == recorded or (
        "+" not in recorded and (installed or "").split("+")[0] == recorded
    )


def measured_files(entry_points: list[str], read: Reader) -> list[str]:
    """`entry_points` and every repository file they import, directly or not, sorted."""
    found, todo = set(), list(entry_points)
    while todo:
        path = todo.pop()
        if path in found:
            continue
        if read(path) is None:
            raise FileNotFoundError(f"measured file {path} not found")
        found.add(path)
        if path.endswith(".py"):
            todo += [
                local
                for module in imported_modules(read(path))
                if (local := local_module(module, path, read))
            ]
    return sorted(found)


def imported_modules(source: bytes) -> set[str]:
    """Top-level names of every module a Python file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def local_module(module: str, importer: str, read: Reader) -> str | None:
    """The repository file `module` resolves to from `importer`, or None (stdlib or a package)."""
    for folder in (str(Path(importer).parent), *SEARCHED_AFTER_OWN_FOLDER):
        if read(candidate := f"{folder}/{module}.py") is not None:
            return candidate
    return None


def imported_distributions(files: list[str], read: Reader) -> set[str]:
    """The installed distributions that the Python files among `files` import; a module that no
    installed distribution provides is kept under its own name (it will show as not installed)."""
    providers = importlib.metadata.packages_distributions()
    modules = set()
    for path in files:
        if path.endswith(".py"):
            modules |= {
                m
                for m in imported_modules(read(path))
                if m not in sys.stdlib_module_names and local_module(m, path, read) is None
            }
    return {dist for module in modules for dist in providers.get(module, [module])}


def installed_versions(distributions: set[str]) -> dict[str, str | None]:
    versions = {}
    for name in sorted(distributions):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def read_tree(path: str) -> bytes | None:
    file = REPO / path
    return file.read_bytes() if file.is_file() else None


def read_commit(commit: str) -> Reader:
    @functools.cache
    def read(path: str) -> bytes | None:
        shown = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True)
        return shown.stdout if shown.returncode == 0 else None

    return read


def relative(path: Path) -> str:
    return Path(path).resolve().relative_to(REPO).as_posix()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
