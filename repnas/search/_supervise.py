"""The frame around a search: validate, own the run directory, start it atomically, stop cleanly.

``repnas search`` runs its driver inside :func:`supervised_search`, so the guarantees hold for
both backends without touching them: nothing is written before every check passed
(:mod:`~repnas.search._validate`); one process owns the run (:mod:`~repnas.runs._lock`); a new
run appears complete or not at all (:mod:`~repnas.runs._start`), after which the search is a
resume of the new, empty run; SIGTERM stops it like Ctrl-C; a Ctrl-C or a failure of the machine
ends in one line that says how to continue.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from repnas._infra import InfrastructureError, describe, is_infrastructure
from repnas._procs import sigterm_as_exception
from repnas.runs._rundir import SearchConfig


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, with the line to print."""


@contextlib.contextmanager
def supervised_search(search: SearchConfig, out: str | Path, resume: bool) -> Iterator[bool]:
    """Yields the ``resume`` flag to hand the driver (always True: a new run is created empty first)."""
    from repnas.runs._start import existing_run, new_run
    from repnas.search._validate import forget_data, validate_search

    out = Path(out)
    validate_search(search, out, resume)
    try:
        with sigterm_as_exception(), (existing_run(out) if resume else new_run(search, out)):
            try:
                yield True
            except KeyboardInterrupt as exc:
                what = "terminated" if "SIGTERM" in str(exc) else "interrupted"
                raise Interrupted(f"{what}; `repnas search --resume --out {out}` continues the search "
                                  "(the running trials start again)") from None
            except Exception as exc:
                if not is_infrastructure(exc):
                    raise
                if "--resume" in str(exc):  # it says how to continue already (a dead worker)
                    raise
                raise InfrastructureError(f"{describe(exc)}; the search stopped and the trial was not "
                                          f"recorded; fix the cause, then `repnas search --resume --out "
                                          f"{out}` continues") from exc
    finally:
        forget_data()
