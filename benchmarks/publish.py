"""Write a benchmark's result where the pages read it: JSON and a Markdown table, plus a plot."""

import json
from pathlib import Path

from provenance import changes_since


def publish(
    name: str, result: dict, table: str, out_dir: Path, plot=None, plot_path: Path | None = None
) -> None:
    """results/<name>.json holds the figures; results/<name>.md is the table the page includes.

    `result["provenance"]` is the block provenance.provenance() returned when the run started; a
    measured file or package that changed while it ran is listed under `changed_during_run`."""
    if "provenance" not in result:
        raise ValueError(f"{name}: result has no provenance; call provenance() at the start")
    result["provenance"]["changed_during_run"] = changes_since(result["provenance"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(table)
    if plot is not None:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(result, plot_path)
    print(table)
