"""Profile: latency statistics and per-layer rows mapped back to ONNX nodes and PyTorch modules.

Schema `edgec.profile/1`. A row whose source is unknown says null; it never guesses.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .model import NodeSource

SCHEMA = "edgec.profile/1"


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds over timed runs (after warm-up)."""

    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    std: float

    @classmethod
    def from_samples(cls, ms: Sequence[float]) -> "LatencyStats":
        import numpy as np

        a = np.asarray(ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("no latency samples")
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(*(round(float(v), 4) for v in (a.mean(), p50, p90, p99, a.min(), a.max(), a.std())))


@dataclass(frozen=True)
class LayerRow:
    """One backend layer (a fused kernel may cover several ONNX nodes)."""

    layer: str
    op: str
    exec: str
    precision: str
    time_ms: float
    share: float
    onnx_nodes: tuple[str, ...] = ()
    module: str | None = None
    where: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["onnx_nodes"] = list(self.onnx_nodes)
        return d


@dataclass
class Profile:
    backend: str
    device: str
    target: str
    precision: str
    batch: int
    runs: int
    warmup: int
    latency_ms: LatencyStats
    layers: list[LayerRow] = field(default_factory=list)
    memory: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        """Inferences per second at this batch size, from the median latency."""
        return round(1000.0 * self.batch / self.latency_ms.p50, 2) if self.latency_ms.p50 > 0 else 0.0

    def mapped_share(self, attr: str = "onnx_nodes") -> float:
        """Fraction of layer time whose rows have `attr` (onnx_nodes or module) set."""
        total = sum(r.time_ms for r in self.layers)
        if total <= 0:
            return 0.0
        mapped = (lambda r: r.module is not None) if attr == "module" else (lambda r: bool(getattr(r, attr)))
        return sum(r.time_ms for r in self.layers if mapped(r)) / total  # module "" is the top-level module

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "backend": self.backend, "device": self.device, "target": self.target,
            "precision": self.precision, "batch": self.batch, "runs": self.runs, "warmup": self.warmup,
            "latency_ms": asdict(self.latency_ms), "throughput": self.throughput, "memory": self.memory,
            "mapped": {"onnx_nodes": round(self.mapped_share("onnx_nodes"), 4),
                       "module": round(self.mapped_share("module"), 4)},
            **self.extra,
            "layers": [r.to_json() for r in self.layers],
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Profile":
        known = {"schema", "backend", "device", "target", "precision", "batch", "runs", "warmup", "latency_ms",
                 "throughput", "memory", "mapped", "layers"}
        return cls(backend=d["backend"], device=d["device"], target=d["target"], precision=d["precision"],
                   batch=d["batch"], runs=d["runs"], warmup=d["warmup"], latency_ms=LatencyStats(**d["latency_ms"]),
                   layers=[LayerRow(**{**r, "onnx_nodes": tuple(r["onnx_nodes"])}) for r in d["layers"]],
                   memory=dict(d.get("memory", {})), extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        return cls.from_json(json.loads(Path(path).read_text()))

    def table(self, limit: int = 20) -> str:
        """A plain-text table of the slowest layers, then totals."""
        lat = self.latency_ms
        lines = [f"{self.backend} on {self.device} | target {self.target} | {self.precision} | batch {self.batch}",
                 f"latency p50 {lat.p50:.3f} ms  p90 {lat.p90:.3f}  p99 {lat.p99:.3f}  mean {lat.mean:.3f} "
                 f"(n={self.runs}, warm-up {self.warmup})  throughput {self.throughput:.1f}/s", ""]
        rows = sorted(self.layers, key=lambda r: r.time_ms, reverse=True)
        header = ("time ms", "share", "prec", "op", "PyTorch module", "source", "layer")
        body = [(f"{r.time_ms:.4f}", f"{100 * r.share:5.1f}%", r.precision, r.op,
                 _module_label(r.module), _short_where(r.where), r.layer) for r in rows[:limit]]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
        widths[-1] = len(header[-1])
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines.append(fmt.format(*header))
        lines.extend(fmt.format(*b) for b in body)
        if len(rows) > limit:
            rest = rows[limit:]
            lines.append(f"... {len(rest)} more layers, {100 * sum(r.share for r in rest):.1f}% of layer time")
        lines.append(f"layer time mapped to ONNX nodes: {100 * self.mapped_share():.1f}%, "
                     f"to PyTorch modules: {100 * self.mapped_share('module'):.1f}%")
        return "\n".join(lines)


def _module_label(module: str | None) -> str:
    if module is None:
        return "-"
    return module or "(top-level)"


def _short_where(where: str | None) -> str:
    if not where:
        return "-"
    file, _, line = where.rpartition(":")
    return f"{Path(file).name}:{line}"


def attach_sources(rows: Iterable[LayerRow], sources: Mapping[str, NodeSource]) -> list[LayerRow]:
    """Resolve each row's names (ONNX node or output names) to ONNX nodes, then to module and line.

    Names that match no ONNX node (ops the backend made up) are dropped; `module`/`where` come from the
    first node that has them.
    """
    out = []
    for row in rows:
        found = list({sources[n].node: sources[n] for n in row.onnx_nodes if n in sources}.values())
        module = next((s.module for s in found if s.module is not None), None)
        where = next((s.where for s in found if s.where), None)
        out.append(LayerRow(**{**asdict(row), "onnx_nodes": tuple(s.node for s in found), "module": module,
                               "where": where}))
    return out


def with_shares(rows: Sequence[LayerRow]) -> list[LayerRow]:
    total = sum(r.time_ms for r in rows) or 1.0
    return [LayerRow(**{**asdict(r), "onnx_nodes": r.onnx_nodes, "share": round(r.time_ms / total, 5)}) for r in rows]


def not_faster(candidate: Mapping[str, Any], baseline: Mapping[str, Any]) -> bool:
    """The one "not faster" rule, on latency dicts with `p50` and (optionally) `min` in ms.

    Builds profiled one after the other on a shared machine can meet a burst of load that doubles one
    median, so a candidate counts as not faster only when neither its median nor its fastest run beats
    the baseline's."""
    return not any(candidate.get(k) and baseline.get(k) and candidate[k] < baseline[k] for k in ("p50", "min"))


def batch_size(manifest: Mapping[str, Any]) -> int:
    """The leading dim of the first input of a build (1 for a model without inputs)."""
    return int(manifest["inputs"][0]["shape"][0]) if manifest["inputs"] else 1
