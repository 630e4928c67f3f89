"""`edgec tune` on tiny models: the search space each target allows, the results it writes, resuming after a
kill, two workers on one study (a journal file, and a real PostgreSQL on loopback), and its errors."""
from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgec
from edgec import AccuracyCheckFailed, ConfigError
from edgec.errors import PassError
from edgec.backends import get_backend
from edgec.cli import main
from edgec.target import TARGETS_DIR, load_target
from edgec import tune_storage
from edgec.tune_space import TrialConfig, search_space
from models import tiny_conv_onnx

pytestmark = [pytest.mark.requires_openvino, pytest.mark.timeout(180)]
pytest_plugins = ["postgres", "sshd"]
WORKER = Path(__file__).parent / "tune_worker.py"


@pytest.fixture
def problem(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny conv net and 96 calibration + 48 held-out samples."""
    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_conv_onnx().SerializeToString())
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.random((96, 3, 16, 16), dtype=np.float32), val_x=rng.random((48, 3, 16, 16), dtype=np.float32))
    return model, data


def _space(target: str, count: int = 96, flags: frozenset[str] = frozenset()):
    t = load_target(target)
    return search_space(t, get_backend(t.backend), count, 1.0, flags)


def test_the_search_space_is_what_each_target_allows(tmp_path: Path) -> None:
    """Precisions the target lists, its backend builds and its CPU computes natively; int8/mixed only with
    calibration data and a Q/DQ placement; sample counts up to what the data holds."""
    assert _space("intel-cpu").precisions == ("fp32", "int8", "mixed")  # no avx512_bf16: OpenVINO would emulate
    assert _space("intel-cpu", flags=frozenset({"amx_bf16"})).precisions == ("fp32", "bf16", "int8", "mixed")
    assert _space("intel-cpu", count=0).precisions == ("fp32",)  # no calibration data
    assert _space("rpi4").precisions == ("fp32",)  # TVM builds fp32 only
    assert _space("jetson").precisions == ("fp32", "fp16", "int8", "mixed")
    assert _space("jetson-nano").precisions == ("fp32", "fp16")
    space = _space("intel-cpu")
    assert space.calibration_samples == (64, 96) and space.budgets == (1.0,)
    assert space.float_layers == (0, 1, 2, 4, 8)  # int8 with the mixed search's most sensitive layers float
    assert space.size() == 1 + 4 * 2 * 2 * 3 * 5 + 4 * 2 * 2 * 3
    only_int8 = tmp_path / "int8-only.toml"
    only_int8.write_text('name = "int8-only"\nbackend = "openvino"\narch = "x86_64"\nprecisions = ["int8"]\n'
                         '[openvino]\ndevice = "CPU"\n')
    with pytest.raises(ConfigError, match="Nothing to search on int8-only"):
        _space(str(only_int8), count=0)


@pytest.fixture
def pruning_problem(tmp_path: Path) -> tuple[Any, tuple[Any, ...], Path]:
    """tests/models.py's prunable CNN, its example input, and 96 labelled calibration + 48 held-out samples."""
    import torch
    from models import prunable_cnn

    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.random((96, 3, 16, 16), dtype=np.float32), y=rng.integers(0, 4, 96),
             val_x=rng.random((48, 3, 16, 16), dtype=np.float32), val_y=rng.integers(0, 4, 48))
    return prunable_cnn(), (torch.zeros(1, 3, 16, 16),), data


def test_pruning_is_searched_for_pytorch_models_with_held_out_data(problem, pruning_problem, tmp_path: Path) -> None:
    """Channel pruning (ratio, recovery epochs and learning rate) is in the space for an nn.Module whose data
    has a held-out split; otherwise tune.json says why it is not."""
    from edgec.calibration import CalibrationSet
    from edgec.frontend import to_model
    from edgec.tune_pruning import pruning_choices

    module, example, data = pruning_problem
    dense = to_model(module, example)
    choices = pruning_choices(module, dense, CalibrationSet(str(data)))
    assert choices.absent is None and choices.ratios == (0.25, 0.5) and len(choices.epochs) * len(choices.lrs) == 6
    t = load_target("rpi4")
    assert search_space(t, get_backend("tvm"), 96, 1.0, pruning=choices).size() == 1 + 2 * 6  # fp32, dense or pruned
    onnx_model, _ = problem
    assert "pass the PyTorch nn.Module" in pruning_choices(str(onnx_model), to_model(str(onnx_model)),
                                                            CalibrationSet(str(data))).absent
    no_held_out = tmp_path / "calibration-only.npz"
    np.savez(no_held_out, x=np.zeros((8, 3, 16, 16), np.float32))
    assert "no held-out split" in pruning_choices(module, dense, CalibrationSet(str(no_held_out))).absent


def test_a_pruned_trial_is_scored_against_the_dense_model(pruning_problem, tmp_path: Path) -> None:
    """On a target with fp32 only, every trial after the fp32 anchor prunes: the pruned model is kept as ONNX in
    OUT/pruned (smaller), its drop against the dense model on the held-out samples is added to the build's own,
    and the recommended command rebuilds the recommended trial from the file it was compiled from."""
    module, example, data = pruning_problem
    target = tmp_path / "cpu-fp32.toml"
    text = (TARGETS_DIR / "intel-cpu.toml").read_text().replace('name = "intel-cpu"', 'name = "cpu-fp32"')
    target.write_text(re.sub(r"(?m)^precisions = .*$", 'precisions = ["fp32"]', text))
    out = tmp_path / "tune"
    result = edgec.tune(module, str(target), str(data), trials=3, max_accuracy_drop=100.0, output_dir=out,
                        profile_runs=5, progress=False, example_inputs=example)
    summary = result.summary
    assert summary["space"]["configurations"] == 13 and summary["space"]["pruning_absent"] is None
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 3 and done[0]["anchor"] == "fp32" and done[0]["pruning"] is None
    for trial in done[1:]:
        config = json.loads(trial["config"])
        assert config["prune_ratio"] in (0.25, 0.5) and trial["pruning"]["ratio"] == config["prune_ratio"]
        pruned = out / "pruned" / (f"r{config['prune_ratio']:g}-e{config['recovery_epochs']}"
                                   f"-lr{config['recovery_lr']:g}.onnx")
        assert pruned.stat().st_size < (out / "model.onnx").stat().st_size * 0.8
        own = json.loads((Path(trial["folder"]) / "report.json").read_text())["accuracy"]["labelled"]["drop_points"]
        assert trial["objectives"]["drop_points"] == pytest.approx(own + trial["pruning"]["drop_points"], abs=1e-3)
    command = summary["recommended"]["command"].split()
    assert Path(command[2]).is_file() and command[2].endswith(".onnx")
    assert main([*command[1:-1], str(tmp_path / "again"), "-q"]) == 0


def test_a_pruned_model_that_alone_misses_the_budget_is_not_compiled(pruning_problem, tmp_path: Path) -> None:
    """Judged by cosine with a 0-point budget, every pruned model already misses it: those trials are pruned as
    hopeless before their compile, each configuration once, and the tune stops when the space is settled."""
    module, example, data = pruning_problem
    target = tmp_path / "cpu-fp32.toml"
    text = (TARGETS_DIR / "intel-cpu.toml").read_text().replace('name = "intel-cpu"', 'name = "cpu-fp32"')
    target.write_text(re.sub(r"(?m)^precisions = .*$", 'precisions = ["fp32"]', text))
    out = tmp_path / "tune"
    summary = edgec.tune(module, str(target), str(data), trials=3, max_accuracy_drop=0.0, metric="cosine",
                         output_dir=out, profile_runs=5, progress=False, example_inputs=example).summary
    assert [t["label"] for t in summary["trials"] if t["state"] == "COMPLETE"] == ["fp32"]
    hopeless = [t for t in summary["trials"] if t["hopeless"]]
    assert len(hopeless) == 12 == len({t["config"] for t in hopeless}) == summary["hopeless_pruned"]
    assert all(t["state"] == "PRUNED" and t["folder"] is None and "pruning alone dropped" in t["hopeless"]
               for t in hopeless)
    assert not (out / "trials").exists() or len(list((out / "trials").iterdir())) == 1
    assert "pruning alone dropped" in (out / "report.html").read_text()


def test_a_model_pruning_cannot_handle_fails_its_trial_with_what_to_do(pruning_problem, tmp_path: Path) -> None:
    """A model whose output is not class logits can't be distilled against class labels: PassError (exit 2, the
    trial fails and the tune goes on), naming the model and the pruning, not a bare PyTorch error."""
    import torch
    from edgec.calibration import CalibrationSet
    from edgec.frontend import to_model
    from edgec.tune_pruning import PrunedModels

    _, example, data = pruning_problem
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 4, 1))
    pruned = PrunedModels(module, example, to_model(module, example), CalibrationSet(str(data)),
                          load_target("intel-cpu"), None, tmp_path / "pruned", 0)
    with pytest.raises(PassError, match=r"Pruning Sequential \(r0.25-e1-lr0.001\) failed: .*suits classifiers"):
        pruned.path(0.25, 1, 1e-3)


def test_a_configuration_reproduces_as_one_command() -> None:
    """The recommended configuration's `edgec compile` line carries every searched option."""
    config = TrialConfig("mixed", "entropy", 256, "nearest", 16, 0.5)
    assert config.command("m.onnx", "intel-cpu", "d.npz", "out/best") == (
        "edgec compile m.onnx --target intel-cpu --precision mixed --calib d.npz --calib-method entropy "
        "--calib-subset 256 --weight-rounding nearest --range-search 16 --max-accuracy-drop 0.5 -o out/best")
    assert TrialConfig("fp32").command("m.onnx", "intel-cpu", None, "o") == (
        "edgec compile m.onnx --target intel-cpu --precision fp32 -o o")


def test_tune_writes_the_front_the_best_build_and_resumes(problem, tmp_path: Path, capsys) -> None:
    """`edgec tune` runs N trials (anchored by fp32 and default int8), writes tune.json (every trial: config,
    objectives, build key), pareto.png, report.html and OUT/best, prints the command that rebuilds the best;
    the same command again finds the study done and changes nothing."""
    model, data = problem
    out = tmp_path / "tune"
    args = ["tune", str(model), "--target", "intel-cpu", "--calib", str(data), "--trials", "5", "--runs", "5",
            "--max-accuracy-drop", "50", "-o", str(out), "-q"]
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    summary = json.loads((out / "tune.json").read_text())
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert len(done) == 5 and len({t["config"] for t in done}) == 5
    assert [t["anchor"] for t in done[:3]] == ["fp32", "default int8", "default mixed"]
    assert all(set(t["objectives"]) == {"latency_ms", "drop_points", "artifact_bytes"} and t["build_key"] for t in done)
    assert summary["front"] and (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (out / "report.html").read_text()
    best = summary["recommended"]
    assert (out / "best" / "manifest.json").is_file() and best["command"] in printed
    assert json.loads((out / "best" / "manifest.json").read_text())["precision"] == json.loads(best["config"])["precision"]
    assert main(args) == 0
    again = json.loads((out / "tune.json").read_text())
    assert [t for t in again["trials"] if t["state"] == "COMPLETE"] == done


def test_int8_keeps_the_layers_mixed_found_most_sensitive_in_float(problem, tmp_path: Path) -> None:
    """The study's first mixed trial records its sensitivity ranking; an int8 trial with float_layers k keeps the
    first k layers of it in float (--keep-float in its command)."""
    model, data = problem
    out = tmp_path / "tune"
    # judged by cosine (int8 always loses a little of it) with a 0-point budget: the mixed search ranks every layer
    kwargs = dict(max_accuracy_drop=0.0, output_dir=out, profile_runs=5, progress=False, metric="cosine")
    edgec.tune(model, "intel-cpu", str(data), trials=3, **kwargs)
    summary = json.loads((out / "tune.json").read_text())
    ranking = summary["float_ranking"]
    assert summary["trials"][2]["anchor"] == "default mixed" and len(ranking) >= 2
    study = _study(_journal(out / "tune.journal"), _study_name(out))
    study.enqueue_trial({"precision": "int8", "calibration_method": "minmax", "calibration_samples": 64,
                         "weight_rounding": "nearest", "range_search": 0, "float_layers": 2})
    edgec.tune(model, "intel-cpu", str(data), trials=4, **kwargs)
    trial = json.loads((out / "tune.json").read_text())["trials"][3]
    config = json.loads(trial["config"])
    assert config["float_layers"] == 2 and config["keep_float"] == ranking[:2] and trial["label"].endswith("float2")
    report = json.loads((Path(trial["folder"]) / "report.json").read_text())
    assert report["keep_float"]["requested"] == ranking[:2]
    assert f"--keep-float {','.join(ranking[:2])}" in TrialConfig(**config).command("m.onnx", "intel-cpu", "d", "o")


def _study(storage, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage)


def _journal(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def _worker(model: Path | str, data: Path, out: Path, trials: int, *more: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WORKER), str(model), str(data), str(out), str(trials), *more],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _states(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def test_a_killed_tune_resumes_without_losing_or_repeating_a_trial(problem, tmp_path: Path) -> None:
    """SIGKILL in the middle of a trial, then the same call again: the finished trials are kept, the
    interrupted one is marked failed and its configuration retried, and no configuration is built twice."""
    model, data = problem
    out = tmp_path / "tune"
    first = _worker(model, data, out, 4)
    deadline = time.time() + 120
    study = None
    while time.time() < deadline:
        if (out / "tune.journal").is_file():
            study = study or _study(_journal(out / "tune.journal"), _study_name(out))
            states = _states(study)
            running = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
            if states.get("COMPLETE", 0) >= 1 and len(running) == 1 and "config" in running[0].user_attrs:
                break  # in the middle of its compile
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed = next(t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING")
    second = _worker(model, data, out, 4)
    assert second.wait(150) == 0, second.stdout.read()
    trials = _study(_journal(out / "tune.journal"), _study_name(out)).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({t.user_attrs["config"] for t in complete}) == 4
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.number for t in failed] == [killed.number]
    retry = next(t for t in complete if t.user_attrs.get("retry_of") == killed.number)
    assert retry.params == killed.params


def test_a_trial_whose_worker_died_before_naming_itself_is_retried(tmp_path: Path, monkeypatch) -> None:
    """A RUNNING trial that names no worker ORPHAN_S after its start (its process died between Optuna creating it
    and the objective's first line) is failed and its enqueued configuration queued again; a live one is not."""
    import optuna

    study = optuna.create_study(storage=_journal(tmp_path / "t.journal"), directions=["minimize"] * 3)
    study.enqueue_trial({"precision": "fp32"})
    orphan = study.ask()
    live = study.ask()
    live.set_user_attr("worker", tune_storage.worker_id())
    assert tune_storage.reclaim_dead_trials(optuna, study) == []  # younger than ORPHAN_S
    monkeypatch.setattr(tune_storage, "ORPHAN_S", 0)
    assert tune_storage.reclaim_dead_trials(optuna, study) == [orphan.number]
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states[orphan.number] == "FAIL" and states[live.number] == "RUNNING"
    retry = study.get_trials(deepcopy=False)[-1]
    assert retry.state.name == "WAITING" and retry.system_attrs["fixed_params"] == {"precision": "fp32"}


def _study_name(out: Path) -> str:
    import optuna

    names = optuna.get_all_study_names(_journal(out / "tune.journal"))
    assert len(names) == 1
    return names[0]


@pytest.mark.parametrize("kind", ["journal", "postgresql"])
def test_two_workers_share_one_study(kind: str, problem, tmp_path: Path, request) -> None:
    """Two `edgec tune` workers (two processes; on two machines it is the same) on one study run N trials in
    total, side by side, each configuration once."""
    model, data = problem
    if kind == "postgresql":
        server = request.getfixturevalue("postgres")
        storage = server.create_database(f"tune_{os.getpid()}")
    else:
        storage = str(tmp_path / "shared.journal")
    workers = [_worker(model, data, tmp_path / f"w{i}", 6, "--storage", storage, "--study", "shared") for i in range(2)]
    for w in workers:
        assert w.wait(150) == 0, w.stdout.read()
    store = _journal(Path(storage)) if kind == "journal" else storage
    complete = [t for t in _study(store, "shared").get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert len(complete) == 6 and len({t.user_attrs["config"] for t in complete}) == 6
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both worked


@pytest.mark.requires_tvm
@pytest.mark.requires_arm_board
@pytest.mark.timeout(600)
def test_two_workers_tune_on_two_emulated_boards_behind_a_tracker(pruning_problem, tmp_path: Path) -> None:
    """Two workers share one study and take Raspberry Pi 4 boards (emulated) from a TVM RPC tracker by key: their
    trials run at the same time, each configuration once (fp32 dense or pruned: TVM builds fp32), every build's
    outputs checked on its board; tune.json says emulated latency is not the board's."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado: pip install tornado")
    from edgec import board

    _, _, data = pruning_problem
    board.setup(quiet=True)
    storage = str(tmp_path / "shared.journal")
    with board.start_tracker(board.free_port()) as tracker, \
            board.start_board(board.free_port(), cpu="cortex-a72", key="rpi4", tracker=tracker.address) as one, \
            board.start_board(board.free_port(), cpu="cortex-a72", key="rpi4", tracker=tracker.address) as two:
        workers = [_worker("prunable_cnn", data, tmp_path / f"w{i}", 4, "--storage", storage, "--study", "arm",
                           "--target", "rpi4", "--device", f"tracker://{tracker.address}/rpi4") for i in range(2)]
        for w in workers:
            assert w.wait(540) == 0, w.stdout.read()
    complete = [t for t in _study(_journal(Path(storage)), "arm").get_trials(deepcopy=False)
                if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len({t.user_attrs["config"] for t in complete}) == 4
    assert any(t.params.get("prune_ratio") for t in complete)
    by_worker: dict[str, list[Any]] = {}
    for t in complete:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t)
    assert len(by_worker) == 2
    first, second = by_worker.values()
    assert any(a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
               for a in first for b in second), "the two workers' trials never overlapped"
    boards = {one.address, two.address}
    assert all("emulated cortex-a72" in t.user_attrs["device"] and any(b in t.user_attrs["device"] for b in boards)
               for t in complete)
    summary = json.loads((tmp_path / "w0" / "tune.json").read_text())
    assert "emulated boards" in summary["latency_note"] and summary["remeasured_p50_ms"] == {}
    assert html.escape(summary["latency_note"]) in (tmp_path / "w0" / "report.html").read_text()


def test_a_jetson_is_tuned_over_ssh(problem, ssh_env, tmp_path: Path) -> None:
    """A Jetson target does not run here: with --device ssh://... each trial's bundle goes to the device, its engine
    is built and profiled there and its outputs judged here. (The device's TensorRT is tests/fake_tensorrt.py's
    10.3 stand-in, its latency made up; the ssh transport, the runner and the files are real.)"""
    from sshd import fake_jetson_python

    model, data = problem
    device = f"{ssh_env.url}/{tmp_path / 'remote'}?python={fake_jetson_python(tmp_path)}"
    summary = edgec.tune(model, "jetson", str(data), trials=3, max_accuracy_drop=50.0, device=device,
                         output_dir=tmp_path / "tune", profile_runs=3, progress=False).summary
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert [t["anchor"] for t in done] == ["fp32", "default int8", "default mixed"]
    assert all(t["device"].startswith("Orin (fake) at ssh://root@127.0.0.1:") for t in done)
    assert (tmp_path / "tune" / "best" / "model.engine").is_file()


def test_the_errors_say_what_to_do(problem, tmp_path: Path, capsys) -> None:
    """A budget nothing meets (exit 4, the closest and by how much, results still written); a target with one
    configuration, one that does not run here without --device, a --device no trial can use (exit 2); storage
    that can't be reached (exit 3, fast)."""
    model, data = problem
    with pytest.raises(AccuracyCheckFailed, match=r"No configuration met --max-accuracy-drop -1: the most accurate"):
        edgec.tune(model, "intel-cpu", str(data), trials=2, max_accuracy_drop=-1, output_dir=tmp_path / "a",
                   profile_runs=5, progress=False)
    assert (tmp_path / "a" / "tune.json").is_file() and not (tmp_path / "a" / "best").exists()
    assert main(["tune", str(model), "--target", "rpi4", "-o", str(tmp_path / "b"), "-q"]) == 2
    assert "Nothing to choose on rpi4: tvm builds only fp32 there" in capsys.readouterr().err
    assert main(["tune", str(model), "--target", "jetson", "--calib", str(data), "-o", str(tmp_path / "b"), "-q"]) == 2
    assert "Give the board with --device (ssh://user@jetson" in capsys.readouterr().err
    assert main(["tune", str(model), "--calib", str(data), "--device", "rpc://127.0.0.1:1", "--runs", "3",
                 "-o", str(tmp_path / "d"), "-q"]) == 2  # every trial fails alike: stopped after 3, not forever
    err = capsys.readouterr().err
    assert "The first 3 trials of this worker all failed, the last with: OpenVINO artifacts are profiled on" in err
    t0 = time.time()
    assert main(["tune", str(model), "--calib", str(data), "--storage", "postgresql+psycopg2://edgec@127.0.0.1:1/x",
                 "-o", str(tmp_path / "c"), "-q"]) == 3
    err = capsys.readouterr().err
    assert "The tuning storage postgresql+psycopg2://edgec@127.0.0.1:1/x can't be used" in err and time.time() - t0 < 30

