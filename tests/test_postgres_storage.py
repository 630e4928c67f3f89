"""Optuna studies shared through a real PostgreSQL server (tests/postgres.py), the ground `edgec tune` will stand on:
several workers on several machines share one study through `--storage postgresql://...` (Optuna's RDBStorage).

Workers are separate Python processes (subprocess), as they will be on separate machines. What is shown:
- two workers fill one study together (2K trials, both workers' trials, running at the same time);
- a worker killed mid-trial (SIGKILL) loses nothing on PostgreSQL with Optuna's heartbeat: RDBStorage(url,
  heartbeat_interval=, grace_period=, heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(...));
  the next worker's optimize() (or optuna.storages.fail_stale_trials(study)) fails the stale trial and re-queues
  its parameters as a WAITING trial, which the next trial picks up;
- Optuna 5.0.0's JournalStorage has no heartbeat (it is not a BaseHeartbeat, takes no heartbeat_interval, and
  fail_stale_trials is a no-op there): the killed trial stays RUNNING for ever. With a journal file the same
  guarantee takes a heartbeat of our own (a user attr the objective refreshes) and a reaper (reap_stale_trials);
- an unreachable storage URL fails in RDBStorage() with sqlalchemy.exc.OperationalError: at once on a closed port,
  after libpq's connect_timeout on a server that never answers.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna", reason="needs Optuna: pip install 'edgec[tune]'")
pytest.importorskip("psycopg2", reason="needs psycopg2: pip install 'edgec[tune]'")
sqlalchemy_exc = pytest.importorskip("sqlalchemy.exc")

from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials  # noqa: E402
from optuna.storages.journal import JournalFileBackend, JournalStorage  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

pytest_plugins = ["postgres"]

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]

HEARTBEAT_S = 1       # RDBStorage heartbeat_interval: a running trial's heartbeat row is refreshed every second
GRACE_S = 2           # grace_period: no heartbeat for 2 s and the trial is stale
OPS = {"add": 0.0, "mul": 10.0, "pow": 20.0}

# One worker process: load the study, optimize. The objective marks each trial with the worker's name, can wait
# until the other worker has a trial (so the two provably run at the same time), can hang in its Nth call (to be
# killed there), and on a journal refreshes a "heartbeat" user attr while it runs.
WORKER = r'''
import json, sys, threading, time
import warnings
import optuna

warnings.simplefilter("ignore")
optuna.logging.set_verbosity(optuna.logging.WARNING)
cfg = json.loads(sys.argv[1])
OPS = {"add": 0.0, "mul": 10.0, "pow": 20.0}

if cfg["kind"] == "rdb":
    kwargs = {}
    if cfg.get("heartbeat"):
        kwargs = dict(heartbeat_interval=cfg["heartbeat"][0], grace_period=cfg["heartbeat"][1],
                      heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
    storage = optuna.storages.RDBStorage(cfg["url"], **kwargs)
else:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(cfg["path"]))
study = optuna.load_study(study_name=cfg["study"], storage=storage)
calls = 0

def wait_for_other(trial):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(t.user_attrs.get("worker") == cfg["wait_for"] for t in trial.study.get_trials(deepcopy=False)):
            return
        time.sleep(0.05)
    raise RuntimeError("the other worker never showed up")

def objective(trial):
    global calls
    calls += 1
    trial.set_user_attr("worker", cfg["worker"])
    stop = threading.Event()
    if cfg.get("journal_heartbeat"):
        def beat():
            while True:
                trial.set_user_attr("heartbeat", time.time())
                if stop.wait(cfg["journal_heartbeat"]):
                    return
        threading.Thread(target=beat, daemon=True).start()
    try:
        op = trial.suggest_categorical("op", list(OPS))
        n = trial.suggest_int("n", 1, 8)
        if calls == 1 and cfg.get("wait_for"):
            wait_for_other(trial)
        if calls == cfg.get("hang_at_call"):
            with open(cfg["marker"], "w") as f:
                f.write(str(trial.number))
            time.sleep(600)
        time.sleep(cfg.get("sleep", 0))
        return OPS[op] + n
    finally:
        stop.set()

study.optimize(objective, n_trials=cfg["n_trials"])
'''


def _objective(trial: "optuna.Trial") -> float:
    """The workers' objective, for trials run in the test process."""
    return OPS[trial.suggest_categorical("op", list(OPS))] + trial.suggest_int("n", 1, 8)


def _spawn(tmp_path: Path, cfg: dict) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    if not script.exists():
        script.write_text(WORKER)
    log = open(tmp_path / f"{cfg['worker']}.log", "wb")
    with log:
        return subprocess.Popen([sys.executable, str(script), json.dumps(cfg)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, tmp_path: Path, name: str, timeout: float = 120) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"worker {name} hung: {(tmp_path / f'{name}.log').read_text()[-3000:]}")
    assert rc == 0, f"worker {name} exited {rc}: {(tmp_path / f'{name}.log').read_text()[-3000:]}"


def _kill_mid_trial(tmp_path: Path, cfg: dict, timeout: float = 60) -> int:
    """Start a worker that hangs in its `hang_at_call`th objective call, SIGKILL it there; returns that trial's
    number."""
    marker = tmp_path / f"{cfg['worker']}.hanging"
    proc = _spawn(tmp_path, {**cfg, "marker": str(marker)})
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists() or not marker.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker never reached its hanging trial (rc {proc.poll()}): "
                                     f"{(tmp_path / (cfg['worker'] + '.log')).read_text()[-3000:]}")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return int(marker.read_text())


def _study_name(request: pytest.FixtureRequest) -> str:
    return request.node.name.replace("[", "-").replace("]", "")


def test_two_workers_share_one_postgres_study(postgres, tmp_path, request):
    """Two worker processes on one PostgreSQL study, each optimize(n_trials=K): the study ends with 2K finished
    trials numbered 0..2K-1 (no number handed out twice), K from each worker (user attr "worker"), and each
    worker's first objective call waited until the other had a trial, so they provably ran at the same time."""
    k, name = 6, _study_name(request)
    optuna.create_study(study_name=name, storage=RDBStorage(postgres.url), direction="minimize")
    workers = [_spawn(tmp_path, {"kind": "rdb", "url": postgres.url, "study": name, "worker": w, "wait_for": other,
                                 "n_trials": k, "sleep": 0.05})
               for w, other in (("a", "b"), ("b", "a"))]
    for proc, w in zip(workers, "ab"):
        _wait(proc, tmp_path, w)

    trials = optuna.load_study(study_name=name, storage=RDBStorage(postgres.url)).get_trials()
    assert len(trials) == 2 * k
    assert sorted(t.number for t in trials) == list(range(2 * k))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.user_attrs["worker"] for t in trials) == ["a"] * k + ["b"] * k
    assert all(t.value == OPS[t.params["op"]] + t.params["n"] for t in trials)
    assert {type(v) for t in trials for v in t.params.values()} == {str, int}


def test_killed_worker_leaves_running_trial_that_heartbeat_fails_and_retries(postgres, tmp_path, request):
    """PostgreSQL + heartbeat: a worker SIGKILLed inside its third trial leaves that trial RUNNING (its two
    finished trials stay COMPLETE). Once no heartbeat came for grace_period, fail_stale_trials(study) turns it
    FAIL and RetryHeartbeatStaleTrialCallback adds a WAITING copy (same params, system attr failed_trial), which
    the next optimize() picks up first and completes: nothing of the killed worker's work is lost."""
    name = _study_name(request)

    def storage() -> RDBStorage:
        return RDBStorage(postgres.url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))

    optuna.create_study(study_name=name, storage=storage())
    killed = _kill_mid_trial(tmp_path, {"kind": "rdb", "url": postgres.url, "study": name, "worker": "victim",
                                        "heartbeat": [HEARTBEAT_S, GRACE_S], "hang_at_call": 3, "n_trials": 5})
    study = optuna.load_study(study_name=name, storage=storage())
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    assert killed == trials[2].number == 2
    interrupted = trials[2].params

    fail_stale_trials(study)                     # within the grace period: still someone's running trial
    assert study.get_trials()[2].state == TrialState.RUNNING
    time.sleep(GRACE_S + HEARTBEAT_S + 0.5)
    fail_stale_trials(study)                     # what optimize() also does before each new trial
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.WAITING]
    retry = trials[3]
    assert retry.params == interrupted and retry.user_attrs == {"worker": "victim"}
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 2
    fail_stale_trials(study)                     # a second sweep (another worker) retries nothing twice
    assert len(study.get_trials()) == 4

    study.optimize(_objective, n_trials=2)      # the retry first, then a new trial
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert trials[3].params == interrupted and trials[3].value == OPS[interrupted["op"]] + interrupted["n"]
    assert RetryHeartbeatStaleTrialCallback.retry_history(trials[3]) == [2]


def test_optimize_alone_recovers_a_killed_workers_trial(postgres, tmp_path, request):
    """The recipe without an explicit sweep: a second worker process whose RDBStorage has the same heartbeat
    settings, started after the grace period, fails the stale trial and re-runs its parameters as part of its
    own optimize(n_trials=2): 2 of the victim's trials COMPLETE, 1 FAIL, its retry and one new trial COMPLETE."""
    name = _study_name(request)
    optuna.create_study(study_name=name, storage=RDBStorage(postgres.url))
    cfg = {"kind": "rdb", "url": postgres.url, "study": name, "heartbeat": [HEARTBEAT_S, GRACE_S]}
    _kill_mid_trial(tmp_path, {**cfg, "worker": "victim", "hang_at_call": 3, "n_trials": 5})
    time.sleep(GRACE_S + HEARTBEAT_S + 0.5)
    survivor = _spawn(tmp_path, {**cfg, "worker": "survivor", "n_trials": 2})
    _wait(survivor, tmp_path, "survivor")
    trials = optuna.load_study(study_name=name, storage=RDBStorage(postgres.url)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert trials[3].params == trials[2].params and trials[3].system_attrs["failed_trial"] == 2
    assert [t.user_attrs["worker"] for t in trials] == ["victim"] * 3 + ["survivor"] * 2


def test_without_heartbeat_a_killed_trial_stays_running(postgres, tmp_path, request):
    """Without heartbeat_interval nothing ever ends a killed worker's trial: fail_stale_trials is a no-op and
    later workers' optimize() leaves it RUNNING (it never counts as finished, it is never retried)."""
    name = _study_name(request)
    optuna.create_study(study_name=name, storage=RDBStorage(postgres.url))
    cfg = {"kind": "rdb", "url": postgres.url, "study": name}
    _kill_mid_trial(tmp_path, {**cfg, "worker": "victim", "hang_at_call": 1, "n_trials": 2})
    time.sleep(GRACE_S + HEARTBEAT_S + 0.5)
    study = optuna.load_study(study_name=name, storage=RDBStorage(postgres.url))
    fail_stale_trials(study)
    study.optimize(_objective, n_trials=1)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.COMPLETE]


def reap_stale_trials(study: "optuna.Study", grace_s: float) -> list[int]:
    """JournalStorage's stand-in for fail_stale_trials + RetryHeartbeatStaleTrialCallback: every RUNNING trial
    whose "heartbeat" user attr (time.time(), refreshed by the objective) is older than grace_s becomes FAIL and
    its params are enqueued again (user attr retry_of). Any worker may call it before optimize(); when two race,
    study.tell fails for the loser, so a trial is retried once. Returns the trial numbers it failed."""
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat")
        if beat is None or time.time() - beat <= grace_s:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue                              # another worker reaped it first
        study.enqueue_trial(t.params, user_attrs={**t.user_attrs, "retry_of": t.number})
        reaped.append(t.number)
    return reaped


def test_journal_file_storage_has_no_heartbeat_and_needs_its_own(tmp_path, request):
    """Optuna 5.0.0's JournalStorage (JournalFileBackend) has no heartbeat: it is not a BaseHeartbeat, rejects
    heartbeat_interval (TypeError) and fail_stale_trials leaves a killed worker's trial RUNNING after any wait.
    With a heartbeat user attr refreshed by the objective and reap_stale_trials, the same guarantee as on
    PostgreSQL holds: finished trials stay, the interrupted one is FAIL and its params run again."""
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    path = str(tmp_path / "journal.log")
    storage = JournalStorage(JournalFileBackend(path))
    assert not isinstance(storage, BaseHeartbeat) and not is_heartbeat_enabled(storage)
    with pytest.raises(TypeError):
        JournalStorage(JournalFileBackend(path), heartbeat_interval=HEARTBEAT_S)  # type: ignore[call-arg]

    name = _study_name(request)
    optuna.create_study(study_name=name, storage=storage)
    beat_s, grace_s = 0.5, 2.0
    _kill_mid_trial(tmp_path, {"kind": "journal", "path": path, "study": name, "worker": "victim",
                               "journal_heartbeat": beat_s, "hang_at_call": 3, "n_trials": 5})
    study = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(path)))
    assert reap_stale_trials(study, grace_s) == []                  # its heartbeat is fresh
    time.sleep(grace_s + 1.0)
    fail_stale_trials(study)                                        # Optuna's own sweep: a no-op on a journal
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    interrupted = trials[2].params

    assert reap_stale_trials(study, grace_s) == [2]
    assert reap_stale_trials(study, grace_s) == []                  # retried once only
    study.optimize(_objective, n_trials=2)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert trials[3].params == interrupted and trials[3].user_attrs["retry_of"] == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]                 # closed again when the with block ends: connection refused


def test_unreachable_storage_fails_fast_with_operational_error(postgres):
    """A URL whose port is closed: RDBStorage() raises sqlalchemy.exc.OperationalError (psycopg2's "Connection
    refused" inside) in well under a second, without retrying; the message names the host and port."""
    url = postgres.url.replace(f":{postgres.port}/", f":{_closed_port()}/")
    start = time.monotonic()
    with pytest.raises(sqlalchemy_exc.OperationalError, match="Connection refused") as info:
        RDBStorage(url)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, elapsed
    assert "127.0.0.1" in str(info.value)


def test_silent_server_fails_after_connect_timeout(postgres):
    """A port that accepts TCP but never answers (a hung or firewalled-by-DROP server looks like this, or a
    blackholed address): without a timeout libpq waits for ever; with engine_kwargs={"connect_args":
    {"connect_timeout": 2}} RDBStorage() raises sqlalchemy.exc.OperationalError ("timeout expired") after ~2 s."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)                          # the kernel completes the handshake; nobody ever speaks
        url = postgres.url.replace(f":{postgres.port}/", f":{silent.getsockname()[1]}/")
        start = time.monotonic()
        with pytest.raises(sqlalchemy_exc.OperationalError, match="timeout expired"):
            RDBStorage(url, engine_kwargs={"connect_args": {"connect_timeout": 2}})
        elapsed = time.monotonic() - start
    assert 1.5 < elapsed < 10.0, elapsed
