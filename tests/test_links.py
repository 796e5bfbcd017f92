"""The link registry (data/links.yaml): every external URL on the site is registered, no dead
link lacks a replacement, and `make linkcheck` updates the registry from real HTTP answers."""

import http.server
import subprocess
import sys
import threading

import pytest
import yaml
from helpers import REPO, free_port

sys.path.insert(0, str(REPO / "tools"))
import linkcheck


def test_every_site_url_is_registered_and_none_is_dead():
    assert linkcheck.problems(linkcheck.site_urls(), linkcheck.load_registry()) == []


def test_the_check_catches_an_unregistered_or_dead_link():
    registry = linkcheck.load_registry()
    assert linkcheck.problems(linkcheck.site_urls() | {"https://example.org/new"}, registry) == [
        "not in data/links.yaml: https://example.org/new"
    ]
    registry["links"].append({"url": "https://example.org/gone", "status": "dead"})
    assert linkcheck.problems(linkcheck.site_urls(), registry) == [
        "dead without a replacement: https://example.org/gone"
    ]


def test_site_urls_reads_pages_and_data(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "docs" / "page.md").write_text(
        "See [x](https://a.example/x), http://127.0.0.1:8000 is local."
    )
    (tmp_path / "data" / "things.yaml").write_text("link: https://b.example/y.\n")
    assert linkcheck.site_urls(tmp_path) == {"https://a.example/x", "https://b.example/y"}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):
        if self.path == "/old":
            self.send_response(301)
            self.send_header("Location", "/ok")
        else:
            self.send_response(200 if self.path == "/ok" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def local_site():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run_linkcheck(registry_path):
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "linkcheck.py"),
            "--registry",
            str(registry_path),
            "--host-delay",
            "0",
            "--retries",
            "1",
            "--timeout",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_linkcheck_records_live_moved_and_dead(tmp_path, local_site):
    path = tmp_path / "links.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "links": [
                    {"url": f"{local_site}/{p}", "status": "unverified"}
                    for p in ("ok", "old", "gone")
                ]
            }
        )
    )
    proc = run_linkcheck(path)
    assert proc.returncode == 0, proc.stderr
    ok, old, gone = yaml.safe_load(path.read_text())["links"]
    assert ok["status"] == "live" and ok["http_status"] == 200
    assert old["status"] == "moved" and old["final_url"] == f"{local_site}/ok"
    assert gone["status"] == "dead" and gone["http_status"] == 404
    assert all(e["checked"] for e in (ok, old, gone))


def test_linkcheck_without_network_fails_clearly(tmp_path):
    path = tmp_path / "links.yaml"
    closed = [f"http://127.0.0.1:{free_port()}/x" for _ in range(3)]  # nothing listens there
    path.write_text(yaml.safe_dump({"links": [{"url": u, "status": "live"} for u in closed]}))
    before = path.read_text()
    proc = run_linkcheck(path)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "linkcheck: no network: none of 3 URLs could be reached; the registry is unchanged."
    )
    assert "Traceback" not in proc.stderr and path.read_text() == before
