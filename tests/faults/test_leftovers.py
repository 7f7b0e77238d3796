"""What killed commands leave beside their outputs is removed by the next command of the kind in that folder.

A leftover names its process (``.<stem>.<pid>.tmp<suffix>``, ``.<out>.export-<pid>``): one of a dead
process goes, one of a live process stays.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from fault_helpers import repnas_cmd, subprocess_env

from repnas.cli import main


@pytest.fixture
def pids():
    """A dead pid (a reaped child) and a live one (a sleeping child)."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield dead.pid, live.pid
    live.kill()
    live.wait()


def _killed(argv: list[str], point: str) -> None:
    proc = subprocess.run(repnas_cmd(*argv), env=subprocess_env(REPNAS_FAULT=point), capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def test_a_killed_reports_temporary_goes_with_the_next_report_in_its_folder(finished_run, tmp_path, pids):
    dead, live = pids
    _killed(["report", str(finished_run), "--out", str(tmp_path / "report.html"), "-q"], "atomic:replace@1")
    (left,) = tmp_path.glob(".report.*.tmp.html")  # the killed report's whole page, under no final name
    (tmp_path / f".old.{dead}.tmp.html").write_text("")  # a report killed as it began to write
    (tmp_path / f".other.{live}.tmp.html").write_text("")  # a report still writing
    (tmp_path / f".data.{dead}.tmp.csv").write_text("x")  # not a report's
    assert main(["report", str(finished_run), "--out", str(tmp_path / "second.html"), "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".data.{dead}.tmp.csv", f".other.{live}.tmp.html",
                                                          "second.html"], left


def test_a_resume_removes_what_killed_writers_left_in_the_run(run_copy, pids, capsys):
    dead, live = pids
    samplers = run_copy / "samplers"
    planted = {samplers / f".worker0.{dead}.tmp.pkl": False, samplers / f".worker3.{dead}.tmp.pkl": False,
               samplers / f".worker1.{live}.tmp.pkl": True, run_copy / f".trials.{dead}.tmp.parquet": False,
               run_copy / "trials" / "0" / f".checkpoint.{dead}.tmp.pt": False}
    for path in planted:
        path.write_bytes(b"")
    assert main(["search", "--resume", "--out", str(run_copy), "--quiet"]) == 0, capsys.readouterr().err
    assert {path: path.exists() for path in planted} == planted  # only the live process's is kept


def test_an_export_removes_dead_staging_folders_beside_any_out_of_its_folder(finished_run, tmp_path, pids):
    """A killed export's staging folder (12 MB) stayed beside an --out that was never exported to again."""
    dead, live = pids
    _killed(["export", str(finished_run), "--top", "1", "--out", str(tmp_path / "first")], "export:staged")
    assert [p.name for p in tmp_path.glob(".first.export-*")]
    (tmp_path / f".third.export-{live}").mkdir()  # an export still running
    (tmp_path / f".fourth.export-{dead}.old").mkdir()  # a killed swap's old folder: back to its --out
    assert main(["export", str(finished_run), "--top", "1", "--out", str(tmp_path / "second")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".third.export-{live}", "fourth", "second"]


def test_remove_dead_temporaries_keeps_live_writers_and_other_files(tmp_path, pids):
    from repnas._io import remove_dead_temporaries

    dead, live = pids
    names = [f".a.{dead}.tmp.pt", f".a.{live}.tmp.pt", f".b.{dead}.tmp.pt", f".c.d.{dead}.tmp", "a.pt",
             f".a.{dead}.tmp.pt.extra", f"a.{dead}.tmp.pt"]
    for name in names:
        (tmp_path / name).write_text("")
    assert [p.name for p in remove_dead_temporaries(tmp_path, target="a.pt")] == [f".a.{dead}.tmp.pt"]
    assert sorted(p.name for p in remove_dead_temporaries(tmp_path)) == [f".b.{dead}.tmp.pt", f".c.d.{dead}.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".a.{live}.tmp.pt", "a.pt", f".a.{dead}.tmp.pt.extra", f"a.{dead}.tmp.pt"])
    assert remove_dead_temporaries(tmp_path / "missing") == []
