"""Optuna storages chosen by a URL (design §6), shared by ``lesionbench tune`` and the distributed ``run`` grid.

- ``sqlite:///FILE``: workers on one machine (the default of ``tune``: ``<workdir>/tune/optuna.db``);
- ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB``: workers on many machines (the driver, psycopg2, comes
  with the ``postgres`` extra: ``pip install 'lesionbench[postgres]'``); ``mysql://`` works the same way;
- ``journal:FILE``: Optuna's journal file (one machine, or a shared file system). It has no heartbeat: a
  crashed worker's trial stays RUNNING instead of being retried.

On the RDB storages every running trial records a heartbeat. A trial whose heartbeat is older than the
grace period (its worker crashed or lost its machine) is failed by the next worker that looks and queued
again with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``).

A study is created once: the worker that creates it sets it up (MLflow parent run, queued cells) and
marks it ready with a user attribute; workers that find it already created wait for that mark.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from lesionbench.config import ConfigError

RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
#: A crashed worker's trial is queued again at most this many times.
MAX_RETRY = 3


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns that heartbeats are experimental: we print our own lines."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def default_storage_url(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir) / 'tune' / 'optuna.db').resolve()}"


def display_url(url: str) -> str:
    """The URL with its password hidden (it is printed and logged to MLflow)."""
    if url.startswith("journal:"):
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def _scheme(url: str) -> str:
    head = url.split(":", 1)[0] if ":" in url else ""
    return head.split("+", 1)[0].lower()


def check_url(url: str) -> str:
    """The URL's kind (``rdb`` or ``journal``), or a ConfigError naming the URL and what is accepted."""
    scheme = _scheme(url)
    if scheme == "journal":
        if not url[len("journal:"):].lstrip("/"):
            raise ConfigError(f"--storage {url!r}: a journal storage needs a file, e.g. journal:///path/to/study.log")
        return "journal"
    if scheme in RDB_SCHEMES and "://" in url:
        return "rdb"
    raise ConfigError(
        f"--storage {url!r}: not a storage URL; use sqlite:///FILE, postgresql://USER@HOST:PORT/DB (many machines), "
        "mysql://... or journal:FILE"
    )


def with_installed_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy's default changed (psycopg2 before 2.1, psycopg 3
    since): use whichever of the two is installed."""
    import importlib.util

    if not url.startswith("postgresql://"):
        return url
    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{dialect}://" + url[len("postgresql://"):]
    return url  # SQLAlchemy's error names the missing driver


def open_storage(url: str, heartbeat_s: int | None = 60,
                 on_stale: Callable[[Any, Any], None] | None = None):
    """An Optuna storage for ``url``; on RDB storages with heartbeats, stale trials are retried.

    ``on_stale(study, trial)`` is told about each stale trial before it is queued again (e.g. to close its
    MLflow run). Opening is retried a few times: workers starting together may race to create the tables.
    """
    import optuna
    import sqlalchemy.exc

    quiet_optuna()
    if check_url(url) == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len("journal:"):].removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))

    given, url = url, with_installed_driver(url)
    kwargs: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    if _scheme(url) == "sqlite":
        file = url.split(":///", 1)[-1]
        if file and file != ":memory:":
            Path(file).parent.mkdir(parents=True, exist_ok=True)
        engine["connect_args"] = {"timeout": 60}  # several processes write one file: wait for the lock
    else:
        engine["pool_pre_ping"] = True  # a server connection may drop during a long trial
    if heartbeat_s:
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

        def stale(study, trial):
            if on_stale is not None:
                on_stale(study, trial)
            retry(study, trial)

        kwargs.update(heartbeat_interval=int(heartbeat_s), grace_period=2 * int(heartbeat_s),
                      heartbeat_stale_trial_callback=stale)
    last: Exception | None = None
    for _ in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
        except ImportError as exc:
            raise ConfigError(
                f"--storage {display_url(given)}: the database driver is not installed ({exc.__cause__ or exc}); "
                "for PostgreSQL: pip install 'lesionbench[postgres]'"
            ) from None
        except sqlalchemy.exc.ArgumentError as exc:
            raise ConfigError(f"--storage {display_url(given)}: {exc}") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            last = exc  # another worker creating the tables, or a server still starting
            time.sleep(0.5 + random.random())
    raise ConfigError(f"--storage {display_url(given)}: cannot open the storage: {str(last).splitlines()[0]}")


def create_once(storage, name: str, setup: Callable[[Any], str], ready_attr: str, *, sampler=None, pruner=None,
                direction: str = "maximize", wait_s: float = 300.0) -> tuple[Any, bool]:
    """Create study ``name`` and run ``setup(study)`` once; a worker that finds it created waits for the
    setup's mark (``ready_attr``, set to what ``setup`` returns). Returns (study, whether this worker
    created it)."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, sampler=sampler,
                                    pruner=pruner, load_if_exists=False)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        deadline = time.monotonic() + wait_s
        while ready_attr not in study.user_attrs:
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"study {name!r} exists but its set-up never finished (the worker that created it stopped "
                    f"first?); delete the study or choose another --study"
                ) from None
            time.sleep(0.5)
        return study, False
    study.set_user_attr(ready_attr, setup(study))
    return study, True


def check_study_spec(study, spec: dict[str, Any], what: str = "--study") -> None:
    """Refuse to add trials to a study made for something else (another method, objective, data, split)."""
    stored = study.user_attrs.get("spec")
    if stored is None:
        return
    diff = {k: (stored.get(k), v) for k, v in spec.items() if stored.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: study has {a!r}, this command {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(f"study {study.study_name!r} was created for other settings ({lines}); "
                          f"choose another {what} or repeat the study's own command")


def retried_from(trial) -> int | None:
    """The number of the crashed trial this one repeats, if any (a running Trial or a FrozenTrial)."""
    attrs = trial.storage.get_trial_system_attrs(trial._trial_id) if hasattr(trial, "storage") else trial.system_attrs
    return attrs.get("failed_trial")


def retried_numbers(trials) -> set[int]:
    """Numbers of failed trials that were queued again after their worker crashed."""
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
    return out


def fail_stale(study) -> None:
    """Fail (and queue again) the trials of crashed workers; a no-op without heartbeats."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def has_heartbeat(storage) -> bool:
    return bool(getattr(storage, "get_heartbeat_interval", lambda: None)())


@contextmanager
def heartbeat(storage, trial_id: int):
    """Record a trial's heartbeat in the background while the block runs (RDB storages with heartbeats)."""
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat():
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a transient database error: the next beat tries again
                pass
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def pop_waiting_trial(study):
    """Take one queued (WAITING) trial for this worker, or None when the queue is empty. The storage's
    state change is atomic, so two workers never take the same trial."""
    from optuna.trial import TrialState

    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return storage.get_trial(trial._trial_id)
        except Exception:  # another worker took it first
            continue
    return None
