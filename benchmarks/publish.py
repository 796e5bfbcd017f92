"""Write a benchmark's result where the pages read it: JSON and a Markdown table, plus a plot."""

import json
from pathlib import Path


def publish(
    name: str, result: dict, table: str, out_dir: Path, plot=None, plot_path: Path | None = None
) -> None:
    """results/<name>.json holds the figures; results/<name>.md is the table the page includes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(table)
    if plot is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(result, plot_path)
    print(table)
