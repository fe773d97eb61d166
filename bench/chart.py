"""docs/benchmarks.png: the HTTP accept, latency and cost figures in one chart (for the README).

    python -m bench.chart

Reads what `bench.http.run`, `bench.latency` and `bench.cost` saved in docs/benchmarks-data/
(each panel is drawn only if its data is there); `python -m bench.run` redraws it after them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench import ROOT

__all__ = ["CHART", "write_chart"]

DATA = ROOT / "docs" / "benchmarks-data"
CHART = ROOT / "docs" / "benchmarks.png"
_SPILLWAY = "#1f6feb"
_OTHER = "#8b949e"
_CEILING = "#d0d7de"


def _load(name: str) -> Any:
    path = DATA / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _short(label: str) -> str:
    """A bar label from a table label."""
    if label.startswith("seed design, 1"):
        return "seed design\n1 process"
    if label.startswith("seed design"):
        return "seed design\n2 processes"
    if "POST /tasks" in label:
        return "Spillway\nPOST /tasks"
    if "POST /process" in label:
        return "Spillway\nPOST /process"
    return "no-work\nceiling"


def write_chart(path: Path = CHART) -> Path | None:
    """Draw the chart from the saved data; None if there is none yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http, latency, cost = _load("http"), _load("latency"), _load("cost")
    panels = [p for p in (http, latency, cost) if p]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    it = iter(axes[0])
    if http:
        _http_panel(next(it), http)
    if latency:
        _latency_panel(next(it), latency)
    if cost:
        _cost_panel(next(it), cost)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _http_panel(ax: Any, http: dict[str, dict[str, dict[str, float]]]) -> None:
    connections = "64" if "64" in http else next(iter(http))
    rows = http[connections]
    labels = [_short(label) for label in rows]
    values = [r["rps"] for r in rows.values()]
    ratios = [r["vs_seed"] for r in rows.values()]  # within each run, then the median
    colours = [
        _SPILLWAY if "Spillway" in lbl else _CEILING if "ceiling" in lbl else _OTHER
        for lbl in labels
    ]
    bars = ax.bar(labels, values, color=colours)
    for bar, value, ratio in zip(bars, values, ratios, strict=True):
        ax.annotate(
            f"{value:,.0f}\n{ratio:.1f}x",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_title(f"HTTP accept, wrk {connections} connections")
    ax.set_ylabel("requests/s (202 once durable)")
    ax.set_ylim(0, max(values) * 1.25)
    ax.tick_params(axis="x", labelsize=8)


def _latency_panel(ax: Any, latency: dict[str, dict[str, float]]) -> None:
    rates = list(latency)
    x = range(len(rates))
    p50 = [latency[r]["done_p50_ms"] for r in rates]
    p99 = [latency[r]["done_p99_ms"] for r in rates]
    ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color=_OTHER)
    ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color=_SPILLWAY)
    for i, (a, b) in enumerate(zip(p50, p99, strict=True)):
        ax.annotate(f"{a:.1f}", (i - 0.2, a), ha="center", va="bottom", fontsize=8)
        ax.annotate(f"{b:.1f}", (i + 0.2, b), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x), [f"{int(r):,} tasks/s" for r in rates])
    ax.set_yscale("log")
    ax.set_title("Accept-to-done latency (HTTP in, result stored)")
    ax.set_ylabel("ms (log scale)")
    ax.legend(fontsize=8)


def _cost_panel(ax: Any, cost: dict[str, Any]) -> None:
    rates = list(cost["cpu"])
    parts = ("api", "worker", "redis")
    colours = (_SPILLWAY, "#54aeff", _OTHER)
    bottom = [0.0] * len(rates)
    for part, colour in zip(parts, colours, strict=True):
        values = [cost["cpu"][r][part] for r in rates]
        ax.bar([f"{int(r):,} tasks/s" for r in rates], values, bottom=bottom, label=part,
               color=colour)  # fmt: skip
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    mem = cost["memory"]
    ax.set_title(
        f"CPU per 10,000 tasks; Redis {mem['queued_bytes']:,.0f} B/queued task", fontsize=10
    )
    ax.set_ylabel("CPU seconds")
    ax.legend(fontsize=8)


def main() -> int:
    path = write_chart()
    print(f"wrote {path}" if path else f"no data in {DATA}: run the benchmarks first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
