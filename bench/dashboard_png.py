"""The dashboard's main panels as a PNG, from a real Prometheus: time to first token, tokens/s, replicas over
an autoscale-up, and the router's balance over the replicas. Grafana itself is not installed here; these are
the same queries as the dashboard's panels (hack/observability.py), plotted with matplotlib.

`make demo` writes one from its run to ~/.cache/grok-serve/demo/dashboard.png; the README's picture
(bench/figures/dashboard.png) comes from

    .venv/bin/python hack/demo.py --png bench/figures/dashboard.png
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PANELS = (  # the dashboard's panel titles, in reading order
    "Time to first token",
    "Tokens/s in and out",
    "Replicas: desired, ready, starting",
    "Balance: calls/s per replica",
)


def observability():  # type: ignore[no-untyped-def]
    """hack/observability.py, the dashboard's code."""
    if "observability" not in sys.modules:
        spec = importlib.util.spec_from_file_location("observability", ROOT / "hack" / "observability.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["observability"] = module
        spec.loader.exec_module(module)
    return sys.modules["observability"]


def query_range(url: str, query: str, start: float, end: float, step: float) -> list[dict]:
    address = f"{url}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
    with urllib.request.urlopen(address, timeout=60) as answer:
        return list(json.load(answer)["data"]["result"])


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template).strip()


def render(url: str, namespace: str, deployment: str, start: float, end: float, out: Path,
           window: str = "20s") -> dict[str, int]:
    """Plots the panels over [start, end]; returns the series drawn per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import DateFormatter

    obs = observability()
    panels = {p.title: p for _, row in obs.ROWS for p in row}
    step = max(1.0, (end - start) / 300)
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.4), dpi=80, sharex=True)
    drawn: dict[str, int] = {}
    for ax, title in zip(axes.flat, PANELS, strict=True):
        panel = panels[title]
        drawn[title] = 0
        for expr, template in panel.targets:
            if "{{pod}}" in template and title.startswith("Tokens"):
                continue  # the per-replica split: the totals read better here
            for series in query_range(url, obs.fill(expr, namespace, deployment, window), start, end, step):
                points = [(datetime.fromtimestamp(float(t)), float(v)) for t, v in series["values"]
                          if not math.isnan(float(v))]
                if not points:
                    continue
                xs, ys = zip(*points, strict=True)
                name = legend(template, series["metric"]).replace(f"{deployment}-", "")
                ax.plot(xs, ys, label=name, linewidth=1.4,
                        drawstyle="steps-post" if title.startswith("Replicas") else "default")
                drawn[title] += 1
        ax.set_title(title + {"s": " (s)", "reqps": " (calls/s)"}.get(panel.unit, ""), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
        ax.tick_params(labelsize=8)
    fig.suptitle(f"grok-serve dashboard, main panels: {namespace}/{deployment} (make demo, real Prometheus)",
                 fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return drawn
