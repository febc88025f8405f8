"""The README's result tables are generated from benchmarks/results/*.json, never edited by hand."""
import importlib.util
import os
import subprocess
import sys

from tests.conftest import REPO


def _make_tables():
    spec = importlib.util.spec_from_file_location("make_tables", os.path.join(REPO, "benchmarks", "make_tables.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_committed_results():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "make_tables.py"), "--check"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_wall_time_leaves_out_resumed_runs_and_says_so():
    wall_time = _make_tables()._wall_time
    runs = [{"seconds": 600, "resumed": False}, {"seconds": 1200, "resumed": False},
            {"seconds": 60, "resumed": True}]  # a resumed run's clock covers only its last part
    assert wall_time(runs) == "15 min (n=2, 1 resumed)"
    assert wall_time(runs[:2]) == "15 min"
    assert wall_time(runs[2:]) == "–"
