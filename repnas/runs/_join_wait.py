"""``--join`` started before the starter: wait for the study and its recorded config.

Why: a SLURM job array or a Kubernetes Job starts every worker of a search at the same moment,
with the same command; Optuna's answer is ``create_study(load_if_exists=True)``, Ray's workers wait
for their head. A joiner here waits (``--join-timeout``, default 10 minutes) until the study
exists *and* carries ``repnas.search`` (the starter creates the study, then writes its config onto
it: between the two a joiner would read a study without a config), printing one line of what it
waits for. Past the timeout it is the old refusal, one line.
"""

from __future__ import annotations

import sys
import time

from repnas.errors import UserError
from repnas.runs._study import SEARCH_ATTR

DEFAULT_JOIN_TIMEOUT = 600.0


def study_config(storage: str, study_name: str):
    """The study's recorded ``repnas.search`` dict; None while the study or its config is missing."""
    import optuna

    from repnas.runs._storage import open_storage

    backend = open_storage(storage, heartbeat=False)
    summaries = optuna.get_all_study_summaries(backend, include_best_trial=False)
    summary = next((s for s in summaries if s.study_name == study_name), None)
    return None if summary is None else summary.user_attrs.get(SEARCH_ATTR)


def wait_for_study(storage: str, study_name: str, timeout: float, poll: float = 1.0) -> dict:
    """The config recorded on ``study_name`` in ``storage``, once the study exists with it; waits up
    to ``timeout`` s."""
    deadline = time.monotonic() + max(0.0, timeout)
    said = False
    while True:
        try:
            recorded = study_config(storage, study_name)
            if recorded is not None:
                return recorded
        except UserError:
            raise
        except Exception as exc:  # the server not up yet either: wait for it too
            if time.monotonic() >= deadline:
                raise UserError(f"storage {storage} is unreachable ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        if time.monotonic() >= deadline:
            waited = f" after waiting {timeout:g} s" if timeout > 0 else ""
            raise UserError(f"no study {study_name!r} in {storage}{waited}; start it first with "
                            f"repnas search --space ... --storage {storage} --study {study_name}")
        if not said:
            print(f"join: waiting up to {timeout:g} s for study {study_name!r} and its search config in {storage}",
                  flush=True, file=sys.stdout)
            said = True
        time.sleep(min(poll, max(0.05, deadline - time.monotonic())))
