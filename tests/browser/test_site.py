"""The built site in Chromium at 1280 px, as a reader sees it: the home page, navigation, search,
Mermaid diagrams drawn offline and legible, a working copy button, and pages free of the build
machine's paths and warnings."""

import re
from pathlib import Path

import pytest

# Material draws each diagram into a closed shadow root; opened, the test can measure it.
OPEN_SHADOW_ROOTS = """
const attach = Element.prototype.attachShadow;
Element.prototype.attachShadow = function (init) {
  return attach.call(this, {...init, mode: "open"});
};
"""
# The rendered size of each diagram label: its font size times the scale the SVG is drawn at.
LABEL_SIZES = """
svg => {
  const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
  return [...svg.querySelectorAll(".nodeLabel, .edgeLabel, text")]
    .filter(label => label.textContent.trim())
    .map(label => [label.textContent.trim(), parseFloat(getComputedStyle(label).fontSize) * scale]);
}
"""
# The build machine's paths, tqdm's warning when ipywidgets is missing, and any stderr output
# cell (the attribute on an element; the stylesheet names it too, inside [...]).
LOCAL_PATHS_AND_NOISE = [
    "/.venv",
    "site-packages",
    "/root/",
    "TqdmWarning: IProgress",
    "Please update jupyter and ipywidgets",
    r'data-mime-type="application/vnd\.jupyter\.stderr"[^\]]',
]


def heading(page) -> str:
    """The page's title as shown, without the permalink sign beside it."""
    return page.locator("article h1").first.inner_text().rstrip("¶").strip()


def pages_with_diagrams(root) -> list[str]:
    """The site paths ("/", "/backends/batching/") of the built pages that hold a diagram."""
    folders = [
        p.parent.relative_to(root)
        for p in root.rglob("index.html")
        if 'class="mermaid"' in p.read_text()
    ]
    return sorted("/" if f == Path(".") else f"/{f}/" for f in folders)


def test_home_page_renders_offline(page, site):
    page.goto(site.url + "/", wait_until="load")
    assert page.title().startswith("servebook")
    assert heading(page) == "servebook"
    page.locator(".mermaid").first.wait_for()
    assert page.external_requests == []  # fonts, scripts and diagrams all come from the site


def test_navigation_and_search_find_a_page(page, site):
    page.goto(site.url + "/", wait_until="load")
    page.get_by_role("link", name="Front-end interfaces").first.click()
    page.wait_for_url("**/frontends/")
    assert heading(page) == "Front-end interfaces"

    page.get_by_label("Search").first.click()
    page.get_by_text("Type to start searching").wait_for()  # the index is loaded
    page.get_by_placeholder("Search").press_sequentially("continuous batching")
    first_hit = page.locator(".md-search-result__item a").first
    first_hit.wait_for()
    first_hit.click()
    page.wait_for_load_state("load")
    assert "continuous batching" in page.locator("article").inner_text().lower()


def test_mermaid_diagram_renders_offline(page, site):
    page.add_init_script(OPEN_SHADOW_ROOTS)
    page.goto(site.url + "/", wait_until="load")
    diagram = page.locator(".mermaid svg").first
    diagram.wait_for()
    labels = [text for text, _ in diagram.evaluate(LABEL_SIZES)]
    assert "1 Customer needs" in labels and "Data flywheel" in labels
    assert page.external_requests == []


def test_every_diagram_is_legible(page, site):
    """At 1280 px, every label of every diagram is drawn at 10 px or more."""
    page.add_init_script(OPEN_SHADOW_ROOTS)
    pages = pages_with_diagrams(site.root)
    assert "/" in pages
    too_small = []
    for path in pages:
        page.goto(site.url + path, wait_until="load")
        page.locator(".mermaid svg").first.wait_for()
        for i in range(page.locator(".mermaid svg").count()):
            sizes = page.locator(".mermaid svg").nth(i).evaluate(LABEL_SIZES)
            too_small += [
                f"{path} diagram {i + 1}: {text!r} at {size:.1f} px"
                for text, size in sizes
                if size < 10
            ]
    assert not too_small, "\n".join(dict.fromkeys(too_small))


def test_copy_button_copies_a_snippet(page, site):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url)
    page.goto(site.url + "/gui/", wait_until="load")
    block = page.locator("div.highlight").filter(has_text="def search(").first
    block.hover()
    block.get_by_title("Copy to clipboard").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == block.locator("code").inner_text().strip()
    assert "def search(q: Query)" in copied


@pytest.mark.parametrize("needle", LOCAL_PATHS_AND_NOISE)
def test_pages_show_no_local_paths_or_warnings(site, needle):
    """Executed notebooks must not leak the build machine's paths or stderr noise."""
    pattern = re.compile(needle if needle.startswith("data-") else re.escape(needle))
    hits = [
        str(p.relative_to(site.root))
        for p in site.root.rglob("*")
        if p.suffix in (".html", ".json") and pattern.search(p.read_text(errors="ignore"))
    ]
    assert not hits, f"{needle!r} appears in {hits}"


def test_the_notebook_page_shows_its_measurements(page, site):
    page.goto(site.url + "/visualisation/latency-dashboard/", wait_until="load")
    text = page.locator("article").inner_text()
    assert "torch threads: 2" in text
    assert re.search(r"p50 [\d.]+ ms, p95 [\d.]+ ms", text)
