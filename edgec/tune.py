"""`edgec tune`: search how to deploy a model on a target for the Pareto front of latency, accuracy and size.

Each trial is one compile, chosen by Optuna (multi-objective TPE, constant liar for parallel workers, the
accuracy budget as a constraint) from what the target allows (`search_space`): precision; for int8 and mixed the
calibration method, how many calibration samples, weight rounding, range-search size and the mixed budget; for
int8, how many of the mixed search's most sensitive layers stay float (the ranking the study's first mixed trial
records); for a PyTorch model, structured pruning and its recovery (tune_pruning.py). A trial is scored on the
compile's held-out samples in the task's metric (its drop against the user's fp32 model, in points), timed on
the target (here, or on `device`: a TVM tracker hands each trial a board by key) and weighed (artifact bytes).
Identical configurations are built once: edgec's build cache answers a configuration built before, and a trial
whose configuration another trial of the study already has (finished or running) is pruned as its duplicate.

The study lives in Optuna storage: by default a journal file in OUT (`tune.journal`), so an interrupted
tune resumes: the trials that finished are kept, the one that was running when its process died is retried
(`reclaim_dead_trials`). `storage` takes any Optuna URL (`sqlite:///x.db`, `postgresql://...`, shared by
workers on several machines, with heartbeats) or a journal file path. The results: OUT/tune.json (every
trial), OUT/pareto.png and OUT/report.html (the front), OUT/best/ (the fastest build within the budget) and
the `edgec compile` command that reproduces it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from . import accuracy
from .backends import get_backend
from .calibration import CalibrationSet, fixed_inputs
from .errors import AccuracyCheckFailed, BackendUnavailable, BuildError, ConfigError, PassError, brief
from .fileio import staged_dir
from .frontend import to_model
from .isolation import isolated
from .model import Model
from .pipeline import Build, compile, profile
from .progress import Steps
from .target import TARGETS_DIR, Target, load_target
from .tune_pruning import PrunedModels, pruning_choices
from .tune_space import SearchSpace, TrialConfig, cpu_flags, search_space
from .tune_storage import OBJECTIVES, open_study, reclaim_dead_trials, redacted, worker_id
from .tune_report import write_results

SCHEMA = "edgec.tune/1"
RANKING_ATTR = "float_ranking"  # the study's ranking: from its first finished mixed trial
REMEASURE_WITHIN = 0.10  # front members this close to the fastest are timed again, interleaved
REMEASURE_ROUNDS = 5
REMEASURE_AT_MOST = 6  # the fastest six of them: a slower one is not recommended
_DUPLICATES_BEFORE_STOP = 40  # the sampler keeps proposing evaluated configurations: the space is exhausted
_FAILURES_BEFORE_STOP = 3  # a worker whose first trials all fail: the cause is not the configuration (a bad --device)
# a trial's configuration can't be built, or its build disagrees with fp32 on the board: that trial fails, the
# tune goes on (BackendUnavailable, a device or storage gone, stops it)
TRIAL_ERRORS = (ConfigError, PassError, BuildError, AccuracyCheckFailed)


@dataclass
class TuneResult:
    """A finished tune: OUT, tune.json's content, the recommended build (None when nothing met the budget)."""

    output_dir: Path
    summary: dict[str, Any]
    best: Build | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)


@isolated
def tune(model: Any, target: str | Target = "intel-cpu", calibration: Any = None, *, max_accuracy_drop: float = 1.0,
         trials: int | None = 30, time_budget: float | None = None, storage: str | None = None,
         study_name: str | None = None, output_dir: str | Path | None = None, device: str = "local",
         metric: Any = None, profile_runs: int = 50, seed: int = 0, example_inputs: Sequence[Any] | None = None,
         progress: bool = True) -> TuneResult:
    """Search deployments of `model` (an .onnx path, ModelProto, or nn.Module with `example_inputs`) on
    `target` (see the module docstring). Stops after `trials` finished trials in the
    study (all workers together) or `time_budget` seconds. Raises AccuracyCheckFailed (after writing the
    results) when no configuration met `max_accuracy_drop`."""
    optuna = _import_optuna()
    tgt, calib = load_target(target), _calibration(calibration)
    if trials is None and time_budget is None:
        raise ConfigError("Say when to stop: --trials N or --time-budget SECONDS.")
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be at least 1 (got {trials}).")
    if time_budget is not None and not time_budget > 0:
        raise ConfigError(f"--time-budget must be a number of seconds > 0 (got {time_budget}).")
    backend = get_backend(tgt.backend)
    loaded = to_model(model, example_inputs)
    pruning = pruning_choices(model, loaded, calib)
    space = search_space(tgt, backend, _calibration_count(loaded, calib), max_accuracy_drop, cpu_flags(), pruning)
    if space.size() < 2:
        raise ConfigError(f"Nothing to choose on {tgt.name}: {backend.name} builds only {space.precisions[0]} there, "
                          f"and pruning is not searched ({pruning.absent}). Compile it: edgec compile MODEL "
                          f"--target {tgt.name}.")
    if device == "local" and not backend.can_run_here(tgt):
        raise ConfigError(f"Tuning times every build on the target: {tgt.name} ({backend.name}, {tgt.arch}) does not "
                          "run here. Give the board with --device (ssh://user@jetson for a Jetson).")
    out = Path(output_dir) if output_dir else Path("edgec-out") / f"tune-{_model_name(model, loaded)}-{tgt.name}"
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(optuna, storage, study_name or f"{loaded.sha256()[:12]}-{tgt.name}", out, seed)
    pruned = (PrunedModels(model, example_inputs or (), loaded, calib, tgt, metric, out / "pruned", seed)
              if space.prune_ratios and calib is not None else None)
    trial_runner = _Trials(model, tgt, calib, space, out, device, metric, profile_runs, max_accuracy_drop,
                           Steps(progress), trials, example_inputs, pruned, _model_file(model, loaded, out))
    reclaim_dead_trials(optuna, study)
    _seed_defaults(study, space)
    t0 = time.perf_counter()
    callbacks = [optuna.study.MaxTrialsCallback(trials)] if trials else []
    study.optimize(trial_runner, timeout=time_budget, catch=TRIAL_ERRORS,
                   callbacks=[*callbacks, trial_runner.stop_when_exhausted], gc_after_trial=True)
    if trial_runner.failing_alike():
        error = trial_runner.last_error
        assert error is not None
        raise type(error)(f"The first {_FAILURES_BEFORE_STOP} trials of this worker all failed, the last with: "
                          f"{error}") from error
    return finish(study, trial_runner, time.perf_counter() - t0, storage)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise BackendUnavailable("edgec tune needs Optuna: pip install 'edgec[tune]'") from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _model_name(model: Any, loaded: Model) -> str:
    """A short name for OUT: the file's stem, or the PyTorch module's class name."""
    if isinstance(model, (str, os.PathLike)):
        return Path(model).stem
    return str(loaded.provenance.get("source") or "model").rsplit(".", 1)[-1].strip("<>") or "model"


def _model_file(model: Any, loaded: Model, out: Path) -> str:
    """The model as a file for `edgec compile` lines: its path, or (a PyTorch module) its export, OUT/model.onnx."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    path = out / "model.onnx"
    loaded.save(path)
    return str(path)


def _calibration(data: Any) -> CalibrationSet | None:
    return data if isinstance(data, CalibrationSet) or data is None else CalibrationSet(data)


def _calibration_count(model: Any, calib: CalibrationSet | None) -> int:
    """How many calibration samples the data holds (0 without data)."""
    if calib is None:
        return 0
    samples = calib.load(model.inputs, "calibration", fixed_inputs(model))
    return len(samples) if samples is not None else 0


def _seed_defaults(study: Any, space: SearchSpace) -> None:
    """A new study starts from the anchors, each of the model as given: fp32, int8 with edgec's defaults (the build
    to beat) and mixed with them (its search records the sensitivity ranking float_layers takes)."""
    if study.get_trials(deepcopy=False):
        return
    dense = {"prune_ratio": 0.0} if space.prune_ratios else {}  # an anchor is the model as given
    study.enqueue_trial({"precision": "fp32", **dense}, user_attrs={"anchor": "fp32"})
    if not {"int8", "mixed"} & set(space.precisions):
        return
    defaults = {"calibration_method": "percentile", "calibration_samples": space.calibration_samples[-1],
                "weight_rounding": "gptq", "range_search": 64 if 64 in space.range_searches else space.range_searches[-1],
                **dense}
    if "int8" in space.precisions:
        study.enqueue_trial({"precision": "int8", **defaults, **({"float_layers": 0} if space.float_layers else {})},
                            user_attrs={"anchor": "default int8"})
    if "mixed" in space.precisions:  # it also measures the layers' sensitivity: the ranking float_layers takes
        study.enqueue_trial({"precision": "mixed", **defaults, "budget": space.budgets[0]},
                            user_attrs={"anchor": "default mixed"})


# ------------------------------------------------------------------------------------------------- trials
class _Trials:
    """The objective: one compile per trial, scored and timed; knows when the space is exhausted."""

    def __init__(self, model: Any, target: Target, calib: CalibrationSet | None, space: SearchSpace, out: Path,
                 device: str, metric: Any, runs: int, budget: float, steps: Steps, trials: int | None,
                 example_inputs: Sequence[Any] | None, pruned: PrunedModels | None, model_file: str):
        self.model, self.target, self.calib, self.space, self.out = model, target, calib, space, out
        self.device, self.metric, self.runs, self.budget, self.steps = device, metric, runs, budget, steps
        self.trials, self.duplicates_in_a_row = trials, 0
        self.finished, self.failures_in_a_row, self.last_error = 0, 0, None
        self.example_inputs, self.pruned, self.model_file = example_inputs, pruned, model_file

    def __call__(self, trial: Any) -> tuple[float, float, float]:
        import optuna

        trial.set_user_attr("worker", worker_id())  # first: reclaim_dead_trials knows whose trial it is
        config = self.space.suggest(trial)
        if config.float_layers:  # the ranking may hold fewer: then it is the same build as a smaller k
            names = self._float_ranking(trial.study)[:config.float_layers]
            config = replace(config, float_layers=len(names), keep_float=tuple(names))
        trial.set_user_attr("config", config.key())
        trial.set_user_attr("label", config.label())
        if self.trials and not _room_for(trial.study, trial.number, self.trials):
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise optuna.TrialPruned(f"the study has its {self.trials} trials")
        twin = _evaluated_twin(trial.study, config.key(), trial.number)
        if twin is not None:
            self.duplicates_in_a_row += 1
            trial.set_user_attr("duplicate_of", twin)
            raise optuna.TrialPruned(f"configuration of trial {twin}")
        self.duplicates_in_a_row = 0
        try:
            with self.steps.step(f"trial {trial.number}: {config.label()}"):
                source = self.source(config)  # a pruned configuration is pruned here, once for the study's trials
                cost = self._pruning_cost(trial, source) if config.prune_ratio else None
                build = self.build(config, self.out / "trials" / f"{trial.number:04d}", source)
            objectives, where = self._objectives(build, cost)
        except TRIAL_ERRORS as e:  # this configuration can't be built or disagrees on the board: the trial fails
            trial.set_user_attr("error", f"{type(e).__name__}: {brief(e)}")
            self.failures_in_a_row, self.last_error = self.failures_in_a_row + 1, e
            raise
        self.finished, self.failures_in_a_row = self.finished + 1, 0
        trial.set_constraint("accuracy_budget", objectives["drop_points"] - self.budget)  # feasible at <= 0
        if config.precision == "mixed" and RANKING_ATTR not in trial.study.user_attrs:
            ranking = (build.report.get("mixed_precision") or {}).get("ranking") or []
            trial.study.set_user_attr(RANKING_ATTR, [r["node"] for r in ranking])
        for name, value in {**objectives, "device": where, "build_key": build.cache_key, "cache_hit": build.cached,
                            "folder": str(build.output_dir), "accuracy_ok": build.report["accuracy"].get("ok")}.items():
            trial.set_user_attr(name, value)
        return tuple(objectives[k] for k in OBJECTIVES)  # type: ignore[return-value]

    def _pruning_cost(self, trial: Any, pruned: Path) -> dict[str, Any]:
        """What pruning alone cost (PrunedModels.drop), recorded on the trial with the pruned model's file (what
        the commands rebuild it from). Prunes the trial (Optuna's TrialPruned) when that cost misses the budget by
        more than twice its standard error: no precision wins the accuracy back, so its compile is skipped."""
        import optuna

        assert self.pruned is not None
        cost = self.pruned.drop(pruned)
        trial.set_user_attr("pruning", cost)
        trial.set_user_attr("model_file", str(pruned))
        margin = 2 * float((cost.get("labelled") or {}).get("standard_error_points") or 0.0)
        if cost["drop_points"] - margin > self.budget:
            trial.set_user_attr("hopeless", f"pruning alone dropped {cost['drop_points']:.2f} points "
                                            f"(budget {self.budget:g}{f', margin {margin:.2f}' if margin else ''})")
            self.steps.note(f"trial {trial.number} skipped before its compile: {trial.user_attrs['hopeless']}")
            raise optuna.TrialPruned(trial.user_attrs["hopeless"])
        return cost

    @staticmethod
    def _float_ranking(study: Any, poll_s: float = 2.0) -> list[str]:
        """The study's sensitivity ranking (most useful to keep float first), recorded by its first finished mixed
        trial; waits while a mixed trial runs; empty when none did (then float_layers has nothing to keep)."""
        while True:
            ranking = study.user_attrs.get(RANKING_ATTR)
            if ranking is not None:
                return list(ranking)
            if not any(t.state.name == "RUNNING" and t.params.get("precision") == "mixed"
                       for t in study.get_trials(deepcopy=False)):
                return []
            time.sleep(poll_s)

    def build(self, config: TrialConfig, folder: Path, source: Any = None) -> Build:
        """Compile `config` into `folder` from `source` (default `self.source(config)`; the build cache answers one
        built before); kept if inaccurate."""
        source = self.source(config) if source is None else source
        return compile(source, self.target, calibration=self.calib, output_dir=folder, metric=self.metric,
                       example_inputs=None if isinstance(source, Path) else self.example_inputs,
                       profile_runs=self.runs, progress=False, accept_inaccurate=True, **config.compile_options())

    def command(self, config: TrialConfig, out: Path, model_file: str | None = None) -> str:
        """The `edgec compile` line that builds `config` into `out`: from `model_file` (a trial's pruned model)
        when it is on this machine, else from the user's model or its pruned copy here."""
        if model_file and Path(model_file).is_file():
            model = model_file
        else:
            model = str(self.source(config)) if config.prune_ratio else self.model_file
        return config.command(model, _target_word(self.target), _calib_source(self.calib), str(out))

    def source(self, config: TrialConfig) -> Any:
        """What `config` compiles: the user's model, or its pruned copy (OUT/pruned/<key>.onnx)."""
        if not config.prune_ratio:
            return self.model
        assert self.pruned is not None and config.recovery_epochs and config.recovery_lr
        return self.pruned.path(config.prune_ratio, config.recovery_epochs, config.recovery_lr)

    def _objectives(self, build: Build, pruning: dict[str, Any] | None) -> tuple[dict[str, float], str]:
        """p50 latency on the target (ms), the drop against the user's fp32 model in the task metric (points:
        the build's against its fp32 model, plus `pruning`'s), artifact bytes; and the device that timed it."""
        if self.device == "local":
            latency, where = float(build.report["profile"]["latency_ms"]["p50"]), build.report["profile"]["device"]
        else:  # AccuracyCheckFailed when the board's outputs disagree with ONNX Runtime's
            prof = profile(build.output_dir, device=self.device, runs=self.runs, write=False)
            latency, where = prof.latency_ms.p50, prof.device
        # a build checked on the board only (TVM): it computes what its model.onnx computes, fp32
        drop = 0.0 if "skipped" in build.report["accuracy"] and self.device != "local" else accuracy_drop(build.report)
        if pruning is not None:
            drop += float(pruning["drop_points"])
        files = set(build.manifest["artifact"]["files"]) | {"model.onnx"}
        size = sum(f["bytes"] for f in build.manifest["files"] if f["path"] in files)
        return {"latency_ms": latency, "drop_points": round(drop, 4), "artifact_bytes": float(size)}, where

    def stop_when_exhausted(self, study: Any, trial: Any) -> None:
        """Stop once every configuration of the space was evaluated, the sampler keeps proposing old ones, or the
        worker's first trials all failed."""
        done = {t.user_attrs.get("config") for t in study.get_trials(deepcopy=False) if _evaluated(t)}
        if (len(done) >= self.space.size() or self.duplicates_in_a_row >= _DUPLICATES_BEFORE_STOP
                or self.failing_alike()):
            study.stop()

    def failing_alike(self) -> bool:
        """Whether this worker's first trials all failed: then the cause is not their configurations."""
        return self.finished == 0 and self.failures_in_a_row >= _FAILURES_BEFORE_STOP


def accuracy_drop(report: dict[str, Any]) -> float:
    """Points the build lost against its fp32 model in the primary metric (accuracy.drop_points)."""
    drop = accuracy.drop_points(report["accuracy"])
    if drop is None:
        raise BuildError("The build's report has no accuracy rows: it was not checked, so it cannot be tuned.")
    return drop


def _counted(trial: Any) -> bool:
    """A trial that counts toward the study's total: finished, or running and neither surplus nor a duplicate."""
    attrs = trial.user_attrs
    return trial.state.name == "COMPLETE" or (trial.state.name == "RUNNING" and "config" in attrs
                                              and "duplicate_of" not in attrs and "surplus" not in attrs)


def _room_for(study: Any, number: int, total: int, poll_s: float = 1.0) -> bool:
    """Whether trial `number` still fits in the study's `total`: the finished trials plus those running before it
    (all workers) leave room. While they would fill it, wait for them: one may fail or turn out a duplicate."""
    while True:
        trials = study.get_trials(deepcopy=False)
        done = sum(1 for t in trials if t.state.name == "COMPLETE")
        running = sum(1 for t in trials if t.number < number and t.state.name == "RUNNING" and _counted(t))
        if done >= total:
            return False
        if done + running < total:
            return True
        time.sleep(poll_s)


def _evaluated(trial: Any) -> bool:
    """Whether a trial settled its configuration: finished, or pruned as hopeless."""
    return trial.state.name == "COMPLETE" or (trial.state.name == "PRUNED" and "hopeless" in trial.user_attrs)


def _evaluated_twin(study: Any, key: str, number: int) -> int | None:
    """The number of an earlier trial of the study with this configuration, settled or running (its twin)."""
    for other in study.get_trials(deepcopy=False):
        if other.number < number and other.user_attrs.get("config") == key and (
                _evaluated(other) or other.state.name == "RUNNING"):
            return other.number
    return None


# ------------------------------------------------------------------------------------------------ results
def finish(study: Any, runner: _Trials, seconds: float, storage: str | None) -> TuneResult:
    """tune.json, the chart and report, OUT/best (the fastest build within the budget, its latency re-measured
    against its close rivals); AccuracyCheckFailed when no build met the budget."""
    rows = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    front = {t.number for t in study.best_trials} if complete else set()
    feasible = sorted((r for r in complete if r["objectives"]["drop_points"] <= runner.budget),
                      key=lambda r: r["objectives"]["latency_ms"])
    remeasured = _remeasure(feasible, runner)
    # the fastest feasible build; among the close calls, the fastest when they were timed again side by side
    best_row = (min((r for r in feasible if r["number"] in remeasured), key=lambda r: remeasured[r["number"]])
                if remeasured else feasible[0] if feasible else None)
    summary = {"schema": SCHEMA, "study": study.study_name, "storage": redacted(storage) if storage else
               str(runner.out / "tune.journal"), "target": runner.target.name, "budget_points": runner.budget,
               "space": runner.space.to_json(), "float_ranking": study.user_attrs.get(RANKING_ATTR),
               "wall_s": round(seconds, 1), "trials": rows,
               "front": sorted(front), "remeasured_p50_ms": remeasured,
               "cache_hits": sum(1 for r in complete if r["cache_hit"]),
               "duplicates_pruned": sum(1 for r in rows if r.get("duplicate_of") is not None),
               "hopeless_pruned": sum(1 for r in rows if r.get("hopeless")),
               "workers": sorted({r["worker"] for r in complete if r["worker"]})}
    if any("emulated" in str(r["device"]) for r in complete):
        summary["latency_note"] = ("trials were timed on emulated boards (qemu-user): that latency is not the "
                                   "board's; the search is right about accuracy and size only")
    best = None
    if best_row is not None:
        config = TrialConfig(**json.loads(best_row["config"]))
        best = _best_build(runner, best_row, config)
        summary["recommended"] = {**best_row, "command": runner.command(config, runner.out / "best",
                                                                         best_row.get("model_file"))}
    summary["versus_default_int8"] = _versus_default(complete, best_row)
    write_results(runner.out, summary)
    if best_row is None:
        raise AccuracyCheckFailed(_budget_missed(complete, runner.budget, runner.out))
    return TuneResult(runner.out, summary, best, rows)


def _best_build(runner: _Trials, row: dict[str, Any], config: TrialConfig) -> Build:
    """OUT/best: a copy of the recommended trial's folder (exactly what was measured), or, when another
    machine's worker built it, the same configuration built here."""
    folder, best = Path(row["folder"] or ""), runner.out / "best"
    if not (folder / "manifest.json").is_file():
        return runner.build(config, best)
    with staged_dir(best) as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
    return Build(best, json.loads((best / "manifest.json").read_text()), json.loads((best / "report.json").read_text()),
                 row["build_key"], cached=False)


def _trial_row(trial: Any) -> dict[str, Any]:
    attrs = trial.user_attrs
    values = trial.values if trial.state.name == "COMPLETE" else None
    return {"number": trial.number, "state": trial.state.name, "config": attrs.get("config"),
            "label": attrs.get("label"), "objectives": dict(zip(OBJECTIVES, values)) if values else None,
            "build_key": attrs.get("build_key"), "cache_hit": bool(attrs.get("cache_hit")),
            "accuracy_ok": attrs.get("accuracy_ok"), "worker": attrs.get("worker"), "folder": attrs.get("folder"),
            "duplicate_of": attrs.get("duplicate_of"), "retry_of": attrs.get("retry_of"),
            "anchor": attrs.get("anchor"), "device": attrs.get("device"), "error": attrs.get("error"),
            "pruning": attrs.get("pruning"), "model_file": attrs.get("model_file"), "hopeless": attrs.get("hopeless"),
            "seconds": (trial.duration.total_seconds() if trial.duration else None)}


def _remeasure(feasible: list[dict[str, Any]], runner: _Trials) -> dict[int, float]:
    """The builds within REMEASURE_WITHIN of the fastest feasible one, timed again in interleaved rounds (the
    close calls): median p50 per trial number."""
    if len(feasible) < 2 or any("emulated" in str(r["device"]) for r in feasible):
        return {}  # an emulated board's latency is not the board's: timing it again decides nothing
    fastest = feasible[0]["objectives"]["latency_ms"]
    close = [r for r in feasible if r["objectives"]["latency_ms"] <= fastest * (1 + REMEASURE_WITHIN)][:REMEASURE_AT_MOST]
    if len(close) < 2:
        return {}
    rounds: dict[int, list[float]] = {r["number"]: [] for r in close}
    for _ in range(REMEASURE_ROUNDS):
        for r in close:
            prof = profile(r["folder"], device=runner.device, runs=runner.runs, write=False)
            rounds[r["number"]].append(prof.latency_ms.p50)
    return {n: round(sorted(v)[len(v) // 2], 4) for n, v in rounds.items()}


def _versus_default(complete: Sequence[dict[str, Any]], best: dict[str, Any] | None) -> dict[str, Any] | None:
    default = next((r for r in complete if r.get("anchor") == "default int8"), None)
    if default is None or best is None:
        return None
    d, b = default["objectives"], best["objectives"]
    return {"default_int8": default["number"], "recommended": best["number"],
            "latency_ratio": round(b["latency_ms"] / d["latency_ms"], 4),
            "drop_difference_points": round(b["drop_points"] - d["drop_points"], 4)}


def _budget_missed(complete: Sequence[dict[str, Any]], budget: float, out: Path) -> str:
    if not complete:
        return (f"No trial finished, so none met --max-accuracy-drop {budget:g}; see {out / 'tune.json'} for why each "
                "failed.")
    closest = min(complete, key=lambda r: r["objectives"]["drop_points"])
    drop = closest["objectives"]["drop_points"]
    return (f"No configuration met --max-accuracy-drop {budget:g}: the most accurate, trial {closest['number']} "
            f"({closest['label']}), dropped {drop:.2f} points, {drop - budget:.2f} over. The front is in "
            f"{out / 'tune.json'} and {out / 'report.html'}; allow a larger drop, or give more calibration data.")


def _target_word(target: Target) -> str:
    """How a command line names `target`: its name when edgec ships it, else its .toml file."""
    shipped = not target.path or Path(target.path).resolve().parent == TARGETS_DIR.resolve()
    return target.name if shipped else target.path


def _calib_source(calib: CalibrationSet | None) -> str | None:
    return str(calib.source) if calib is not None and isinstance(calib.source, (str, Path)) else None
