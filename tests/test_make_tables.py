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


def test_verdict_reads_the_claim_from_the_difference_and_its_ci():
    verdict = _make_tables().verdict
    assert verdict(1.0, 0.5).startswith("**holds**")
    assert verdict(-1.0, 0.5).startswith("**reversed**")
    assert verdict(0.2, 0.5).startswith("trend only")
    assert verdict(-0.2, 0.5).startswith("not seen")
    # "A ≥ B" holds unless A is CI-separated below B.
    assert verdict(-0.2, 0.5, at_least=True).startswith("holds")
    assert verdict(-1.0, 0.5, at_least=True).startswith("**reversed**")


def test_seed_paired_uses_only_shared_seeds_and_a_t_interval():
    seed_paired = _make_tables().seed_paired

    def runs(values):
        return {"runs": [{"seed": s, "acc": v} for s, v in values.items()]}

    mean, ci, n = seed_paired(runs({0: 0.50, 1: 0.91, 2: 0.92}), runs({1: 0.90, 2: 0.90, 3: 0.10}),
                              lambda run: run["acc"])
    assert n == 2 and abs(mean - 1.5) < 1e-9
    assert abs(ci - 12.71 * 0.5 ** 0.5 / 2 ** 0.5) < 1e-9  # t(1 dof) * std / sqrt(n), std of (1, 2)


def test_evidence_picks_each_method_on_validation_never_on_test(monkeypatch):
    make_tables = _make_tables()

    def entry(val, test):
        return {"runs": [{"seed": s, "val": {"final_accuracy": val}, "test": {"final_accuracy": test}}
                         for s in (0, 1)]}

    files = {"self_boosting_converge": {"datasets": {"glyphs": {"methods": {"metadistiller": entry(0.90, 0.80)}}}},
             "self_boosting_converge_tuned": {"datasets": {"glyphs": {"methods": {"metadistiller": entry(0.80, 0.99)}}}}}
    monkeypatch.setattr(make_tables, "load", files.get)
    chosen = make_tables.self_boosting_chosen("glyphs")
    assert chosen["metadistiller"][0] == "default knobs"  # higher validation, lower test
    assert "self_distill" not in chosen
