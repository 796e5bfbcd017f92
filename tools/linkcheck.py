"""The link registry: find every external URL the site uses, and check them over the network.

    python tools/linkcheck.py            # check every registered URL, update data/links.yaml
    python tools/linkcheck.py --list     # print URLs the registry lacks, and dead links without a replacement
    python tools/linkcheck.py --add-missing  # register new URLs as unverified, to be checked online

Offline, `make test` only checks that every URL is registered and that no dead link lacks a
replacement (tests/test_links.py). Online, this script follows redirects, retries with a per-host
delay, and records status, final URL and date. It is never part of `make test`.
"""

import argparse
import datetime
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "data" / "links.yaml"
URL = re.compile(r"https?://[^\s)\]>\"'`|]+")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "0.0.0.0"}
STATUSES = {"live", "moved", "dead", "error", "unverified"}
HEADER = (
    "# Every external URL used in docs/ and data/, with its status. Checked offline by tests/test_links.py,\n"
    "# online by `make linkcheck` (tools/linkcheck.py), which rewrites status, final_url and checked.\n"
)


def site_urls(repo: Path = REPO) -> set[str]:
    """External URLs in the pages, notebooks and data files (the registry itself excluded)."""
    sources = [
        *(repo / "docs").rglob("*.md"),
        *(repo / "docs").rglob("*.ipynb"),
        *(repo / "data").glob("*.yaml"),
    ]
    found = set()
    for path in sources:
        if path.name == "links.yaml":
            continue
        for url in URL.findall(path.read_text(encoding="utf-8")):
            url = url.rstrip(".,;:")
            if urlsplit(url).hostname not in LOCAL_HOSTS:
                found.add(url)
    return found


def load_registry(path: Path = REGISTRY) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def save_registry(registry: dict, path: Path = REGISTRY) -> None:
    path.write_text(
        HEADER + yaml.safe_dump(registry, sort_keys=False, allow_unicode=True, width=110),
        encoding="utf-8",
    )


def problems(urls: set[str], registry: dict) -> list[str]:
    """What the offline test fails on: unregistered URLs, dead links without a replacement."""
    entries = {e["url"]: e for e in registry["links"]}
    found = [f"not in data/links.yaml: {url}" for url in sorted(urls - entries.keys())]
    found += [
        f"dead without a replacement: {e['url']}"
        for e in entries.values()
        if e["status"] == "dead" and not e.get("replacement")
    ]
    found += [
        f"unknown status {e['status']!r}: {e['url']}"
        for e in entries.values()
        if e["status"] not in STATUSES
    ]
    return found


def check(url: str, session: requests.Session, timeout: float, retries: int) -> dict:
    """One URL: live, moved (redirected elsewhere), dead (404/410), or error (unreachable, 5xx)."""
    last_error = "unknown"
    for attempt in range(retries):
        try:
            response = session.head(url, allow_redirects=True, timeout=timeout)
            if response.status_code in (403, 405, 501):  # some servers refuse HEAD: ask with GET
                response = session.get(url, allow_redirects=True, timeout=timeout, stream=True)
                response.close()
            code = response.status_code
            if code in (404, 410):
                return {"status": "dead", "http_status": code}
            if code < 400:
                moved = response.url.rstrip("/") != url.rstrip("/")
                return {
                    "status": "moved" if moved else "live",
                    "http_status": code,
                    **({"final_url": response.url} if moved else {}),
                }
            last_error = f"HTTP {code}"
            if code not in (429, 500, 502, 503, 504):
                return {"status": "error", "http_status": code}
        except requests.RequestException as error:
            last_error = type(error).__name__
        if attempt + 1 < retries:
            time.sleep(2**attempt)
    return {"status": "error", "error": last_error}


def run(registry: dict, timeout: float, retries: int, host_delay: float) -> tuple[int, int]:
    """Check every entry in place; return (reached, total). Waits host_delay between calls to one host."""
    session = requests.Session()
    session.headers["User-Agent"] = "servebook-linkcheck/1.0"
    last_call: dict[str, float] = {}
    reached = unreachable = 0
    today = datetime.date.today().isoformat()
    for entry in registry["links"]:
        host = urlsplit(entry["url"]).hostname
        wait = last_call.get(host, 0) + host_delay - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        result = check(entry["url"], session, timeout, retries)
        last_call[host] = time.monotonic()
        if result.get("error") in ("ConnectionError", "ConnectTimeout"):
            print(f"  unreachable  {entry['url']}")
            unreachable += 1
            if reached == 0 and unreachable >= 3:
                break  # three hosts down and none up: no network, stop rather than wait on every URL
            continue
        reached += 1
        entry.pop("final_url", None)
        entry.update(result, checked=today)
        print(f"  {entry['status']:<11}  {entry['url']}")
    return reached, len(registry["links"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=REGISTRY)
    parser.add_argument("--timeout", type=float, default=10)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument(
        "--host-delay", type=float, default=1.0, help="seconds between calls to one host"
    )
    parser.add_argument("--list", action="store_true", help="only list registry problems (offline)")
    parser.add_argument(
        "--add-missing", action="store_true", help="register new site URLs as unverified (offline)"
    )
    args = parser.parse_args()
    registry = load_registry(args.registry)
    if args.add_missing:
        missing = sorted(site_urls() - {e["url"] for e in registry["links"]})
        registry["links"] += [
            {
                "url": url,
                "status": "unverified",
                "checked": None,
                "evidence": "not yet checked online; run make linkcheck",
            }
            for url in missing
        ]
        save_registry(registry, args.registry)
        print(f"registered {len(missing)} new URLs as unverified")
        return 0
    if args.list:
        found = problems(site_urls(), registry)
        print("\n".join(found) or "every site URL is registered")
        return 1 if found else 0
    reached, total = run(registry, args.timeout, args.retries, args.host_delay)
    if reached == 0:
        print(
            f"linkcheck: no network: none of {total} URLs could be reached; the registry is unchanged.",
            file=sys.stderr,
        )
        return 2
    save_registry(registry, args.registry)
    print(f"checked {reached} of {total} URLs; wrote {args.registry}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
