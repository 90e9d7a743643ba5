"""The Optuna study of a `toolkit tune` search: where it is stored, how it is opened, and how a
search that died is recovered.

- Storage: a journal file, ARTIFACTS/tune/STUDY/journal.log, by default (Optuna's JournalStorage:
  an append-only log, safe against kill -9, readable by `optuna-dashboard`); `--storage URL` any
  storage Optuna opens (an RDB such as postgresql://... for several machines on one study).
  A storage that cannot be opened is an ArtifactError (exit 4), before any training.
- Identity: the study records its configuration (space, budgets, cost, fidelities, data); reopening
  it with another one is a usage error (a new --study name starts a new search).
- Recovery: a trial still RUNNING whose owner process (host:pid, a user attribute) is gone, or one
  marked interrupted (Ctrl-C), is failed and its parameters enqueued once, so the next trial reruns
  it from its start (its training resumes from its own checkpoint: same candidate, same run id).
  Finished trials are never rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from toolkit.core.errors import ArtifactError, UsageError

JOURNAL = "journal.log"
OWNER = "owner"
INTERRUPTED = "interrupted"


def study_name(config: dict[str, Any]) -> str:
    """A name derived from the configuration: the same command resumes the same study."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"tune-{digest}"


def open_study(*, name: str, storage: str | None, folder: Path, config: dict[str, Any], sampler: Any) -> Any:
    """Create or reopen the study (two objectives: accuracy up, cost down)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if storage is None:
            from optuna.storages.journal import JournalFileBackend

            folder.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
        else:
            backend = storage
        study = optuna.create_study(study_name=name, storage=backend, sampler=sampler, load_if_exists=True,
                                    directions=["maximize", "minimize"])
    except (ImportError, ModuleNotFoundError) as exc:
        raise ArtifactError(f"cannot open the tune storage {storage or folder / JOURNAL}: {exc} (install the "
                            "database driver, or leave --storage out for the journal file)") from None
    except Exception as exc:  # Optuna and its drivers raise many kinds: each is "cannot open"
        where = storage or str(folder / JOURNAL)
        raise ArtifactError(f"cannot open the tune storage {where}: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:300]}") from None
    recorded = study.user_attrs.get("config")
    if recorded is None:
        study.set_user_attr("config", json.loads(json.dumps(config, default=str)))
    elif recorded != json.loads(json.dumps(config, default=str)):
        raise UsageError(f"study {name!r} was started with another space, budget, cost or fidelities; "
                         "give a new --study name, or the same options as before")
    return study


def claim(trial: Any) -> None:
    """Mark the trial as this process's (for recovery after a kill)."""
    trial.set_user_attr(OWNER, f"{socket.gethostname()}:{os.getpid()}")


def _owner_gone(owner: str | None) -> bool:
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: it may still be running
    if int(pid) == os.getpid():
        return True  # this process is starting the search: whatever it ran before is gone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(study: Any) -> list[int]:
    """Fail the trials a dead search left running, and enqueue each interrupted trial's parameters
    once; returns the numbers of the trials that will be rerun."""
    from optuna.trial import TrialState

    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _owner_gone(t.user_attrs.get(OWNER)):
            storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    rerun = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        key = f"rerun:{t.number}"
        if t.user_attrs.get(INTERRUPTED) and key not in study.user_attrs:
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number}, skip_if_exists=False)
            study.set_user_attr(key, True)
            rerun.append(t.number)
    return rerun


def counted(study: Any) -> int:
    """Trials that count toward --trials: every finished one but those interrupted (rerun)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in study.get_trials(deepcopy=False, states=done) if not t.user_attrs.get(INTERRUPTED))
