"""Where a command may write: never over a run's own files, never over data it did not write.

``repnas report RUN --out RUN/search.yaml`` used to replace the run's config with HTML. Output
paths are checked before any work: a report (one file) may replace an earlier report (an HTML
file) but not a run's files, its input, a folder, or any other existing file; an export (a folder)
may not go inside a run directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from repnas.errors import UserError

#: what a run directory holds (docs/design.md, "The run directory")
RUN_FILES = frozenset({"search.yaml", "study.db", "journal.log", "trials.parquet", "trials", "samplers", "logs",
                       "ray", "ray_trials.json", ".owner", ".lock", "study.db.claims-lock",
                       "journal.log.claims-lock"})


def enclosing_run(path: str | Path) -> Path | None:
    """The run directory ``path`` is (or lies inside), if any."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if (folder / "search.yaml").is_file():
            return folder
    return None


def check_output_file(out: str | Path, inputs: Iterable[str | Path] = (), kind: str = "HTML") -> None:
    """Refuse an output file that is a folder, an input, a run's own file, or a non-``kind`` file."""
    out = Path(out)
    flag = f"--out {out}"
    if out.is_dir():
        raise UserError(f"{flag} is a directory; give a file name (e.g. report.html)")
    resolved = out.resolve()
    for source in inputs:
        if isinstance(source, str) and "://" in source:
            continue
        if Path(source).resolve() == resolved:
            raise UserError(f"{flag} is one of the inputs; write the report elsewhere")
    run = enclosing_run(out.parent)
    if run is not None and resolved.relative_to(run).parts[:1] and resolved.relative_to(run).parts[0] in RUN_FILES:
        raise UserError(f"{flag} would overwrite {resolved.relative_to(run)} of run directory {run}")
    if out.exists() and kind == "HTML" and not _looks_like_html(out):
        raise UserError(f"{flag} exists and is not an HTML report; it is left as it is")


def check_output_dir(out: str | Path) -> None:
    """Refuse an output folder that is a file or lies inside a run directory."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    run = enclosing_run(out)
    if run is not None:
        raise UserError(f"--out {out} is inside run directory {run}; export to a folder outside it")


def _looks_like_html(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(512).lstrip().lower()
    except OSError:
        return False
    return head.startswith((b"<!doctype html", b"<html")) or (not head and path.stat().st_size == 0)
