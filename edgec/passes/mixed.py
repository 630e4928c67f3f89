"""Mixed precision: keep the fewest layers in float that bring int8 within an accuracy budget.

1. Score the full int8 model and the fp32 reference on held-out samples.
2. Sensitivity: for each int8 layer alone back in float, how much of int8's output error (MSE of the
   outputs against fp32) disappears. A continuous measure ranks layers far more reliably than a
   few hundred labelled samples can.
3. Prefer layers whose int8 speed-up on the target is small: rank by sensitivity per millisecond
   of int8 gain (measured per layer from the target's own profiles, when given).
4. Greedily return layers to float in that order until the goal is met: a budget (the primary metric, in
   the user's labels or in agreement with fp32, within `max_drop` points of fp32), or the int8 check's
   floor on every output (the pipeline's int8 guard). Layers that do not help alone are tried last (the
   goal may need several together); with every layer in float the model is the fp32 one, so a goal that
   fp32 meets is always met in the end.

The caller states the standard error of the final drop on the scoring samples (metrics.standard_error_of_drop):
with a few hundred samples it is often larger than the budget, and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..accuracy import Evaluation
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
    final: Evaluation
    decisions: list[dict[str, Any]] = field(default_factory=list)
    evaluations: int = 0
    # every planned node, most useful to keep in float first (the order the greedy search tries them), with the
    # share of int8's output error it removes alone and int8's gain on it (ms, None unmeasured); empty when plain
    # int8 met the goal (no layer was scored)
    ranking: list[dict[str, Any]] = field(default_factory=list)


def budget(fp32: Evaluation, max_drop: float) -> Callable[[Evaluation], bool]:
    """The goal of a mixed build: the primary metric at most `max_drop` points below fp32's."""
    if max_drop < 0:
        raise ConfigError(f"--max-accuracy-drop must be >= 0 points (got {max_drop}).")
    return lambda e: fp32.score - e.score <= max_drop


def search_mixed(calibrated: Calibrated, evaluate: Callable[[Model], Evaluation], fp32: Evaluation,
                 goal: Callable[[Evaluation], bool], gains_ms: Mapping[str, float] | None = None, metric: str = "",
                 progress: Callable[[int, int], None] | None = None,
                 rank_evaluate: Callable[[Model], Evaluation] | None = None,
                 int8: Evaluation | None = None) -> MixedResult:
    """Greedy search (module docstring) until `goal(evaluation)`; `fp32` is `evaluate`'s score of the fp32 model,
    `int8` of the full int8 model when known. The per-layer sensitivity pass scores with `rank_evaluate` (default
    `evaluate`): its output error needs fewer samples than the goal's check. `progress(done, total)` follows
    that pass."""
    count = 0
    if int8 is None:
        int8 = evaluate(calibrated.quantized())
        count += 1
    result = MixedResult([], goal(int8), fp32.score, int8.score, int8.score, metric, int8)
    if result.met:
        result.evaluations = count
        return result
    gains = dict(gains_ms or {})
    rank = rank_evaluate or evaluate
    int8_error = int8.error
    if rank_evaluate is not None:
        int8_error = rank_evaluate(calibrated.quantized()).error
        count += 1
    ranked = _ranked(calibrated, rank, int8_error, gains, progress)
    count += len(ranked)
    result.ranking = [{"node": node, "error_recovered": round(recovered, 4),
                       "int8_gain_ms": None if gain is None else round(gain, 5)}
                      for _, node, recovered, gain in ranked]
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
        if goal(final):
            break
    result.keep_float = keep
    result.final_score = final.score
    result.final = final
    result.met = goal(final)
    result.evaluations = count
    return result


def _ranked(calibrated: Calibrated, rank: Callable[[Model], Evaluation], int8_error: float,
            gains: Mapping[str, float], progress: Callable[[int, int], None] | None) -> list[tuple]:
    """(priority, node, error recovered, int8 gain ms or None) for every planned node, scored alone in float with
    `rank`, highest priority first."""
    ranked = []
    for i, node in enumerate(calibrated.plan.nodes, 1):
        alone = rank(calibrated.quantized([node]))
        if progress is not None:
            progress(i, len(calibrated.plan.nodes))
        recovered = (int8_error - alone.error) / int8_error if int8_error > 0 else 0.0
        gain = gains.get(node)
        priority = recovered / max(gain, _MIN_GAIN_MS) if gain is not None else recovered
        ranked.append((priority, node, recovered, gain))
    ranked.sort(reverse=True)
    return ranked


def layer_times(layers: Sequence[Mapping[str, Any]], nodes: Sequence[str]) -> dict[str, float]:
    """Per-node time (ms) from profile rows: a row's time is split evenly among the given nodes it covers."""
    wanted = set(nodes)
    times: dict[str, float] = {}
    for row in layers:
        covered = [n for n in row["onnx_nodes"] if n in wanted]
        for n in covered:
            times[n] = times.get(n, 0.0) + row["time_ms"] / len(covered)
    return times
