"""Where an `edgec tune` study lives (Optuna storage: a journal file, SQLite, PostgreSQL), who works on it, and
how the trials of a worker that died are taken back."""
from __future__ import annotations

import datetime
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from .errors import BackendUnavailable, ConfigError, brief
from .fileio import pid_alive

OBJECTIVES = ("latency_ms", "drop_points", "artifact_bytes")
ORPHAN_S = 30  # a running trial that names no worker this long after its start: its worker died at once
HEARTBEAT_S, GRACE_S = 20, 90  # RDB storages: a worker silent for GRACE_S has died; its trial is retried
_SCHEMA_RACE_ATTEMPTS = 4


def open_study(optuna: Any, storage: str | None, name: str, out: Path, seed: int) -> Any:
    """The study `name` in `storage` (created or resumed): a journal file in OUT by default, a journal file at a
    path, or an Optuna RDB URL (heartbeats: a dead worker's trial is retried by the others). BackendUnavailable
    when the storage can't be reached."""
    with warnings.catch_warnings():  # `group` (conditional spaces) and heartbeats are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                             n_startup_trials=8)
        return _create_study(optuna, storage, name, out, sampler)


def _create_study(optuna: Any, storage: str | None, name: str, out: Path, sampler: Any) -> Any:
    try:
        store = _storage(optuna, storage, out)
        return optuna.create_study(storage=store, study_name=name, directions=["minimize"] * len(OBJECTIVES),
                                   sampler=sampler, load_if_exists=True)
    except (ConfigError, BackendUnavailable):
        raise
    except Exception as e:  # SQLAlchemy/driver errors: unreachable server, bad credentials, missing driver
        raise BackendUnavailable(f"The tuning storage {redacted(storage)} can't be used: {brief(e)}. Check that the "
                                 "server is up and the URL right, or leave --storage out for a study file in OUT.") from e


def _storage(optuna: Any, storage: str | None, out: Path) -> Any:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage is None or "://" not in storage:
        path = Path(storage) if storage else out / "tune.journal"
        if path.is_dir():
            raise ConfigError(f"--storage {storage}: a folder; give a journal file path or an Optuna URL.")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if not storage.startswith(("sqlite:", "postgresql", "mysql")):
        raise ConfigError(f"--storage {storage}: give an Optuna URL (sqlite:///path.db, postgresql://user@host/db, "
                          "mysql://...) or a journal file path.")
    engine = {"connect_args": {"connect_timeout": 10}} if storage.startswith(("postgresql", "mysql")) else None
    def open_rdb() -> Any:
        return optuna.storages.RDBStorage(
            storage, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2))

    for attempt in range(_SCHEMA_RACE_ATTEMPTS - 1):
        try:
            return open_rdb()
        except Exception as e:  # workers starting together on a new database race to create Optuna's tables
            if type(e).__name__ not in ("IntegrityError", "ProgrammingError"):
                raise
            time.sleep(1.0 + attempt)
    return open_rdb()


def redacted(storage: str | None) -> str:
    """The URL without its password."""
    if not storage or "@" not in storage or "://" not in storage:
        return str(storage)
    scheme, rest = storage.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else storage


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reclaim_dead_trials(optuna: Any, study: Any) -> list[int]:
    """Trials left RUNNING by a process of this machine that is gone (killed mid-trial): each is marked FAIL
    and its configuration queued again, so a rerun retries it; so is one that names no worker ORPHAN_S after its
    start. Returns their numbers. (Other machines' dead workers: the RDB storage's heartbeats.)"""
    host = socket.gethostname()
    reclaimed = []
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        name, _, pid = worker.rpartition(":")
        # an orphan: its worker died between Optuna creating it and the objective's first line naming the worker
        orphan = not worker and trial.datetime_start and (now - trial.datetime_start).total_seconds() > ORPHAN_S
        if not orphan and (name != host or not pid.isdigit() or pid_alive(int(pid))):
            continue
        try:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, RuntimeError):  # another worker reclaimed it first
            continue
        params = trial.params or trial.system_attrs.get("fixed_params") or {}  # an orphan suggested nothing yet
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
        reclaimed.append(trial.number)
    return reclaimed
