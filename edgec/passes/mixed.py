"""Mixed precision: keep the fewest layers in float that bring int8 within an accuracy budget.

1. Score the full int8 model and the fp32 reference on held-out samples.
2. Sensitivity: for each int8 layer alone back in float, how much of int8's output error (MSE of the
   outputs against fp32) disappears. A continuous measure ranks layers far more reliably than a
   few hundred labelled samples can.
3. Prefer layers whose int8 speed-up on the target is small: rank by sensitivity per millisecond
   of int8 gain (measured per layer from the target's own profiles, when given).
4. Greedily return layers to float in that order until the budget metric (labelled accuracy, or
   top-1 agreement with fp32 without labels) is within `max_drop` points of fp32. Layers that do not
   help alone are tried last (the budget may need several together); with every layer in float the
   model is the fp32 one, so a budget is always met in the end.

The result carries the standard error of the final drop on the scoring samples: with a few hundred
samples it is often larger than the budget, and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..accuracy import Evaluation, drop_standard_error
from ..errors import ConfigError
from ..model import Model
from .ptq import Calibrated

_MIN_GAIN_MS = 1e-4


@dataclass
class MixedResult:
    keep_float: list[str]
    met: bool
    fp32_score: float
    int8_score: float
    final_score: float
    metric: str
    standard_error: float = 0.0  # of the final drop, points
    decisions: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0


def search_mixed(calibrated: Calibrated, evaluate: Callable[[Model], Evaluation], fp32: Evaluation,
                 max_drop: float, gains_ms: Mapping[str, float] | None = None, metric: str = "",
                 progress: Callable[[int, int], None] | None = None,
                 rank_evaluate: Callable[[Model], Evaluation] | None = None) -> MixedResult:
    """Greedy search (module docstring); `fp32` is `evaluate`'s score of the fp32 model. The per-layer sensitivity
    pass scores with `rank_evaluate` (default `evaluate`): its output error needs fewer samples than the budget
    check. `progress(done, total)` follows that pass."""
    if max_drop < 0:
        raise ConfigError(f"--max-accuracy-drop must be >= 0 points (got {max_drop}).")
    int8 = evaluate(calibrated.quantized())
    count = 1
    result = MixedResult([], fp32.score - int8.score <= max_drop, fp32.score, int8.score, int8.score, metric,
                         drop_standard_error(fp32.correct, int8.correct))
    if result.met:
        result.evaluations = count
        return result
    gains = dict(gains_ms or {})
    rank = rank_evaluate or evaluate
    int8_error = int8.error
    if rank_evaluate is not None:
        int8_error = rank_evaluate(calibrated.quantized()).error
        count += 1
    ranked = []
    for i, node in enumerate(calibrated.plan.nodes, 1):
        alone = rank(calibrated.quantized([node]))
        count += 1
        if progress is not None:
            progress(i, len(calibrated.plan.nodes))
        recovered = (int8_error - alone.error) / int8_error if int8_error > 0 else 0.0
        gain = gains.get(node)
        priority = recovered / max(gain, _MIN_GAIN_MS) if gain is not None else recovered
        ranked.append((priority, node, recovered, gain))
    ranked.sort(reverse=True)
    keep: list[str] = []
    final = int8
    for priority, node, recovered, gain in ranked:  # layers that do not help alone come last, still tried
        keep.append(node)
        final = evaluate(calibrated.quantized(keep))
        count += 1
        result.decisions.append({
            "node": node, "error_recovered": round(recovered, 4),
            "int8_gain_ms": None if gain is None else round(gain, 5),
            "score_after": round(final.score, 3),
            "reason": (f"alone in float it removes {100 * recovered:.1f}% of int8's output error"
                       + (f", and int8 saves only {gain:.4f} ms on it" if gain is not None else "")) if recovered > 0
                      else "no layer that helps alone was enough: tried next, in order of its own effect",
        })
        if fp32.score - final.score <= max_drop:
            break
    result.keep_float = keep
    result.final_score = final.score
    result.met = fp32.score - final.score <= max_drop
    result.standard_error = drop_standard_error(fp32.correct, final.correct)
    result.evaluations = count
    return result


def layer_times(layers: Sequence[Mapping[str, Any]], nodes: Sequence[str]) -> dict[str, float]:
    """Per-node time (ms) from profile rows: a row's time is split evenly among the given nodes it covers."""
    wanted = set(nodes)
    times: dict[str, float] = {}
    for row in layers:
        covered = [n for n in row["onnx_nodes"] if n in wanted]
        for n in covered:
            times[n] = times.get(n, 0.0) + row["time_ms"] / len(covered)
    return times
