"""The README's result tables are generated from benchmarks/results/*.json, never edited by hand."""
import errno
import importlib.util
import os
import subprocess
import sys

import pytest

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


def test_a_new_empty_marker_pair_is_filled_and_unmatched_markers_are_named(monkeypatch):
    make_tables = _make_tables()
    monkeypatch.setattr(make_tables, "TABLES", {"alpha": lambda: "| a |", "beta": lambda: "| b |"})
    readme = "x\n<!-- table:alpha -->\n<!-- /table:alpha -->\ny\n<!-- table:beta -->\nold\n<!-- /table:beta -->\n"
    assert make_tables.unmatched_markers(readme) == []
    rendered = make_tables.render(readme)
    assert rendered == ("x\n<!-- table:alpha -->\n| a |\n<!-- /table:alpha -->\n"
                        "y\n<!-- table:beta -->\n| b |\n<!-- /table:beta -->\n")
    assert make_tables.render(rendered) == rendered
    problems = make_tables.unmatched_markers("<!-- table:alpha -->\n<!-- table:gamma -->\n<!-- /table:gamma -->\n")
    assert problems == ["table 'beta' has no <!-- table:beta --> marker pair in README.md or docs/benchmarks.md",
                        "marker table:gamma names no table in benchmarks/make_tables.py TABLES",
                        "marker table:alpha has no closing <!-- /table:alpha -->"]


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


def test_a_row_searched_with_its_own_flags_is_paired_trial_by_trial_with_the_plain_search(monkeypatch):
    make_tables = _make_tables()
    space = ["dist.gamma=log:0.5:50", "dist.temperature_init=choice:3.0,7.0"]
    values = [{"dist.gamma": 1.5, "dist.temperature_init": 3.0}, {"dist.gamma": 20.0, "dist.temperature_init": 7.0},
              {"dist.gamma": 4.0, "dist.temperature_init": 3.0}]
    plain = {"tuning": {"dist": {"space": space, "trials": [
        {"trial": f"{i:02d}", "values": v, "val_accuracy": a} for i, (v, a) in enumerate(zip(values, (0.30, 0.40, 0.50)))]}}}
    mine_trials = [{"trial": "00", "values": values[0], "val_accuracy": 0.32, "last_epoch_logs": {"temperature": 1e-7}},
                   {"trial": "01", "values": values[1], "val_accuracy": 0.43, "last_epoch_logs": {"temperature": 6.5}},
                   # another sampled value under the same id (another space or seed) is never paired
                   {"trial": "02", "values": {**values[2], "dist.gamma": 9.0}, "val_accuracy": 0.90}]
    table = {"row_overrides": {"dist": ["dist.teacher_embedding_units=(512,512)"]},
             "tuning": {"cosine": {"reused_search": {"table": "plain"}},
                        "dist": {"space": space, "trials": mine_trials}}}
    monkeypatch.setattr(make_tables, "load", {"plain": plain}.get)
    text = "\n".join(make_tables.same_trials_with_and_without_row_flags(table, "mlp"))
    # the plain search logged no temperature (older files): "–" in its column
    assert "| 00 | gamma=1.5, temperature_init=3 | 30.00 | 32.00 | +2.00 | 3 | – | 1e-07 |" in text
    assert "| 01 | gamma=20, temperature_init=7 | 40.00 | 43.00 | +3.00 | 7 | – | 6.5 |" in text
    assert "| 02 |" not in text
    # mean +2.5, t(1 dof) * std(2, 3) / sqrt(2) = 12.71 * 0.5 = 6.355 (prints as 6.35)
    assert "2 of 3 trials paired; with the flags higher in 2; mean difference +2.50 ± 6.35 points" in text
    # a search whose space differs, or a row without a search here, gives no section
    table["tuning"]["dist"]["space"] = space[:1]
    assert make_tables.same_trials_with_and_without_row_flags(table, "mlp") == []


def test_trials_pair_with_the_reuse_searches_from_table_showing_only_the_flags_added(monkeypatch):
    make_tables = _make_tables()
    space = ["dist.gamma=log:0.5:50"]
    teacher = ["dist.teacher_embedding_units=(512,512)"]
    # the source had itself reused cosine's search from a third table: its own dist search is what pairs
    source = {"row_overrides": {"dist": teacher},
              "tuning": {"cosine": {"reused_search": {"table": "plain"}},
                         "dist": {"space": space, "trials": [
                             {"trial": "00", "values": {"dist.gamma": 2.0, "dist.temperature_init": 3.0},
                              "val_accuracy": 0.40, "last_epoch_logs": {"temperature": 2e-7}}]}}}
    plain = {"tuning": {"dist": {"space": space, "trials": [
        {"trial": "00", "values": {"dist.gamma": 2.0, "dist.temperature_init": 3.0}, "val_accuracy": 0.10}]}}}
    table = {"reuse_searches_from": "source", "row_overrides": {"dist": teacher + ["dist.learn_temperature=False"]},
             "tuning": {"cosine": {"reused_search": {"table": "plain"}},
                        "dist": {"space": space, "trials": [
                            {"trial": "00", "values": {"dist.gamma": 2.0, "dist.temperature_init": 3.0},
                             "val_accuracy": 0.45, "last_epoch_logs": {"temperature": 3.0}}]}}}
    monkeypatch.setattr(make_tables, "load", {"plain": plain, "source": source}.get)
    text = "\n".join(make_tables.same_trials_with_and_without_row_flags(table, "fixed"))
    assert "with this row's flags (`dist.learn_temperature=False`)" in text
    # T where each ended: the source's learned T fell to ~0, this row's was held at 3
    assert "| 00 | gamma=2, temperature_init=3 | 40.00 | 45.00 | +5.00 | 3 | 2e-07 | 3 |" in text
    # a row whose flags are all the source's own adds nothing to compare
    table["row_overrides"]["dist"] = teacher
    assert make_tables.same_trials_with_and_without_row_flags(table, "fixed") == []


def test_first_step_table_with_grappler_off_shows_off_over_on_for_first_call_and_steady_step():
    step = {"first_call_s": 10.0, "trace_s": 4.0, "rest_of_first_call_s": 6.0, "step_s": 0.4, "graph_ops": 100,
            "grappler_s": 2.0, "grappler_by_pass_s": {"remapper": 2.0}}
    off = dict(step, first_call_s=8.0, step_s=0.5, grappler_s=0.0, grappler_by_pass_s={},
               first_call_ratio=10.0 / 8.0, step_ratio=0.4 / 0.5)
    r = {"config_file": "c.py", "batch_size": 128, "steps": 30, "load_average_before": 0.1,
         "steps_measured": {"meta": step}, "against": {"grappler": "off", "repeats": 3, "steps_measured": {"meta": off}}}
    text = _make_tables().draw_first_step(r)
    head, _, row = [line for line in text.splitlines() if line.startswith("|")]
    assert head.endswith("| first call, Grappler off | steady step, Grappler off | first call, off ÷ on "
                         "| steady step, off ÷ on |")
    assert row == "| meta | 10.0 s | 4.0 s | 2.0 s | 4.0 s | 400 ms | 100 | 8.0 s | 500 ms | 0.80 | 1.25 |"
    assert "Grappler on and off" in text and "3 fresh process(es)" in text


def test_serving_breakdown_shows_each_step_against_the_one_before():
    kinds = {"savedmodel": 90.0, "keras_predict": 10.0, "keras_final": 100.0, "final_chunked": 80.0,
             "module_logits": 80.0, "module_serve": 60.0, "savedmodel_logits": 40.0}
    row = {"batch": 64, "savedmodel_vs_keras_predict": 9.0, "savedmodel_vs_keras_final": 0.9,
           **{k: {"images_per_s": v, "peak_rss_mb": 700.0} for k, v in kinds.items()}}
    r = {"network": {"arch": "resnet18", "width": 0.125, "dataset": "fashion_mnist"}, "repeats": 5, "rounds": 3,
         "min_seconds": 1.0, "breakdown": True, "results": [row]}
    lines = [line for line in _make_tables().serving_table(r).splitlines() if line.startswith("| 64 |")]
    assert lines[1] == "| 64 | 100/s | 80/s (0.80×) | 80/s (1.00×) | 60/s (0.75×) | 90/s (1.50×) | 40/s (0.50×) | 1.00× |"
    assert "fastest of 3 rounds" in _make_tables().serving_table(r)


def test_serving_fewshot_table_shows_requests_queries_and_the_ratio():
    kind = lambda per_call: {"requests_per_s": 1 / per_call, "queries_per_s": 75 / per_call,  # noqa: E731
                             "peak_rss_mb": 1400.0, "seconds_per_call": per_call}
    r = {"fewshot_workdir": "/runs/ens", "fewshot_run": {"method": "progressive", "dataset": "glyphs",
                                                                    "features_dir": "/runs/features"},
         "repeats": 5, "rounds": 3, "min_seconds": 1.0,
         "fewshot": [{"request": "5-way 1-shot", "way": 5, "queries": 75, "fewshot_savedmodel": kind(0.01),
                      "fewshot_keras": kind(0.02), "savedmodel_vs_keras": 2.0}]}
    row = [line for line in _make_tables().serving_fewshot_table(r).splitlines() if line.startswith("| 5-way")][0]
    assert row == ("| 5-way 1-shot (5 classes) | 75 | 100.0 requests/s (7500 queries/s), 1400 MB | "
                   "50.0 requests/s (3750 queries/s), 1400 MB | 2.00× |")


def test_small_data_regime_is_its_own_evidence_column_with_default_knobs(monkeypatch):
    make_tables = _make_tables()

    def entry(final, exit_1):
        return {"runs": [{"seed": s, "val": {"final_accuracy": 0.5},
                          "test": {"final_accuracy": final + d,
                                   **{f"exit_{k}_accuracy": exit_1 + d for k in (1, 2, 3)}}}
                         for s, d in ((0, 0.0), (1, 0.01), (2, 0.02))]}

    small = {"datasets": {"fashion_mnist": {"methods": {"self_distill": entry(0.80, 0.70),
                                                        "metadistiller": entry(0.82, 0.69)}}}}
    monkeypatch.setattr(make_tables, "load", {"self_boosting_small_data": small}.get)
    table = make_tables.evidence_self_boosting_table()
    header = table.splitlines()[0]
    assert "tfkd, Fashion-MNIST (2k images, 100 epochs), default knobs" in header
    md_sd = next(line for line in table.splitlines() if line.startswith("| MD > SD, final exit"))
    assert "+2.00 ± 0.00 (n=3): **holds**" in md_sd
    exit_1 = next(line for line in table.splitlines() if line.startswith("| MD's exit 1 > SD's exit 1"))
    assert "-1.00 ± 0.00 (n=3): **reversed**" in exit_1


def test_exit_soft_terms_pairs_each_exit_with_dsns_in_tfkd_and_the_reference(monkeypatch):
    make_tables = _make_tables()
    seeds = ((0, 0.0), (1, 0.01), (2, 0.03))

    def tfkd(exit_accuracy):
        return {"runs": [{"seed": s, "test": {f"exit_{k}_accuracy": exit_accuracy + d for k in (1, 2, 3)}}
                         for s, d in seeds]}

    def reference(exit_accuracy):  # the reference's records name the heads without "_accuracy"
        return {"runs": [{"seed": s, "test": {f"exit_{k}": exit_accuracy + d for k in (1, 2, 3)}} for s, d in seeds]}

    files = {"self_boosting_small_data": {"datasets": {"fashion_mnist": {"methods": {
                 "dsn": tfkd(0.80), "self_distill": tfkd(0.81), "metadistiller": tfkd(0.77)}}}},
             "reference_small_data": {"methods": {"dsn": reference(0.70), "metadistiller": reference(0.72)}}}
    monkeypatch.setattr(make_tables, "load", files.get)
    lines = make_tables.exit_soft_terms_table().splitlines()
    assert lines[0] == ("| exit | soft targets of the exits | tfkd, Fashion-MNIST (2k images, 100 epochs) | "
                        "the PyTorch reference, Fashion-MNIST (2k images, 100 epochs) |")
    md_exit_2 = next(line for line in lines if line.startswith("| exit 2 | MD"))
    assert "| -3.00 ± 0.00 (n=3) | +2.00 ± 0.00 (n=3) |" in md_exit_2
    sd_exit_1 = next(line for line in lines if line.startswith("| exit 1 | SD"))
    assert "| +1.00 ± 0.00 (n=3) | not measured |" in sd_exit_1  # the reference has no SD runs here
    assert not any("| MD with `" in line for line in lines)  # no variant was run: no variant rows

    # A MetaDistiller variant of the convergent table is paired with that regime's DSN only.
    variant_name, _, _, change = next(v for v in make_tables.CONVERGE_VARIANTS if v[1] == "metadistiller")
    files["self_boosting_converge"] = {"datasets": {"fashion_mnist": {"methods": {"dsn": tfkd(0.85)}}}}
    files[variant_name] = {"datasets": {"fashion_mnist": {"methods": {"metadistiller": tfkd(0.84)}}}}
    lines = make_tables.exit_soft_terms_table().splitlines()
    variant_exit_3 = next(line for line in lines if line.startswith(f"| exit 3 | MD with `{change}`"))
    assert variant_exit_3.endswith("| -1.00 ± 0.00 (n=3) | not measured | not measured |")


def test_a_single_shared_seed_gets_no_interval_and_no_verdict(monkeypatch):
    make_tables = _make_tables()
    assert make_tables.paired_cell(float("nan"), float("inf"), 0) == "no shared seeds"
    assert make_tables.paired_cell(2.2, float("inf"), 1) == "+2.20 (n=1: one shared seed, no CI yet)"
    assert make_tables.paired_cell(2.2, 0.5, 2) == "+2.20 ± 0.50 (n=2)"

    def entry(final, seeds):
        return {"runs": [{"seed": s, "test": {head: final for head in ("final", "exit_1", "exit_2", "exit_3")}}
                         for s in seeds]}

    monkeypatch.setattr(make_tables, "load", {"reference_small_data": {"methods": {
        "metadistiller": entry(0.83, [0]), "self_distill": entry(0.81, [0, 1])}}}.get)
    row = next(line for line in make_tables.evidence_self_boosting_table().splitlines()
               if line.startswith("| MD > SD, final exit"))
    assert row.endswith("| +2.00 (n=1: one shared seed, no CI yet) |") and "inf" not in row


def test_reference_table_shows_the_last_epoch_beside_the_chosen_checkpoint(monkeypatch):
    """The reference chooses its checkpoint on a small validation split; its last epoch's accuracy
    (no choice) is shown beside it, so selection noise can be told from a real drop."""
    make_tables = _make_tables()

    def run(seed, best, last):
        return {"seed": seed, "best_epoch": 9, "test": {"final": best}, "last_test": {"final": last}}

    ref = {"config_file": "configs/x.py", "reference_args": [], "threads": 1, "torch": "t",
           "reference_sha256": "0" * 64, "methods": {"baseline": {
               "runs": [run(0, 0.80, 0.83), run(1, 0.82, 0.85)],
               "final": {"mean": 0.81, "std": 0.01, "n": 2}, "seconds": {"mean": 60.0}}}}
    ours = {"datasets": {"fashion_mnist": {"config_file": "configs/x.py", "methods": {}}}}
    monkeypatch.setattr(make_tables, "load", {"self_boosting_small_data": ours, "reference_small_data": ref}.get)
    table = make_tables.reference_converge_table("self_boosting_small_data", "reference_small_data")
    header, _, baseline = table.splitlines()[:3]
    assert header.split(" | ")[3] == "PyTorch final exit, last epoch"
    assert baseline.split(" | ")[3] == "84.00"


def test_reference_edit_table_pairs_the_edit_by_seed_over_the_edited_seeds(monkeypatch):
    """The edited reference's runs against the shipped reference's runs of the same seeds (same
    subset and draws): the difference is paired by seed, and shipped seeds the edit did not run are
    left out of both columns."""
    make_tables = _make_tables()

    def run(seed, final):
        test = {"final": final, "exit_1": final, "exit_2": final, "exit_3": final}
        return {"seed": seed, "best_epoch": 9, "test": test, "last_test": test}

    args = ["--epochs", "100"]
    shipped = {"reference_args": args, "methods": {
        "baseline": {"runs": [run(0, 0.80), run(1, 0.82), run(5, 0.10)]},
        "self_distill": {"runs": [run(0, 0.79), run(1, 0.80), run(5, 0.10)]}}}
    edited = {"reference_args": args, "torch": "t", "reference_sha256": "1" * 64,
              "reference_edits": {"why": "Grey borders.", "edits": [{"file": "f.py", "old": "a\n", "new": "b\n"}]},
              "methods": {"baseline": {"runs": [run(0, 0.84), run(1, 0.86)]},
                          "self_distill": {"runs": [run(0, 0.85), run(1, 0.88)]}}}
    monkeypatch.setattr(make_tables, "load", {"shipped": shipped, "edited": edited}.get)
    lines = make_tables.reference_edit_table("shipped", "edited", "").splitlines()
    baseline, sd = (line.split(" | ") for line in lines[2:4])
    assert baseline[1:4] == ["81.00 ± 1.41", "85.00 ± 1.41", "+4.00 ± 0.00 (n=2)"]
    assert sd[1:4] == ["79.50 ± 0.71", "86.50 ± 2.12", "+7.00 ± 12.71 (n=2)"]
    assert sd[5].startswith("-1.50 ± 6.3") and sd[6].startswith("+1.50 ± 6.3")  # shipped seed 5 left out
    assert "in `f.py`, `a` → `b`. Why: Grey borders." in lines[5]
    assert "```diff" not in lines

    # A multi-line edit is shown as a diff block, its lines and indentation kept.
    edited["reference_edits"]["edits"].append({"file": "g.py", "old": "    x = 1\n", "new": "    x = 1\n    y = 2\n"})
    lines = make_tables.reference_edit_table("shipped", "edited", "").splitlines()
    assert "in `f.py`, `a` → `b`; in `g.py`, the diff below. Why: Grey borders." in lines[5]
    start = lines.index("```diff")
    assert lines[start + 1:start + 5] == ["-    x = 1", "+    x = 1", "+    y = 2", "```"]

    # With MetaDistiller beside SD, MD − SD at the chosen checkpoint and after the last epoch.
    md = [run(0, 0.87), run(1, 0.90)]
    for r in md:
        r["last_test"] = {h: v - 0.03 for h, v in r["test"].items()}
    edited["methods"]["metadistiller"] = {"runs": md}
    lines = make_tables.reference_edit_table("shipped", "edited", "").splitlines()
    assert "| checkpoint chosen on validation | +2.00 ± 0.00 (n=2) | +2.00 ± 0.00 (n=2) |" in "\n".join(lines)
    assert "| after the last epoch | -1.00 ± 0.00 (n=2) |" in "\n".join(lines)


def test_reference_step_match_table_pairs_the_two_implementations_by_seed(monkeypatch):
    make_tables = _make_tables()

    def run(seed, tfkd, reference):
        return {"seed": seed, "torch": "t", "initial_logits_max_abs_diff": 1.2e-5, "initial_logits_scale": 18.0,
                "first_step_loss": {"tfkd": 2.5, "reference": 2.5}, "tfkd_test_final": tfkd,
                "reference_test_final": reference, "tfkd_epoch_loss": [2.0, 1.0, 0.5, 0.4],
                "reference_epoch_loss": [2.1, 1.1, 0.6, 0.5]}

    result = {"regime": {"config_file": "c.py", "epochs": 4, "learning_rate": 0.1, "lr_boundaries": [2, 3],
                         "batch_size": 128, "max_train_examples": 2000},
              "runs": [run(0, 0.87, 0.86), run(1, 0.88, 0.86)], "reference_edits": None}
    monkeypatch.setattr(make_tables, "load", {"lockstep": result}.get)
    lines = make_tables.reference_step_match_table("lockstep").splitlines()
    assert "epoch 1" in lines[0] and "epoch 2" in lines[0] and "epoch 3" in lines[0] and "epoch 4" in lines[0]
    assert lines[2].split(" | ")[-3:] == ["87.00", "86.00", "+1.00 |"]
    assert "**+1.50 ± 6.36 (n=2)** points" in lines[5] and "The reference as shipped." in lines[5]
    monkeypatch.setattr(make_tables, "load", {}.get)
    assert make_tables.reference_step_match_table("lockstep").startswith("_Not measured yet")


def test_the_reference_without_its_last_batch_is_a_column_once_every_method_ran_in_it(monkeypatch):
    make_tables = _make_tables()

    def entry(final):
        return {"runs": [{"seed": s, "test": {head: final + d for head in ("final", "exit_1", "exit_2", "exit_3")}}
                         for s, d in ((0, 0.0), (1, 0.01), (2, 0.02))]}

    edited = {"methods": {"baseline": entry(0.85), "self_distill": entry(0.86)}}
    monkeypatch.setattr(make_tables, "load", {"reference_small_data_drop_last_batch": edited}.get)
    assert make_tables.self_boosting_default_columns() == []  # half the methods: no column yet
    edited["methods"].update(dsn=entry(0.855), metadistiller=entry(0.87))
    table = make_tables.evidence_self_boosting_table()
    assert "without its last batch of 8 images, default knobs |" in table.splitlines()[0]
    md_sd = next(line for line in table.splitlines() if line.startswith("| MD > SD, final exit"))
    assert md_sd.endswith("| +1.00 ± 0.00 (n=3): **holds** (CI above 0) |")


def test_a_small_data_variant_gets_exit_rows_paired_with_the_small_data_dsn_only(monkeypatch):
    make_tables = _make_tables()

    def tfkd(exit_accuracy):
        return {"runs": [{"seed": s, "test": {f"exit_{k}_accuracy": exit_accuracy + d for k in (1, 2, 3)}}
                         for s, d in ((0, 0.0), (1, 0.01), (2, 0.03))]}

    name, _, _, change = make_tables.SMALL_DATA_VARIANTS[0]
    files = {"self_boosting_converge": {"datasets": {"fashion_mnist": {"methods": {"dsn": tfkd(0.90)}}}},
             "self_boosting_small_data": {"datasets": {"fashion_mnist": {"methods": {"dsn": tfkd(0.80)}}}},
             name: {"datasets": {"fashion_mnist": {"methods": {"metadistiller": tfkd(0.79)}}}}}
    monkeypatch.setattr(make_tables, "load", files.get)
    lines = make_tables.exit_soft_terms_table().splitlines()
    row = next(line for line in lines if line.startswith(f"| exit 1 | MD with `{change}`"))
    assert row.endswith("| not measured | -1.00 ± 0.00 (n=3) |")  # 10k column: not run there


def test_exit_head_table_pairs_md_with_sd_within_each_exit_design_over_the_chain_seeds(monkeypatch):
    make_tables = _make_tables()

    def entry(final, exit_1, seeds=(0, 1, 2)):
        return {"runs": [{"seed": s, "seconds": 60, "val": {"final_accuracy": 0.8},
                          "test": {"final_accuracy": final + d, "exit_1_accuracy": exit_1 + d,
                                   "exit_2_accuracy": exit_1 + d, "exit_3_accuracy": exit_1 + d}}
                         for s, d in zip(seeds, (0.0, 0.01, 0.02, 0.03))]}

    chain = {"datasets": {"fashion_mnist": {"methods": {"self_distill": entry(0.85, 0.78, (0, 1)),
                                                        "metadistiller": entry(0.86, 0.80, (0, 1))}}}}
    default = {"datasets": {"fashion_mnist": {"methods": {"self_distill": entry(0.87, 0.83, (0, 1, 2, 3)),
                                                          "metadistiller": entry(0.87, 0.81, (0, 1, 2, 3))}}}}
    monkeypatch.setattr(make_tables, "load", {make_tables.EXIT_HEAD_RUNS: chain,
                                              "self_boosting_small_data": default}.get)
    lines = make_tables.exit_head_table().splitlines()
    default_sd = next(line for line in lines if line.startswith("| residual bottleneck (default) | SD"))
    assert default_sd.endswith("| 1 min | 0, 1 |")  # only the seeds the chain exits ran
    paired = lines[lines.index("| MD − SD, paired by seed | final exit | exit 1 | exit 2 | exit 3 |") + 2:]
    assert paired[0].startswith("| plain conv chain | +1.00 ± 0.00 (n=2) | +2.00 ± 0.00 (n=2) |")
    assert paired[1].startswith("| residual bottleneck (default) | +0.00 ± 0.00 (n=2) | -2.00 ± 0.00 (n=2) |")


def test_teacher_student_converge_pairs_claims_by_seed_and_names_reused_runs(monkeypatch):
    """A partly filled convergent teacher-student table: each Table-3 claim is the seed-paired
    difference (a verdict only with an interval), a claim whose method has no run yet says so, and
    the rows taken from the self-boosting table are named as such."""
    make_tables = _make_tables()

    def entry(accuracies, **extra):
        runs = [{"seed": s, "test_final_accuracy": a, "val_final_accuracy": a, "git_revision": "abc", **extra}
                for s, a in accuracies.items()]
        return {"runs": runs, "test_final_accuracy": make_tables.summarize(list(accuracies.values())),
                "mean_seconds": 600.0, "uses_teacher": "teacher_test_accuracy" in extra}

    reused = {"reused_from": "benchmarks/results/self_boosting_converge.json"}
    monkeypatch.setattr(make_tables, "load", {"teacher_student_converge": {
        "config": "configs/bench_fashion_mnist_converge.py", "teacher_overrides": ["model.arch=resnet34"],
        "jobs": 2, "threads": 1, "teacher": {"test_final_accuracy": 0.92, "seconds": 1800.0},
        "methods": {"baseline": entry({0: 0.90, 1: 0.91, 2: 0.90}, **reused),
                    "kd": entry({0: 0.91, 1: 0.92}, teacher_test_accuracy=0.92),
                    "metadistiller": entry({0: 0.905, 1: 0.905, 2: 0.90}, **reused)}}}.get)
    table = make_tables.teacher_student_converge_table()
    rows = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| ")}
    assert rows["| KD > baseline"].endswith("| +1.00 ± 0.00 (n=2): **holds** (CI above 0) |")
    assert rows["| MD > KD"].endswith("| -1.00 ± 6.36 (n=2): not seen (CI includes 0) |")
    assert rows["| MD > AT"].endswith("| not measured yet |")
    assert rows["| KD (Hinton)"].endswith("| 10 min | 40 min |")  # the teacher's 30 minutes added
    assert "`benchmarks/results/self_boosting_converge.json`" in table


def test_evidence_teacher_student_has_a_column_per_regime_measured(monkeypatch):
    """The evidence summary's Table-3 block: one column per regime whose results file exists, each
    claim paired within its own regime, and each regime's teacher named under it."""
    make_tables = _make_tables()

    def entry(accuracies):
        return {"runs": [{"seed": s, "test_final_accuracy": a} for s, a in accuracies.items()]}

    def result(config, teacher, kd):
        return {"config": config, "teacher_overrides": ["model.arch=resnet34"],
                "teacher": {"test_final_accuracy": teacher},
                "methods": {"baseline": entry({0: 0.80, 1: 0.81}), "kd": entry(kd)}}

    results = {"teacher_student_converge": result("configs/a.py", 0.92, {0: 0.81, 1: 0.82})}
    monkeypatch.setattr(make_tables, "load", results.get)
    one = make_tables.evidence_teacher_student_table().splitlines()
    assert one[0] == "| paper's claim (Table 3) | Fashion-MNIST (10k images, 40 epochs) |"
    results["teacher_student_small_data"] = result("configs/b.py", 0.85, {0: 0.79, 1: 0.80})
    rows = {line.split(" | ")[0]: line for line in make_tables.evidence_teacher_student_table().splitlines()
            if line.startswith("| ")}
    assert rows["| paper's claim (Table 3)"].endswith(
        "| Fashion-MNIST (10k images, 40 epochs) | Fashion-MNIST (2k images, 100 epochs) |")
    assert rows["| KD > baseline"] == ("| KD > baseline | +1.00 ± 0.00 (n=2): **holds** (CI above 0) "
                                       "| -1.00 ± 0.00 (n=2): **reversed** (CI below 0) |")
    assert rows["| MD > KD"].endswith("| not measured yet | not measured yet |")
    footnote = make_tables.evidence_teacher_student_table()
    assert "`configs/a.py`, its teacher 92.00 %" in footnote and "`configs/b.py`, its teacher 85.00 %" in footnote


def test_a_write_that_fails_halfway_leaves_the_old_document(monkeypatch, tmp_path, capsys):
    """A disk that fills while the tables are written leaves each document as it was, not cut off
    where the write stopped, and no temp file beside it; the error is one line, exit 2."""
    make_tables = _make_tables()
    doc = tmp_path / "doc.md"
    old = "x\n<!-- table:alpha -->\nold\n<!-- /table:alpha -->\n"
    doc.write_text(old)
    monkeypatch.setattr(make_tables, "DOCUMENTS", (str(doc),))
    monkeypatch.setattr(make_tables, "TABLES", {"alpha": lambda: "| new |\n" * 10000})
    monkeypatch.setattr(sys, "argv", ["make_tables.py"])
    real_fdopen = os.fdopen

    class FillsUp:
        """A file whose write stores half of the text, then fails as a full disk does."""
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(make_tables.io.os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode)))
    with pytest.raises(SystemExit) as exit_:
        make_tables.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (f"error: no space left on device while writing {doc}; free some space and "
                                       "run the command again (a training run resumes from its last checkpoint)\n")
    assert doc.read_text() == old
    assert os.listdir(tmp_path) == ["doc.md"]
