"""gui/search_page.py: the page loads in a browser and the search ranks the right document first."""

import requests
from helpers import serve


def test_page_and_search():
    with serve("gui/search_page.py", ready_path="/") as server:
        page = requests.get(server.url + "/", timeout=10)
        assert page.headers["content-type"].startswith("text/html")
        assert 'fetch("/search"' in page.text
        hits = requests.post(
            server.url + "/search", json={"query": "why is loading a pickle unsafe?"}, timeout=30
        )
        assert hits.status_code == 200
        assert hits.json()["hits"][0]["document"].startswith("safetensors files")
        scores = [h["score"] for h in hits.json()["hits"]]
        assert scores == sorted(scores, reverse=True)
        empty = requests.post(server.url + "/search", json={"query": ""}, timeout=10)
        assert empty.status_code == 422 and "query" in empty.text
