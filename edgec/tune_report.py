"""What `edgec tune` writes into OUT: tune.json (every trial), pareto.png (latency vs accuracy drop, the front
highlighted, each front point labelled with its configuration) and report.html (the chart and the trials)."""
from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any, Mapping

from .fileio import write_bytes_atomic, write_json_atomic, write_text_atomic


def write_results(out: Path, summary: Mapping[str, Any]) -> None:
    """tune.json, pareto.png (where matplotlib is installed) and report.html into `out`, each atomically."""
    write_json_atomic(out / "tune.json", summary)
    png = pareto_png(summary)
    if png is not None:
        write_bytes_atomic(out / "pareto.png", png)
    write_text_atomic(out / "report.html", render(summary, png))


def pareto_png(summary: Mapping[str, Any]) -> bytes | None:
    """The chart as PNG bytes: every finished trial, the Pareto front joined and labelled, the budget line,
    the recommended build ringed; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    front = sorted((t for t in done if t["number"] in set(summary["front"])),
                   key=lambda t: t["objectives"]["latency_ms"])
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    ax.scatter([t["objectives"]["latency_ms"] for t in done], [t["objectives"]["drop_points"] for t in done],
               c="#b0b0b0", s=22, label="trials")
    ax.plot([t["objectives"]["latency_ms"] for t in front], [t["objectives"]["drop_points"] for t in front], "o-",
            c="#1f77b4", ms=6, label="Pareto front (latency, drop, size)")
    for i, t in enumerate(front):  # neighbours on the front alternate above and below: close points stay legible
        ax.annotate(f"#{t['number']} {t['label']}", (t["objectives"]["latency_ms"], t["objectives"]["drop_points"]),
                    fontsize=7, xytext=(4, 6 if i % 2 == 0 else -12), textcoords="offset points")
    best = summary.get("recommended")
    if best:
        ax.scatter([best["objectives"]["latency_ms"]], [best["objectives"]["drop_points"]], s=160,
                   facecolors="none", edgecolors="#d62728", linewidths=2, label="recommended")
    ax.axhline(summary["budget_points"], color="#d62728", ls="--", lw=1, label=f"budget {summary['budget_points']:g}")
    emulated = " (emulated board: not the board's latency)" if summary.get("latency_note") else ""
    ax.set_xlabel("latency p50 (ms) on " + str(summary["target"]) + emulated)
    ax.set_ylabel("accuracy drop vs fp32 (points)")
    ax.set_title(f"edgec tune: {summary['study']} ({len(done)} trials)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def render(summary: Mapping[str, Any], png: bytes | None) -> str:
    """report.html: the recommendation and its command, the chart, every trial (no JavaScript)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>edgec tune</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{padding:2px 8px;"
             "border-bottom:1px solid #ddd;text-align:left}.front{font-weight:bold}</style></head><body>",
             f"<h1>edgec tune: {escape(str(summary['study']))} on {escape(str(summary['target']))}</h1>"]
    best = summary.get("recommended")
    if best:
        parts.append(f"<p>Recommended (fastest within {summary['budget_points']:g} points): trial #{best['number']} "
                     f"<b>{escape(str(best['label']))}</b>, {best['objectives']['latency_ms']:.3f} ms, drop "
                     f"{best['objectives']['drop_points']:.2f} points.</p><pre>{escape(best['command'])}</pre>")
    else:
        parts.append(f"<p><b>No configuration met the budget of {summary['budget_points']:g} points.</b></p>")
    if summary.get("latency_note"):
        parts.append(f"<p><b>Note:</b> {escape(str(summary['latency_note']))}.</p>")
    space = summary.get("space") or {}
    if space.get("pruning_absent"):
        parts.append(f"<p>Structured pruning was not searched: {escape(str(space['pruning_absent']))}.</p>")
    if png is not None:
        parts.append(f"<img alt='Pareto front' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append(_trials_table(summary))
    parts.append("</body></html>")
    return "\n".join(parts)


def _trials_table(summary: Mapping[str, Any]) -> str:
    front = set(summary["front"])
    rows = ["<table><tr><th>#</th><th>state</th><th>configuration</th><th>latency p50 ms</th><th>drop points</th>"
            "<th>artifact MB</th><th>cache</th><th>note</th></tr>"]
    for t in summary["trials"]:
        o = t["objectives"] or {}
        cells = [str(t["number"]), t["state"], str(t["label"] or ""),
                 f"{o['latency_ms']:.3f}" if o else "", f"{o['drop_points']:.2f}" if o else "",
                 f"{o['artifact_bytes'] / 1e6:.2f}" if o else "", "hit" if t["cache_hit"] else "", _note(t)]
        cls = " class='front'" if t["number"] in front else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(rows) + "</table>"


def _note(trial: Mapping[str, Any]) -> str:
    """Why a trial has no result, or what its pruning cost alone."""
    if trial.get("duplicate_of") is not None:
        return f"duplicate of #{trial['duplicate_of']}"
    if trial.get("hopeless") or trial.get("error"):
        return str(trial.get("hopeless") or trial.get("error"))
    pruning = trial.get("pruning")
    return f"pruning alone: {pruning['drop_points']:.2f} points" if pruning else ""
