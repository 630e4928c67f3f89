"""Structured channel pruning of PyTorch models, with recovery by fine-tuning or distillation.

    result = edgec.prune(model, ratio=0.3, example_inputs=(x,), target="intel-cpu", data=(images, labels),
                         epochs=2)
    result.model            # the pruned nn.Module (a new object; the input model is not touched)
    result.report           # params, MACs, fp32 weight bytes, accuracy before/after recovery, latency
                            # before/after on the target (and on each of `measure_on`)

Dependencies across residual adds, concats and depthwise convolutions are tracked by torch-pruning's
dependency graph (a maintained library; edgec chooses importance, rounding, kept layers and recovery).
Channel counts are rounded to the target's `[prune] round_to`: odd counts can make a pruned model slower.
"""
from __future__ import annotations

import copy
import fnmatch
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .backends import get_backend
from .errors import BackendUnavailable, ConfigError, brief
from .isolation import isolated
from .pipeline import compile as edgec_compile
from .profile import not_faster
from .progress import Steps
from .target import load_target

IMPORTANCE = ("l1", "l2", "taylor")


@dataclass
class PruneResult:
    model: Any
    report: dict[str, Any] = field(default_factory=dict)


@isolated
def prune(model: Any, ratio: float, example_inputs: Sequence[Any], *, target: str | None = None,
          round_to: int | None = None, importance: str = "l2", keep: Sequence[str] = (),
          data: Any = None, epochs: int = 0, finetune: Callable[[Any], Any] | None = None,
          lr: float = 1e-3, temperature: float = 4.0, batch_size: int = 64, measure: bool = True,
          measure_on: Sequence[str] = (), progress: bool = True) -> PruneResult:
    """Remove `ratio` of the channels of every prunable layer (except `keep` and the output layer).

    `data`: (inputs, labels) tensors or (inputs,) for distillation without labels; used by the Taylor
    importance and by the default recovery, knowledge distillation from the unpruned model for `epochs`.
    `finetune(model)` replaces the default recovery. With a `target` whose backend runs here, dense and
    pruned latency are measured; a pruned model that is not faster is refused. `measure_on` names more
    targets to measure on (report["latency_ms_by_target"]); being slower there is reported, not refused.
    """
    try:
        import torch_pruning as tp
    except ImportError as e:
        raise BackendUnavailable("Pruning needs PyTorch and torch-pruning: pip install 'edgec[prune]'") from e
    if not 0 < ratio < 1:
        raise ConfigError(f"Pruning ratio must be between 0 and 1 (got {ratio}).")
    if importance not in IMPORTANCE:
        raise ConfigError(f"Unknown importance '{importance}'; choose from {', '.join(IMPORTANCE)}.")

    tgt = load_target(target) if target else None
    others = [load_target(t) for t in measure_on]  # unknown names fail here, before any work
    round_to = round_to or (tgt.round_to if tgt else 1)
    example = tuple(example_inputs) if isinstance(example_inputs, (list, tuple)) else (example_inputs,)
    teacher = model.eval()
    log = Steps(progress).note
    student, report = _prune_channels(tp, teacher, ratio, example, importance, keep, round_to, data, batch_size, log)
    report["target"] = tgt.name if tgt else None
    student = _recover(student, teacher, report, data, epochs, finetune, lr, temperature, batch_size, log)
    if measure:
        _check_latency(teacher, student, example, tgt, others, report, log)
    return PruneResult(student, report)


def _prune_channels(tp: Any, teacher: Any, ratio: float, example: tuple, importance: str, keep: Sequence[str],
                    round_to: int, data: Any, batch_size: int, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """A pruned copy of `teacher` and the report's size entries (params, MACs, weight bytes, channels)."""
    student = copy.deepcopy(teacher).eval()
    kept = _kept_modules(student, keep, example)
    macs0, params0 = tp.utils.count_ops_and_params(student, example)
    weights0 = _weight_bytes(student)
    imp = (tp.importance.GroupTaylorImportance() if importance == "taylor"
           else tp.importance.GroupMagnitudeImportance(p=1 if importance == "l1" else 2))
    try:
        pruner = tp.pruner.MetaPruner(student, example, importance=imp, pruning_ratio=ratio,
                                      ignored_layers=[m for _, m in kept], round_to=round_to if round_to > 1 else None)
        if importance == "taylor":
            _taylor_gradients(student, teacher, data, batch_size)
        pruner.step()
    except Exception as e:
        raise ConfigError(f"torch-pruning could not prune {type(teacher).__name__}: {brief(e)}. Keep the layers it "
                          "names with keep=[...].") from e
    student.zero_grad(set_to_none=True)
    macs1, params1 = tp.utils.count_ops_and_params(student, example)
    log(f"pruned {100 * ratio:.0f}% of channels (round_to={round_to}): params {params0:,} -> {params1:,}, "
        f"MACs {macs0:,.0f} -> {macs1:,.0f}")
    return student, {
        "ratio": ratio, "importance": importance, "round_to": round_to, "kept": [n for n, _ in kept],
        "params": [int(params0), int(params1)], "macs": [int(macs0), int(macs1)],
        "weights_bytes": [weights0, _weight_bytes(student)], "channels": _channel_counts(student)}


def _recover(student: Any, teacher: Any, report: dict[str, Any], data: Any, epochs: int,
             finetune: Callable[[Any], Any] | None, lr: float, temperature: float, batch_size: int,
             log: Callable[[str], None]) -> Any:
    """Recovery training (the user's `finetune`, or distillation from the dense model); accuracies in `report`."""
    inputs, labels = _split(data)
    if labels is not None:
        report["accuracy_dense"] = _accuracy(teacher, inputs, labels, batch_size)
        report["accuracy_pruned"] = _accuracy(student, inputs, labels, batch_size)
    if finetune is not None:
        student = finetune(student) or student
        report["recovery"] = "finetune callable"
    elif inputs is not None and epochs > 0:
        _distill(student, teacher, inputs, labels, epochs, lr, temperature, batch_size, log)
        report["recovery"] = f"distillation from the dense model, {epochs} epochs, T={temperature}"
    if labels is not None and report.get("recovery"):
        report["accuracy_recovered"] = _accuracy(student, inputs, labels, batch_size)
    return student.eval()


def _check_latency(teacher: Any, student: Any, example: tuple, tgt: Any, others: Sequence[Any],
                   report: dict[str, Any], log: Callable[[str], None]) -> None:
    """Dense vs pruned latency on `tgt` (not faster there: refused) and on `others` (not faster: a warning)."""
    if tgt is not None:
        report["latency_ms"] = _measure(teacher, student, example, tgt, log)
        dense, pruned = report["latency_ms"]["dense"], report["latency_ms"]["pruned"]
        if _pruned_not_faster(report["latency_ms"]):
            raise ConfigError(f"The {100 * report['ratio']:.0f}%-pruned model is not faster on {tgt.name} "
                              f"({pruned:.3f} ms vs dense {dense:.3f} ms): edgec does not emit it. Try round_to="
                              f"{max(8, 2 * report['round_to'])} or a larger ratio.")
    if not others and tgt is None:
        return
    by_target = {tgt.name: report["latency_ms"]} if tgt is not None else {}
    for other in others:
        if other.name not in by_target:
            by_target[other.name] = _measure(teacher, student, example, other, log)
    report["latency_ms_by_target"] = by_target
    report["warnings"] = [f"the pruned model is not faster on {name} ({lat['pruned']:.3f} ms vs dense "
                          f"{lat['dense']:.3f} ms)" for name, lat in by_target.items() if _pruned_not_faster(lat)]
    for warning in report["warnings"]:
        print(f"edgec: WARNING: {warning}", file=sys.stderr)


def _kept_modules(model: Any, patterns: Sequence[str], example: tuple) -> list[tuple[str, Any]]:
    """Modules named by `patterns` (exact names or fnmatch patterns) plus the layer that produces the output."""
    import torch

    weighted = [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if not weighted:
        raise ConfigError(f"{type(model).__name__} has no Conv2d or Linear layers to prune.")
    kept = {n: m for n, m in weighted if any(n == p or fnmatch.fnmatch(n, p) for p in patterns)}
    unknown = [p for p in patterns if not any(n == p or fnmatch.fnmatch(n, p) for n, _ in model.named_modules())]
    if unknown:
        raise ConfigError(f"keep names no module: {', '.join(unknown)}. Module names look like "
                          f"{', '.join(n for n, _ in weighted[:3])}.")
    last_name, last = weighted[-1]  # the classifier/head: its outputs are the model's outputs
    kept.setdefault(last_name, last)
    return list(kept.items())


def _weight_bytes(model: Any) -> int:
    """Bytes of the parameters and buffers (running stats included): what an fp32 artifact stores."""
    return int(sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())))


def _channel_counts(model: Any) -> dict[str, int]:
    import torch

    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def _split(data: Any) -> tuple[Any, Any]:
    if data is None:
        return None, None
    if isinstance(data, (list, tuple)):
        return data[0], (data[1] if len(data) > 1 else None)
    return data, None


def _batches(n: int, size: int, shuffle: bool, seed: int = 0):
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    for i in range(0, n, size):
        yield order[i:i + size]


def _accuracy(model: Any, inputs: Any, labels: Any, batch_size: int) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for idx in _batches(len(inputs), 256, False):
            correct += int((model(inputs[idx]).argmax(1) == labels[idx]).sum())
    return round(correct / len(inputs), 5)


def _taylor_gradients(student: Any, teacher: Any, data: Any, batch_size: int) -> None:
    import torch
    import torch.nn.functional as F

    inputs, labels = _split(data)
    if inputs is None:
        raise ConfigError("importance='taylor' needs data=(inputs[, labels]) for its gradients.")
    idx = next(_batches(len(inputs), batch_size, True))
    student.zero_grad()
    out = student(inputs[idx])
    with torch.no_grad():
        target = labels[idx] if labels is not None else teacher(inputs[idx]).argmax(1)
    F.cross_entropy(out, target).backward()


def _distill(student: Any, teacher: Any, inputs: Any, labels: Any, epochs: int, lr: float, temperature: float,
             batch_size: int, log: Callable[[str], None]) -> None:
    """Knowledge distillation: KL to the dense model's softened outputs, plus cross-entropy when labelled."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(inputs) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr * 3, total_steps=steps)
    teacher.eval()
    for epoch in range(epochs):
        student.train()
        t0, total = time.perf_counter(), 0.0
        for idx in _batches(len(inputs), batch_size, True, seed=epoch):
            x = inputs[idx]
            with torch.no_grad():
                soft = F.softmax(teacher(x) / temperature, dim=1)
            out = student(x)
            loss = F.kl_div(F.log_softmax(out / temperature, dim=1), soft, reduction="batchmean") * temperature ** 2
            if labels is not None:
                loss = loss + F.cross_entropy(out, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        log(f"distillation epoch {epoch + 1}/{epochs}: loss {total:.2f} ({time.perf_counter() - t0:.0f}s)")
    student.eval()


def _measure(teacher: Any, student: Any, example: tuple, tgt: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """fp32 latency (p50, and the fastest run as `<name>_min`) of dense and pruned models built for `tgt` (when
    its backend runs here)."""

    backend = get_backend(tgt.backend)
    if not backend.can_run_here(tgt):
        return {"dense": None, "pruned": None, "note": f"{tgt.name} does not run here; profile on the device"}
    with tempfile.TemporaryDirectory() as tmp:
        latency = {}
        for name, m in (("dense", teacher), ("pruned", student)):
            build = edgec_compile(m, tgt, "fp32", example_inputs=example, output_dir=f"{tmp}/{name}",
                                  profile_runs=200, progress=False, use_cache=False)
            stats = build.report["profile"]["latency_ms"]
            latency[name], latency[f"{name}_min"] = stats["p50"], stats["min"]
    log(f"latency on {tgt.name}: dense {latency['dense']:.3f} ms, pruned {latency['pruned']:.3f} ms "
        f"({latency['pruned'] / latency['dense']:.2f}x)")
    return {**latency, "ratio": round(latency["pruned"] / latency["dense"], 3), "runs": 200}


def _pruned_not_faster(latency: Mapping[str, Any]) -> bool:
    return latency["dense"] is not None and not_faster(
        {"p50": latency["pruned"], "min": latency.get("pruned_min")},
        {"p50": latency["dense"], "min": latency.get("dense_min")})
