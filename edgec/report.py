"""What a build folder says about itself: manifest.json (what was built, from what, how), report.json (accuracy,
profile, comparisons) and report.html, what a person reads (bar charts by layer and module; no JavaScript)."""
from __future__ import annotations

import platform
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._version import __version__
from .backends import Artifact
from .fileio import write_json_atomic, write_text_atomic
from .model import Model, file_sha256
from .target import Target

MANIFEST_SCHEMA = "edgec.manifest/1"
REPORT_SCHEMA = "edgec.report/1"


def new_manifest(source: Model, model: Model, target: Target, precision: str, sdk: Mapping[str, str],
                 passes: Sequence[Mapping[str, Any]], artifact: Artifact) -> dict[str, Any]:
    """The manifest of `model` (built from `source` by `passes`) as `artifact`; its file list comes at `write_build_files`."""
    return {
        "schema": MANIFEST_SCHEMA, "edgec": __version__, "sdk": dict(sdk),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "target": target.to_json(), "precision": precision,
        "input": {k: v for k, v in source.provenance.items() if k != "notes"},
        "notes": model.provenance.get("notes", source.provenance.get("notes", [])),
        "passes": list(passes),
        "quantization": model.provenance.get("quantization"),
        "dynamic_shapes": model.provenance.get("dynamic_shapes"),
        "sparsity": model.provenance.get("sparsity"),
        "inputs": [s.to_json() for s in model.inputs], "input_values": model.provenance.get("input_values"),
        "outputs": [s.to_json() for s in model.outputs],
        "artifact": {"backend": artifact.backend, "files": artifact.files, "config": artifact.config,
                     "layer_map": artifact.layer_map},
    }


def new_report(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """An empty report for the build `manifest` describes: accuracy and profile are filled by the checks."""
    return {"schema": REPORT_SCHEMA, "model": manifest["input"], "target": manifest["target"]["name"],
            "precision": manifest["precision"], "accuracy": None, "profile": None}


def write_build_files(folder: Path, manifest: dict[str, Any], report: dict[str, Any], timings: Mapping[str, float]) -> None:
    """Sizes and timings into `report`; report.json, report.html, then manifest.json with every file's sha256
    (last: its presence marks a whole build)."""
    report["size"] = {f: (folder / f).stat().st_size for f in ["model.onnx", *manifest["artifact"]["files"]]}
    report["timings_s"] = dict(timings)
    write_json_atomic(folder / "report.json", report)
    write_text_atomic(folder / "report.html", render_html(report, manifest))
    manifest["files"] = [{"path": p.name, "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                         for p in sorted(folder.iterdir()) if p.is_file()]
    write_json_atomic(folder / "manifest.json", manifest)

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}td,th{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#4a7fd6;height:12px;display:inline-block;vertical-align:middle}
.ok{color:#137333}.bad{color:#c5221f;font-weight:bold}code{font-size:12px;color:#555}
.kv td:first-child{color:#666;width:16em}
"""


def render_html(report: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    target = manifest["target"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgec report: {escape(target['name'])}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>edgec: {escape(str(report['model'].get('source')))} &rarr; {escape(target['name'])} "
             f"({escape(report['precision'])})</h1>", _warnings(report.get("warnings") or []),
             _summary(report, manifest), _accuracy(report.get("accuracy")), _comparison(report.get("comparison")),
             _guard(report.get("int8_guard")), _mixed(report.get("mixed_precision"))]
    prof = report.get("profile")
    if prof:
        parts += [_modules(prof), _layers(prof)]
    else:
        parts.append("<h2>Profile</h2><p>Not profiled on this machine: run <code>edgec profile OUT</code> on the "
                     "device.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _warnings(warnings: list[str]) -> str:
    return "".join(f"<p class='bad'>Warning: {escape(w)}</p>" for w in warnings)


def _comparison(comparison: Mapping[str, Any] | None) -> str:
    if not comparison:
        return ""
    fp32 = comparison.get("fp32", {}).get("latency_ms_p50")
    rows = []
    for name, v in comparison.items():
        acc = v["accuracy"]
        lab = acc.get("labelled")
        agreement = acc.get("agreement") or {}
        score = (f"{escape(lab['metric'])} {lab['value']:.2f}" if lab else
                 f"{escape(str(acc.get('metric')))} {next(iter(agreement.values())):.2f} agreement" if agreement else "-")
        lat = v.get("latency_ms_p50")
        ratio = f"{lat / fp32:.2f}x" if lat and fp32 else "-"
        rows.append(f"<tr><td>{escape(name)}</td><td class='num'>{score}</td>"
                    f"<td class='num'>{lat:.3f}</td><td class='num'>{ratio}</td>"
                    f"<td class='num'>{v['artifact_bytes'] / 1e6:.2f} MB</td></tr>")
    return ("<h2>fp32 vs int8 vs mixed</h2><table><tr><th>build</th><th>accuracy</th><th>p50 ms</th>"
            "<th>vs fp32</th><th>artifact</th></tr>" + "".join(rows) + "</table>")


def _mixed(mixed: Mapping[str, Any] | None) -> str:
    if not mixed:
        return ""
    head = (f"<h2>Mixed precision</h2><p>Budget {mixed['budget_points']} points of {escape(mixed['metric'])} on "
            f"{escape(mixed['search_data'])}: fp32 {mixed['fp32']:.2f}, all-int8 {mixed['int8']:.2f}, "
            f"mixed {mixed['mixed']:.2f} &mdash; <span class='{'ok' if mixed['met'] else 'bad'}'>"
            f"{'met' if mixed['met'] else 'NOT met'}</span> (these samples measure the drop to "
            f"&plusmn;{mixed.get('standard_error_points', 0):.2f} points, one standard error). "
            f"{mixed['int8_layers']} layers run int8; these stay "
            f"in float:</p>")
    rows = "".join(f"<tr><td><code>{escape(d['node'])}</code></td>"
                   f"<td><code>{escape(d.get('module') or '-')}</code></td><td>{escape(d['reason'])}</td>"
                   f"<td class='num'>{d['score_after']:.2f}</td></tr>" for d in mixed["float_layers"])
    return head + ("<table><tr><th>layer</th><th>PyTorch module</th><th>why</th><th>score after</th></tr>" + rows
                   + "</table>"
                   if rows else "<p>(none)</p>")


def _kv(rows: list[tuple[str, str]]) -> str:
    return "<table class='kv'>" + "".join(f"<tr><td>{escape(k)}</td><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _summary(report: Mapping[str, Any], manifest: Mapping[str, Any]) -> str:
    t = manifest["target"]
    rows = [("target", f"{escape(t['name'])} &mdash; {escape(t.get('description', ''))}"),
            ("backend", escape(t["backend"])), ("precision", escape(manifest["precision"])),
            ("inputs", escape(", ".join(f"{i['name']} {i['dtype']}[{'x'.join(map(str, i['shape']))}]"
                                        for i in manifest["inputs"]))),
            ("SDK versions", escape(", ".join(f"{k} {v}" for k, v in manifest["sdk"].items()))),
            ("files", escape(", ".join(f"{f} ({n / 1e6:.2f} MB)" for f, n in report.get("size", {}).items())))]
    prof = report.get("profile")
    if prof:
        lat = prof["latency_ms"]
        rows.insert(3, ("latency", f"<b>p50 {lat['p50']:.3f} ms</b>, p90 {lat['p90']:.3f}, p99 {lat['p99']:.3f} "
                                   f"(n={prof['runs']}), {prof['throughput']:.1f} inferences/s on "
                                   f"{escape(prof['device'])}"))
    for note in manifest.get("notes", []):
        rows.append(("note", escape(note)))
    return "<h2>Summary</h2>" + _kv(rows)


def _guard(guard: Mapping[str, Any] | None) -> str:
    if not guard:
        return ""
    rows = "".join(f"<tr><td><code>{escape(d['node'])}</code></td><td><code>{escape(d.get('module') or '-')}</code>"
                   f"</td><td>{escape(d['reason'])}</td></tr>" for d in guard["float_layers"])
    return (f"<h2>Layers int8 breaks</h2><p>All-int8 fell below {guard['floor_points']:g} points of agreement with "
            f"fp32 on {escape(', '.join(guard['broken_outputs']))}; these layers stay in float (ranked by measured "
            f"sensitivity, fewest that bring every output back):</p><table><tr><th>layer</th><th>PyTorch module</th>"
            f"<th>why</th></tr>{rows}</table>")


def _accuracy(acc: Mapping[str, Any] | None) -> str:
    if not acc:
        return ""
    if "skipped" in acc:
        return f"<h2>Accuracy</h2><p>{escape(acc['skipped'])}</p>"
    rows = [("data", escape(acc.get("data", ""))),
            ("cosine vs fp32 (mean / min)", f"{acc['cosine_mean']:.6f} / {acc['cosine_min']:.6f}"),
            ("max abs error", f"{acc['max_abs_error']:.3g}"), ("relative L2 error", f"{acc['rel_l2_error']:.3g}")]
    if "labelled" in acc:
        lab = acc["labelled"]
        rows.append((f"{escape(lab['metric'])} against the labels",
                     f"{lab['value']:.2f} (fp32 reference {lab['reference']:.2f}, drop {lab['drop_points']:.2f} "
                     f"&plusmn; {lab['standard_error_points']:.2f} points)"))
    if "ok" in acc:
        cls, word = ("ok", "pass") if acc["ok"] else ("bad", "FAIL")
        rows.append(("check", f"<span class='{cls}'>{word}</span>: {escape(acc['criterion'])}"))
    return "<h2>Accuracy</h2>" + _kv(rows) + _outputs(acc.get("outputs") or [])


def _outputs(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every output in its metric: points of agreement with fp32, and why that metric."""
    body = "".join(f"<tr><td><code>{escape(r['name'])}</code></td><td>{escape(r['metric'])}</td>"
                   f"<td class='num'>{r['agreement']:.2f}</td><td class='num'>{r['cosine_mean']:.6f}</td>"
                   f"<td class='num'>{r['max_abs_error']:.3g}</td><td>{escape(r['why'])}</td></tr>" for r in rows)
    return ("<table><tr><th>output</th><th>metric</th><th>agreement (points)</th><th>cosine</th><th>max abs</th>"
            "<th>why this metric</th></tr>" + body + "</table>") if rows else ""


def _bar(share: float) -> str:
    return f"<span class='bar' style='width:{max(1, round(300 * share))}px'></span> {100 * share:.1f}%"


def _modules(prof: Mapping[str, Any]) -> str:
    by_module: dict[str, float] = {}
    for row in prof["layers"]:
        key = row["module"] if row["module"] is not None else "(unmapped)"
        by_module[key or "(top-level)"] = by_module.get(key or "(top-level)", 0.0) + row["share"]
    rows = "".join(f"<tr><td><code>{escape(m)}</code></td><td>{_bar(s)}</td></tr>"
                   for m, s in sorted(by_module.items(), key=lambda kv: -kv[1]))
    mapped = prof.get("mapped", {})
    return (f"<h2>Where the time goes, by PyTorch module</h2><p>{100 * mapped.get('module', 0):.1f}% of layer time "
            f"maps to a module, {100 * mapped.get('onnx_nodes', 0):.1f}% to ONNX nodes.</p>"
            f"<table><tr><th>module</th><th>share of layer time</th></tr>{rows}</table>")


def _layers(prof: Mapping[str, Any]) -> str:
    rows = []
    for r in sorted(prof["layers"], key=lambda r: -r["time_ms"]):
        where = escape(f"{Path(r['where'].rpartition(':')[0]).name}:{r['where'].rpartition(':')[2]}") if r["where"] else "-"
        rows.append(f"<tr><td><code>{escape(r['layer'])}</code></td><td>{escape(r['op'])}</td>"
                    f"<td><code>{escape(r['exec'])}</code></td><td>{escape(r['precision'])}</td>"
                    f"<td class='num'>{r['time_ms']:.4f}</td><td>{_bar(r['share'])}</td>"
                    f"<td><code>{escape(r['module'] if r['module'] is not None else '-')}</code></td>"
                    f"<td><code title='{escape(r['where'] or '')}'>{where}</code></td>"
                    f"<td><code>{escape(', '.join(r['onnx_nodes']))}</code></td></tr>")
    return ("<h2>Per-layer profile</h2><table><tr><th>layer</th><th>op</th><th>kernel</th><th>precision</th>"
            "<th>ms</th><th>share</th><th>PyTorch module</th><th>source</th><th>ONNX nodes</th></tr>"
            + "".join(rows) + "</table>")
