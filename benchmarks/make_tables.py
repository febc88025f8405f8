#!/usr/bin/env python3
"""Regenerates the result tables of README.md and docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/make_tables.py          # rewrites the marked blocks in both documents
    python benchmarks/make_tables.py --check  # exit 1 if either is out of date

A table sits between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``; missing result files
leave a "not measured yet" line instead of numbers.
"""
import json
import math
import os
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tfkd import io  # noqa: E402  (TensorFlow-free)
from tfkd.errors import UserError  # noqa: E402

RESULTS = os.path.join(HERE, "results")
README = os.path.join(REPO, "README.md")
# Where tables are drawn: the README's summary and quick-start figures, the benchmark details.
DOCUMENTS = (README, os.path.join(REPO, "docs", "benchmarks.md"))

METHOD_LABELS = {"baseline": "baseline", "dsn": "DSN (hard only)", "self_distill": "SD (hard + final soft)",
                 "metadistiller": "MD (hard + generated soft)"}


def load(name):
    path = os.path.join(RESULTS, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def provenance(r):
    m = r.get("machine", {})
    return (f"Measured {r.get('date_utc', '?')} on {m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores, "
            f"GPUs: {', '.join(m.get('gpus') or []) or 'none'}), TensorFlow {m.get('tensorflow', '?')}, "
            f"git {short_rev(r.get('git_revision', '?'))}. Command: `{r.get('command', '?')}`.")


def short_rev(rev):
    sha, _, dirty = rev.partition("+")
    return sha[:12] + ("+" + dirty if dirty else "")


def run_revisions(r):
    """The code each training run used (aggregation may happen at a later revision)."""
    revisions = sorted({short_rev(run.get("git_revision", "?")) for d in r["datasets"].values()
                        for e in d["methods"].values() for run in e["runs"]})
    return f" Runs trained at git {', '.join(revisions)} (per-run commands in the JSON)."


def summarize(values):
    """{mean, n, std} of accuracies (fractions), the summary ``pct`` shows; None for no values."""
    if not values:
        return None
    return {"mean": statistics.mean(values), "n": len(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def pct(s):
    """mean ± std (%) of a summary; one value has no std to show."""
    if not s:
        return "–"
    return f"{100 * s['mean']:.2f}" if s.get("n") == 1 else f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"


NUM_CLASSES = {"fashion_mnist": 10, "glyphs": 761}  # the entropy of a uniform target is log(classes)


def from_result(name, command):
    """A table drawn from benchmarks/results/<name>.json, or a note saying how to measure it."""
    def wrap(draw):
        def table():
            r = load(name)
            return f"_Not measured yet: run `{command}`._" if r is None else draw(r)
        table.__doc__ = draw.__doc__
        return table
    return wrap


@from_result("self_boosting_table", "python benchmarks/self_boosting_table.py")
def self_boosting_table(r):
    lines = []
    for dataset, d in r["datasets"].items():
        methods = d["methods"]
        if not methods:
            continue
        any_run = next(iter(methods.values()))["runs"][0]
        lines.append(f"**{dataset}** (`{d['config_file']}`; {any_run['num_train_examples']} training images, "
                     f"{any_run['num_test_examples']} test images; test accuracy %, mean ± std over seeds, "
                     f"checkpoint chosen on validation)\n")
        lines.append("| method | final exit | ensemble of exits | seeds |")
        lines.append("| --- | --- | --- | --- |")
        for name in ("baseline", "dsn", "self_distill", "metadistiller"):
            if name in methods:
                e = methods[name]
                seeds = ", ".join(str(run["seed"]) for run in e["runs"])
                lines.append(f"| {METHOD_LABELS[name]} | {pct(e.get('final'))} | "
                             f"{pct(e.get('ensemble')) if name != 'baseline' else '– (no exits)'} | {seeds} |")
        lines.append("")
    lines.append(provenance(r) + run_revisions(r))
    return "\n".join(lines)


def thread_pools(r):
    """"; TensorFlow's thread pools: ..." for results that recorded them (older ones did not)."""
    threads = r.get("machine", {}).get("threads")
    if not threads:
        return ""
    def count(key):
        return f"{threads[key]}" if threads[key] else "TensorFlow's default"
    return f"; TensorFlow's thread pools: intra-op {count('intra_op')}, inter-op {count('inter_op')}"


def step_cost_table(r):
    c = r["config"]
    lines = [f"`{r['config_file']}` ({c['arch']} width {c['width']}, {c['dataset']} {c['image_shape']}, "
             f"global batch {c['batch_size']}); median of {r['repeats']} repeats of {r['steps']} steps"
             + ("; every method and phase timed in turns, round by round, steps 2-N of each fit (a fit's start-up "
                "excluded)" if r.get("interleaved") else "") + thread_pools(r) + ".\n",
             "| method | training images/s | relative to baseline | relative to self_distill | first step "
             "(tracing included) |",
             "| --- | --- | --- | --- | --- |"]
    sd = r["methods"].get("self_distill", {}).get("images_per_s")
    for name, m in r["methods"].items():
        rel_sd = f"{sd / m['images_per_s']:.2f}× the time" if sd else "–"
        firsts = [(p, v["first_step_s"]) for p, v in m.get("phases", {}).items() if "first_step_s" in v]
        first = ", ".join(f"{p} phase {t:.1f} s" if p != "None" else f"{t:.1f} s" for p, t in firsts) or "–"
        rel_base = f"{m['relative_to_baseline']:.2f}" if m.get("relative_to_baseline") else "–"  # baseline not timed
        lines.append(f"| {name} | {m['images_per_s']:.0f} | {rel_base} | {rel_sd} | {first} |")
    cycle = r.get("metadistiller_cycle")
    if cycle:
        lines.append("")
        lines.append(f"MetaDistiller over one M-epoch cycle (one meta epoch, then M − 1 main epochs). Measured "
                     f"steps: meta epoch {cycle['meta_step_s'] * 1e3:.1f} ms (a meta step after every step), "
                     + (f"{cycle['meta_step_every2_s'] * 1e3:.1f} ms (after every 2nd step), "
                        if cycle.get("meta_step_every2_s") else "")
                     + (f"{cycle['meta_step_shared_s'] * 1e3:.1f} ms (every step, the real update sharing the "
                        f"lookahead's inner gradient: `share_inner_gradient=True`), "
                        if cycle.get("meta_step_shared_s") else "")
                     + (f"{cycle['meta_step_every4_shared_s'] * 1e3:.1f} ms (shared, after every 4th step), "
                        if cycle.get("meta_step_every4_shared_s") else "")
                     + f"main epoch {cycle['main_step_s'] * 1e3:.1f} ms, self_distill "
                     f"{cycle['self_distill_step_s'] * 1e3:.1f} ms. Wall-clock relative to self_distill (target ≤ 1.3×):\n")
        by_round = cycle.get("cycle_ratios_by_round")
        if by_round:  # each round's own ratio (its steps timed under the same load): the noise
            lines.append("| M | meta epoch | cycle cost vs self_distill | each round's ratio: median (min–max) |")
            lines.append("| --- | --- | --- | --- |")
        else:
            lines.append("| M | meta epoch | cycle cost vs self_distill |")
            lines.append("| --- | --- | --- |")
        labels = {"meta_every_steps=1": "a meta step after every step",
                  "meta_every_steps=2": "a meta step after every 2nd step",
                  "share_inner_gradient": "every step a meta step sharing the inner gradient",
                  "meta_every_steps=4,share_inner_gradient": "every 4th step a meta step sharing the inner gradient",
                  "meta_batch_size=64": "a meta step after every step, on 64 of the 128 D_train / D_test examples",
                  "meta_batch_size=32": "a meta step after every step, on 32 of the 128 D_train / D_test examples",
                  "fusion_channels=4": "a meta step after every step, the generator half as wide (4 fused channels)"}
        for key, ratio in cycle["cycle_ratios"].items():
            m, variant = key.split(",", 1)
            rounds = by_round.get(key) if by_round else None
            spread = (f" {statistics.median(rounds):.2f}× ({min(rounds):.2f}–{max(rounds):.2f}) |"
                      if rounds else "")
            lines.append(f"| {m.split('=')[1]} | {labels.get(variant, variant)} | {ratio:.2f}× |{spread}")
    ref = r.get("reference")
    if ref:
        lines += ["", f"The independent PyTorch reference (`{ref['script']}`, PyTorch {ref['torch']}, "
                  f"{ref['threads']} threads; the same network, width, input and batch on random inputs, its own "
                  f"clock around each step), timed in the same rounds. Its MetaDistiller meta-phase step is its "
                  f"student step plus its meta step, as tfkd's is:", "",
                  "| step | tfkd images/s | PyTorch images/s | tfkd / PyTorch |", "| --- | --- | --- | --- |"]
        for key, v in ref["steps"].items():
            lines.append(f"| {key} | {v['tfkd_images_per_s']:.0f} | {v['reference_images_per_s']:.0f} | "
                         f"{v['ratio']:.2f}× |")
    lines.append("")
    lines.append(f"Input pipeline alone (tf.data, same augmentation): **{r['pipeline_images_per_s']:.0f} images/s**.")
    lines.append("")
    lines.append(provenance(r))
    return "\n".join(lines)


def generator_lr_table():
    """MetaDistiller with other generator learning rates (self_boosting_table.py runs with
    --override=metadistiller.generator_lr=X --name=metadistiller_generator_lr_X) next to the
    default (1e-3) runs of the main table, same seeds."""
    import glob

    main = load("self_boosting_table")
    files = sorted(glob.glob(os.path.join(RESULTS, "metadistiller_generator_lr_*.json")))
    if main is None or not files:
        return "_Not measured yet._"
    lines = ["| dataset | generator lr | seeds | final exit | ensemble | meta loss, first → last meta epoch |",
             "| --- | --- | --- | --- | --- | --- |"]
    for path in files:
        with open(path) as f:
            other = json.load(f)
        lr = os.path.basename(path)[len("metadistiller_generator_lr_"):-len(".json")]
        for dataset, d in other["datasets"].items():
            seeds = {run["seed"] for run in d["methods"].get("metadistiller", {}).get("runs", [])}
            base_runs = [r for r in main["datasets"].get(dataset, {}).get("methods", {})
                         .get("metadistiller", {}).get("runs", []) if r["seed"] in seeds]
            for label, runs in (("1e-3 (default)", base_runs), (lr, d["methods"]["metadistiller"]["runs"])):
                if not runs:
                    continue
                final = sum(r["test"]["final_accuracy"] for r in runs) / len(runs)
                ens = sum(r["test"]["ensemble_accuracy"] for r in runs) / len(runs)
                meta = "; ".join(f"{a:.2f} → {b:.2f}" for a, b in
                                 (r["meta_loss_first_last"] for r in runs if "meta_loss_first_last" in r)) or "–"
                lines.append(f"| {dataset} | {label} | {', '.join(str(r['seed']) for r in runs)} | "
                             f"{100 * final:.2f} | {100 * ens:.2f} | {meta} |")
        lines.append("")
        lines.append(provenance(other) + run_revisions(other))
    return "\n".join(lines)


FEWSHOT_LABELS = {"pixels_1nn": "1-NN on raw pixels (floor)",
                  "features_prototypes": "backbone features, cosine prototypes, nothing meta-trained",
                  "cosine": "`cosine`", "gen": "`gen` (+ G(x, z, q))", "dist": "`dist` (fixed many-shot teacher)",
                  "dist_up": "Dist↑ `progressive`, strengthen the teacher",
                  "dist_down": "Dist↓ `progressive`, weaken the student",
                  "dist_down_ensemble": "Dist↓ ensemble of 4"}


def fewshot_table(dataset, name=None):
    r = load(name or f"fewshot_table_{dataset}")
    if r is None:
        return f"_Not measured yet: run `python benchmarks/fewshot_table.py --dataset={dataset}`._"
    some = next(iter(r["methods"].values()))["test"]
    episodic = [p for p in some if not p.startswith("all_way")]
    shots = sorted({int(p.split("_")[2][:-4]) for p in some if p.startswith("all_way")})
    head = "| | " + " | ".join(p.replace("_", " ") for p in episodic) + " |"
    lines = [f"Novel classes, mean accuracy (%) over {len(r['seeds'])} "
             f"meta-training seeds ± 95% CI over the episodes of seed {r['seeds'][0]} (the floors have no seed); "
             f"every row sees the same seeded episodes.", "", head, "|---" * (len(episodic) + 1) + "|"]
    rows = []
    for name, values in r.get("floors", {}).items():
        rows.append((FEWSHOT_LABELS.get(name, name), [f"{100 * values[p]['mean']:.2f} ± {100 * values[p]['ci95']:.2f}"
                                                       if p in values else "–" for p in episodic]))
    for method, e in r["methods"].items():
        rows.append((FEWSHOT_LABELS.get(method, method),
                     [f"{100 * e['test'][p]['mean']:.2f} ± {100 * e['ci95_first_seed'][p]:.2f}" for p in episodic]))
    for method, diffs in r.get("paired_vs_cosine", {}).items():
        rows.append((f"{method} − cosine, paired per episode (seed-averaged)",
                     [f"{100 * diffs[p]['mean']:+.2f} ± {100 * diffs[p]['ci95']:.2f}" if p in diffs else "–"
                      for p in episodic]))
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    if shots:
        lines += ["", "All-way protocol (all novel classes at once), top-1 / top-5 (%), mean over seeds of the "
                  "average over support draws:", "",
                  "| | " + " | ".join(f"k={k}" for k in shots) + " |", "|---" * (len(shots) + 1) + "|"]
        feats = r.get("floors", {}).get("features_prototypes", {}).get("all_way")
        if feats:
            lines.append(f"| {FEWSHOT_LABELS['features_prototypes']} | " + " | ".join(
                f"{100 * feats[str(k)]['top1']:.2f} / {100 * feats[str(k)]['top5']:.2f}" for k in shots) + " |")
        for method, e in r["methods"].items():
            t = e["test"]
            lines.append(f"| {FEWSHOT_LABELS.get(method, method)} | " + " | ".join(
                f"{100 * t[f'all_way_{k}shot_top1']['mean']:.2f} / {100 * t[f'all_way_{k}shot_top5']['mean']:.2f}"
                for k in shots) + " |")
    bb = r["backbone"]
    steps = r["steps"]
    fs_seconds = sum(run.get("seconds") or 0 for e in r["methods"].values() for run in e["runs"])
    lines += ["", f"Backbone: `{r['backbone_config']}` (best epoch {bb['best_epoch']}/{bb['epochs']} by "
              f"{bb['select_metric']}; base-class test accuracy {100 * bb['test_base_class_accuracy']:.1f}%). "
              f"Wall-clock: backbone {steps['backbone'].get('seconds') or 0:.0f} s, features "
              f"{steps['features'].get('seconds') or 0:.0f} s, all few-shot runs {fs_seconds:.0f} s. "
              + provenance(r)]
    return "\n".join(lines)


HEADLINE = (("all_way_1shot_top1", "all-way 1-shot top-1"), ("all_way_1shot_top5", "top-5"),
            ("all_way_2shot_top1", "all-way 2-shot top-1"), ("all_way_2shot_top5", "top-5"),
            ("20way_within_group_1shot", "20-way within one alphabet, 1-shot"))


def fewshot_tuned_table(name="fewshot_table_glyphs_tuned"):
    """The headline protocols of each row tuned with the same bin/tune budget on validation classes."""
    r = load(name)
    if r is None:
        return ("_Not measured yet: run `python benchmarks/fewshot_table.py --dataset=glyphs --name=" + name +
                " --tune_trials=12 --override=fewshot.val_way=10000 --override=fewshot.val_episodes=100` (with the "
                "backbone overrides above)._")
    methods = r["methods"]
    some = next(iter(methods.values()))["test"] if methods else {}
    cols = [(p, label) for p, label in HEADLINE if p in some]
    lines = ["Novel alphabets (165 letters), test accuracy (%), mean ± std over the meta-training seeds "
             "of each row's tuned config (last column; a single seed shows its value alone).", "",
             "| | " + " | ".join(label for _, label in cols) + " | seeds |", "|---" * (len(cols) + 2) + "|"]
    if not methods:
        lines = ["_The seed runs have not finished yet; the tuning so far:_" if r.get("tuning") else
                 "_No row has finished its tuning yet._"]
    floor = r.get("floors", {}).get("features_prototypes", {}) if methods else {}
    if floor:
        cells = []
        for p, _ in cols:
            if p.startswith("all_way"):
                k, top = p.split("_")[2][:-4], p.split("_")[3]
                cells.append(f"{100 * floor['all_way'][k][top]:.2f}")
            else:
                cells.append(f"{100 * floor[p]['mean']:.2f}")
        lines.append(f"| {FEWSHOT_LABELS['features_prototypes']} | " + " | ".join(cells) + " | – |")
    for method, e in methods.items():
        lines.append(f"| {FEWSHOT_LABELS.get(method, method)} | " + " | ".join(
            pct(e['test'][p]) for p, _ in cols) +
            f" | {', '.join(str(run['seed']) for run in e['runs'])} |")
    steps = r.get("paired_steps", {})
    paired_cols = [(p, label) for p, label in cols if any(p in d for d in steps.values())]
    if steps and paired_cols:
        lines += ["", "Each step of the paper's ordering, paired on the same queries (all-way) or episodes "
                  "(20-way), seed-averaged, mean ± 95% CI (points):", "",
                  "| step | " + " | ".join(label for _, label in paired_cols) + " |",
                  "|---" * (len(paired_cols) + 1) + "|"]
        order = ["cosine", "gen", "dist", "dist_down", "dist_down_ensemble"]  # the paper's, worst to best
        rank = lambda step: order.index(step.split(" - ")[1]) if step.split(" - ")[1] in order else len(order)  # noqa: E731
        for step, d in sorted(steps.items(), key=lambda item: rank(item[0])):
            lines.append(f"| {step} | " + " | ".join(
                f"{100 * d[p]['mean']:+.2f} ± {100 * d[p]['ci95']:.2f}" if p in d else "–" for p, _ in paired_cols) + " |")
    for method, source in r.get("tune_as", {}).items():
        lines += ["", f"{FEWSHOT_LABELS.get(method, method)} has no search of its own: it trains with "
                  f"{FEWSHOT_LABELS.get(source, source)}'s searched values (`--tune_as={method}:{source}`)."]
    row_overrides = {m: o for m, o in r.get("row_overrides", {}).items() if m in methods or m in r.get("tuning", {})}
    if row_overrides:
        lines += ["", "Rows with flags of their own (their searches and seed runs): " + "; ".join(
            f"{FEWSHOT_LABELS.get(m, m)}: `{' '.join(o)}`" for m, o in row_overrides.items()) + "."]
    tuning = r.get("tuning", {})
    if tuning:
        lines += ["", "Tuning (random search, the same number of trials per row, seed "
                  f"{r.get('tune_seed', '?')}, selection on validation-class episodes only):", "",
                  "| row | trials | best validation accuracy | worst | best values |", "|---|---|---|---|---|"]
        for method, t in tuning.items():
            scores = [tr["val_accuracy"] for tr in t["trials"]]
            values = short_values(t["best"]["values"])
            source = t.get("reused_search", {}).get("table")
            reused = f" (the search of `{source}`)" if source and source != name else ""
            lines.append(f"| {FEWSHOT_LABELS.get(method, method)}{reused} | {len(scores)} | {100 * max(scores):.2f} | "
                         f"{100 * min(scores):.2f} | {values} |")
        lines += ["", "Search spaces: " + "; ".join(f"{m}: `{', '.join(t['space'])}`" for m, t in tuning.items()) + "."]
    lines += same_trials_with_and_without_row_flags(r, name)
    backbone = r.get("backbone", {})
    if backbone:
        overrides = ", ".join(r.get("backbone_overrides") or []) or "as is"
        lines += ["", f"Backbone: `configs/glyphs_fewshot_backbone.py` ({overrides}), best epoch "
                  f"{backbone['best_epoch']}/{backbone['epochs']} by {backbone['select_metric']}, base-class test "
                  f"accuracy {100 * backbone['test_base_class_accuracy']:.1f}%."]
    lines += ["", provenance(r)]
    return "\n".join(lines)


def short_values(values):
    """{"section.field": v} as "field=v, ..." (floats to 3 significant digits)."""
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in values.items())


def same_trials_with_and_without_row_flags(r, name):
    """A row searched here with flags of its own, next to the same trials (same space, tuning seed and
    so the same sampled values) of the table whose other searches this one reused: the flags' effect
    on validation, paired trial by trial across the search space."""
    sources = {t["reused_search"].get("table") for t in r.get("tuning", {}).values() if t.get("reused_search")}
    sources -= {None, name}  # a search reused from an earlier invocation of this same table (older files: None)
    if r.get("reuse_searches_from"):  # the table named by --reuse_searches_from (recorded since it had own flags)
        sources = {r["reuse_searches_from"]}
    lines = []
    for method, own_flags in r.get("row_overrides", {}).items():
        mine = r.get("tuning", {}).get(method)
        if not mine or mine.get("reused_search") or len(sources) != 1:
            continue
        source = next(iter(sources))
        source_table = load(source) or {}
        theirs = source_table.get("tuning", {}).get(method)
        if not theirs or theirs.get("space") != mine.get("space"):
            continue
        # Only the flags this row adds to the source's own (a source searched with some of them already).
        flags = [f for f in own_flags if f not in source_table.get("row_overrides", {}).get(method, [])]
        if not flags:
            continue
        plain = {t["trial"]: t for t in theirs["trials"]}
        pairs = [(t, plain[t["trial"]]) for t in mine["trials"]
                 if t["trial"] in plain and plain[t["trial"]]["values"] == t["values"]]
        if not pairs:
            continue
        label = FEWSHOT_LABELS.get(method, method)
        logged_t = any("temperature" in trial.get("last_epoch_logs", {}) for pair in pairs for trial in pair)
        lines += ["", f"{label}: the same trials (same search space and tuning seed, so the same sampled values) "
                  f"without and with this row's flags (`{' '.join(flags)}`); validation accuracy (%)"
                  + (", and where the temperature T of Eq. 1 ended in each (it starts at temperature_init)"
                     if logged_t else "") + ":", "",
                  "| trial | values | without (`" + source + "`) | with | difference |"
                  + (" T init | T at the end, without | with |" if logged_t else ""),
                  "|---|---|---|---|---|" + ("---|---|---|" if logged_t else "")]
        diffs = []
        for t, p in pairs:
            diffs.append(100 * (t["val_accuracy"] - p["val_accuracy"]))
            values = short_values(t["values"])
            t_cells = ""
            if logged_t:
                init_t = next((v for k, v in t["values"].items() if k.endswith("temperature_init")), None)
                ends = [trial.get("last_epoch_logs", {}).get("temperature") for trial in (p, t)]
                t_cells = " " + " | ".join(f"{v:.3g}" if v is not None else "–" for v in [init_t, *ends]) + " |"
            lines.append(f"| {t['trial']} | {values} | {100 * p['val_accuracy']:.2f} | {100 * t['val_accuracy']:.2f} "
                         f"| {diffs[-1]:+.2f} |" + t_cells)
        summary = f"{len(pairs)} of {len(mine['trials'])} trials paired; with the flags higher in " \
                  f"{sum(d > 0 for d in diffs)}"
        if len(diffs) > 1:
            summary += (f"; mean difference {statistics.mean(diffs):+.2f} ± {t_interval(diffs):.2f} points (95% CI, "
                        "Student t over trials)")
        lines += ["", summary + "."]
    return lines


def step_cost_named(name, flags):
    """A step-cost table of a run written under ``--name=name`` with ``flags``."""
    return from_result(name, f"python benchmarks/step_cost.py {flags} --name={name}")(step_cost_table)


step_cost_meta_batch_table = step_cost_named("step_cost_meta_batch",
                                             "--methods=baseline,self_distill,metadistiller")
step_cost_idle_table = step_cost_named("step_cost_idle", "--reference_python=PYTORCH_PYTHON")
step_cost_one_intra_thread_table = step_cost_named("step_cost_one_intra_thread", "--reference_python=PYTORCH_PYTHON")
THREADS_AB = "--methods=self_distill,metadistiller --meta_variants=meta_batch_size=32 --repeats=15"
step_cost_threads_one_intra_table = step_cost_named("step_cost_threads_one_intra", THREADS_AB)
step_cost_threads_default_table = step_cost_named("step_cost_threads_default", f"{THREADS_AB} --intra_op_threads=0")
step_cost_table = from_result("step_cost", "python benchmarks/step_cost.py")(step_cost_table)


@from_result("batchnorm_ab", "python benchmarks/batchnorm_ab.py")
def batchnorm_ab_table(r):
    """Fused BatchNorm vs Keras' ops: training images/s and first-step seconds, one interleaved run."""
    c = r["config"]
    lines = [f"`{r['config_file']}` ({c['arch']} width {c['width']}, {c['dataset']} {c['image_shape']}, global batch "
             f"{c['batch_size']}); median of {r['repeats']} repeats of {r['steps']} steps; each model built, traced and "
             f"timed with one variant, then the other.", "",
             "| method [phase] | images/s, fused | images/s, Keras ops | speed-up | first step, fused | "
             "first step, Keras ops |", "| --- | --- | --- | --- | --- | --- |"]
    for key, row in r["phases"].items():
        f, k = row["fused"], row["keras"]
        lines.append(f"| {key} | {f['images_per_s']:.0f} | {k['images_per_s']:.0f} | {row['speedup']:.2f}× | "
                     f"{f['first_step_s']:.1f} s | {k['first_step_s']:.1f} s |")
    load = r.get("load_average_at_end")
    lines += ["", (f"Load average at the end: {load[0]:.1f} (other jobs shared the machine; the ratios compare "
                   f"variants measured minutes apart under it). " if load else "") + provenance(r)]
    return "\n".join(lines)


def draw_first_step(r):
    """Where each step's first call goes: tracing train_step, then the rest (benchmarks/first_step.py);
    with --against, the other checkout's first call and graph size beside it."""
    other = r.get("against")
    lines = [f"`{r['config_file']}`, global batch {r['batch_size']}; each step in a fresh process, through the "
             f"train function `fit` calls; steady step: median of {r['steps']} later calls.", ""]
    grappler = all("grappler_s" in m for m in r["steps_measured"].values())  # logged since it was added
    head = ("| method [phase] | first call | of which tracing `train_step` | "
            + ("Grappler (graph optimisation) | rest (kernel set-up, one step) |" if grappler else
               "rest (graph optimisation, kernel set-up, one step) |") + " steady step | graph ops |")
    rule = "| --- | --- | --- | --- | --- | --- |" + (" --- |" if grappler else "")
    grappler_off = bool(other) and other.get("grappler") == "off"
    steady_against = bool(other) and all("step_ratio" in m for m in other["steps_measured"].values())
    if grappler_off:
        head += (" first call, Grappler off | steady step, Grappler off | first call, off ÷ on |"
                 " steady step, off ÷ on |")
        rule += " --- | --- | --- | --- |"
    elif other:
        rev = short_rev(other["git_revision"])
        head += f" first call at {rev} | graph ops at {rev} | first call, this ÷ {rev} |"
        rule += " --- | --- | --- |"
        if steady_against:
            head += f" steady step at {rev} | steady step, this ÷ {rev} |"
            rule += " --- | --- |"
    lines += [head, rule]
    for label, m in r["steps_measured"].items():
        rest = (f"{m['grappler_s']:.1f} s | {m['rest_of_first_call_s'] - m['grappler_s']:.1f} s" if grappler
                else f"{m['rest_of_first_call_s']:.1f} s")
        line = (f"| {label} | {m['first_call_s']:.1f} s | {m['trace_s']:.1f} s | {rest}"
                f" | {1000 * m['step_s']:.0f} ms | {m['graph_ops']} |")
        if grappler_off:
            o = other["steps_measured"][label]
            line += (f" {o['first_call_s']:.1f} s | {1000 * o['step_s']:.0f} ms | {1 / o['first_call_ratio']:.2f} |"
                     f" {1 / o['step_ratio']:.2f} |")
        elif other:
            o = other["steps_measured"][label]
            line += f" {o['first_call_s']:.1f} s | {o['graph_ops']} | {o['first_call_ratio']:.2f} |"
            if steady_against:
                line += f" {1000 * o['step_s']:.0f} ms | {o['step_ratio']:.2f} |"
        lines.append(line)
    notes = [provenance(r)]
    if grappler_off:
        notes.append(f"Grappler on and off (`tf.config.optimizer.set_experimental_options(disable_meta_optimizer=True)` "
                     f"in its process) measured alternately in one run, {other['repeats']} fresh process(es) per step "
                     "and setting; the fastest first call and the fastest steady step of each setting kept; load "
                     f"average {r['load_average_before']:.1f} at the start.")
    elif other:
        notes.append(f"Both checkouts measured alternately in one run, {other['repeats']} fresh process(es) per step "
                     f"and checkout, the fastest first call of each kept; load average "
                     f"{r['load_average_before']:.1f} at the start (above 0 means other work shared the 2 cores, so "
                     "read the ratio, not the seconds).")
    else:
        notes.append(f"One fresh process per step; load average {r['load_average_before']:.1f} at the start.")
    if grappler:
        passes = {}
        for m in r["steps_measured"].values():
            for name, sec in m["grappler_by_pass_s"].items():
                passes[name] = passes.get(name, 0.0) + sec
        top = sorted(passes.items(), key=lambda kv: -kv[1])[:4]
        notes.append("Grappler: its own log of each pass over the step's graphs (TF_CPP_VMODULE=meta_optimizer=1); "
                     "summed over the steps, the largest passes are " + ", ".join(
                         f"{name} {100 * sec / sum(passes.values()):.0f} %" for name, sec in top) + ".")
    if r.get("note"):
        notes.append(r["note"])
    return "\n".join(lines + [""] + notes)


first_step_table = from_result("first_step", "python benchmarks/first_step.py")(draw_first_step)
first_step_idle_table = from_result("first_step_idle", "python benchmarks/first_step.py --name=first_step_idle")(
    draw_first_step)
first_step_static_bn_table = from_result("first_step_static_bn", "python benchmarks/first_step.py --against=OLD "
                                         "--name=first_step_static_bn")(draw_first_step)


def first_step_against(name, repeats):
    """A first-step table of a run measured against an older checkout (--against)."""
    command = f"python benchmarks/first_step.py --against=OLD --repeats={repeats} --name={name}"
    return from_result(name, command)(draw_first_step)


first_step_bn_second_order_table = first_step_against("first_step_bn_second_order", 2)
first_step_frozen_statistics_table = first_step_against("first_step_frozen_statistics", 2)
first_step_meta_graph_table = first_step_against("first_step_meta_graph", 3)
first_step_grappler_off_table = from_result(
    "first_step_grappler_off", "python benchmarks/first_step.py --against_grappler_off --repeats=3 --steps=30 "
    "--name=first_step_grappler_off")(draw_first_step)


TS_LABELS = {"baseline": "student alone (baseline)", "kd": "KD (Hinton)", "fitnet": "FitNet", "at": "AT",
             "dml": "DML (two students, no teacher)", "metadistiller": "MetaDistiller (no teacher)"}
TS_SHORT = {"kd": "KD", "fitnet": "FitNet", "at": "AT", "dml": "DML"}


@from_result("teacher_student_table", "python benchmarks/teacher_student_table.py")
def teacher_student_table(r):
    t = r["teacher"]
    teacher_time = t.get("seconds") or 0
    lines = [f"Student ResNet18 (width 0.125) on `{r['config']}`; teacher ResNet34 (width 0.25) trained once "
             f"({', '.join(r['teacher_overrides'])}): test accuracy {100 * t['test_final_accuracy']:.2f}%, "
             f"{teacher_time:.0f} s. Test accuracy of the final head (%), mean ± std over seeds "
             f"{', '.join(map(str, r['seeds']))}; the checkpoint is chosen on validation.", "",
             "| method | test accuracy | runs | mean wall-clock per run | incl. the teacher's training |",
             "|---|---|---|---|---|"]
    order = [m for m in TS_LABELS if m in r["methods"]] + [m for m in r["methods"] if m not in TS_LABELS]
    for method in order:
        e = r["methods"][method]
        a = e["test_final_accuracy"]
        secs = e.get("mean_seconds")
        with_teacher = f"{secs + teacher_time:.0f} s" if (secs and e.get("uses_teacher")) else "–"
        lines.append(f"| {TS_LABELS.get(method, method)} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} | {a['n']} | "
                     f"{secs:.0f} s | {with_teacher} |" if secs else
                     f"| {TS_LABELS.get(method, method)} | {100 * a['mean']:.2f} ± {100 * a['std']:.2f} | {a['n']} | – | – |")
    revisions = sorted({short_rev(run.get("git_revision", "?")) for e in r["methods"].values() for run in e["runs"]})
    lines += ["", provenance(r) + f" Runs trained at git {', '.join(revisions)}."]
    return "\n".join(lines)


def teacher_student_command(config, name, reuse):
    return (f"python benchmarks/teacher_student_table.py --config=configs/{config}.py --name={name} "
            f"--reuse={reuse} --jobs=2 --threads=1")


# result name -> (the regime, as a column of the evidence table; the command that fills it in)
TS_REGIMES = {
    "teacher_student_converge": ("Fashion-MNIST (10k images, 40 epochs)", teacher_student_command(
        "bench_fashion_mnist_converge", "teacher_student_converge", "self_boosting_converge")),
    "teacher_student_small_data": ("Fashion-MNIST (2k images, 100 epochs)", teacher_student_command(
        "bench_fashion_mnist_small_data", "teacher_student_small_data", "self_boosting_small_data")),
}
# The paper's Table 3: every two-stage method above the student trained alone, MetaDistiller (no
# teacher) above every one of them.
TS_CLAIMS = [(f"{TS_SHORT[m]} > baseline", m, "baseline") for m in ("kd", "fitnet", "at", "dml")] + \
            [(f"MD > {TS_SHORT[m]}", "metadistiller", m) for m in ("kd", "fitnet", "at", "dml")]


def teacher_student_claim_cells(methods):
    """Each Table-3 claim as the seed-paired difference of the final head's test accuracy."""
    cells = []
    for _, a, b in TS_CLAIMS:
        if a in methods and b in methods:
            mean, ci, n = seed_paired(methods[a], methods[b], lambda run: run["test_final_accuracy"])
            cells.append(paired_cell(mean, ci, n) + (f": {verdict(mean, ci)}" if n > 1 else ""))
        else:
            cells.append("not measured yet")
    return cells


def teacher_student_claims(methods):
    lines = ["| paper's claim (Table 3) | test accuracy A − B, points |", "|---|---|"]
    return lines + [f"| {claim} | {cell} |" for (claim, _, _), cell in zip(TS_CLAIMS, teacher_student_claim_cells(methods))]


def evidence_teacher_student_table():
    """The Table-3 claims for the evidence summary: one column per regime measured so far."""
    measured = {name: r for name, r in ((name, load(name)) for name in TS_REGIMES) if r is not None}
    if not measured:
        return f"_Not measured yet: run `{TS_REGIMES['teacher_student_converge'][1]}`._"
    columns = [teacher_student_claim_cells(r["methods"]) for r in measured.values()]
    lines = ["| paper's claim (Table 3) | " + " | ".join(TS_REGIMES[name][0] for name in measured) + " |",
             "|---|" + "---|" * len(measured)]
    lines += [f"| {claim} | " + " | ".join(column[i] for column in columns) + " |"
              for i, (claim, _, _) in enumerate(TS_CLAIMS)]
    teachers = []
    for name, r in measured.items():
        t = r.get("teacher") or {}
        accuracy = f"{100 * t['test_final_accuracy']:.2f} %" if t else "not trained yet"
        teachers.append(f"{TS_REGIMES[name][0]}: `{r['config']}`, its teacher {accuracy}")
    overrides = sorted({", ".join(r["teacher_overrides"]) for r in measured.values()})
    return "\n".join(lines + [
        "", f"Test accuracy of the final head, points, A − B; student ResNet18 (width 0.125), teacher "
        f"`{'; '.join(overrides)}` trained on the same data and schedule (test accuracy: {'; '.join(teachers)}); "
        "each run's checkpoint chosen on validation; seed-paired mean ± 95% CI over the seeds both methods ran "
        "so far (docs/benchmarks.md, \"Teacher–student methods vs MetaDistiller\", lists them)."])


def teacher_student_regime_table(name):
    """The teacher-student comparison at one regime: per-method accuracy over seeds, the wall-clock,
    and the paper's Table-3 claims as seed-paired differences."""
    @from_result(name, TS_REGIMES[name][1])
    def table(r):
        methods, t = r["methods"], r.get("teacher")
        teacher = (f"teacher `{', '.join(r['teacher_overrides'])}` trained once, seed 0: test "
                   f"accuracy {100 * t['test_final_accuracy']:.2f}%, {t['seconds'] / 60:.0f} min"
                   if t and t.get("seconds") else "teacher not trained yet")
        accuracies = sorted({round(100 * run["teacher_test_accuracy"], 2) for e in methods.values()
                             for run in e["runs"] if "teacher_test_accuracy" in run})
        if len(accuracies) > 1:  # a later session on another machine trained the teacher again
            teacher += f" (the students' teachers: {', '.join(f'{a:.2f}%' for a in accuracies)})"
        lines = [f"Student ResNet18 (width 0.125) on `{r['config']}`; {teacher}. Test accuracy of the final head "
                 "(%), mean ± std over the seeds run so far; the checkpoint is chosen on validation. Runs trained "
                 f"{r.get('jobs', 1)} side by side at {r.get('threads') or 'default'} thread(s) each, so wall-clock "
                 "compares methods, not machines.", "",
                 "| method | test accuracy | validation | seeds | mean wall-clock per run | incl. the teacher's training |",
                 "|---|---|---|---|---|---|"]
        teacher_s = (t or {}).get("seconds") or 0
        for method in [m for m in TS_LABELS if m in methods]:
            e = methods[method]
            vals = [run["val_final_accuracy"] for run in e["runs"] if run.get("val_final_accuracy") is not None]
            secs = e.get("mean_seconds")
            lines.append(f"| {TS_LABELS[method]} | {pct(e['test_final_accuracy'])} | {pct(summarize(vals))} | "
                         f"{', '.join(str(run['seed']) for run in e['runs'])} | "
                         f"{f'{secs / 60:.0f} min' if secs else '–'} | "
                         f"{f'{(secs + teacher_s) / 60:.0f} min' if secs and e.get('uses_teacher') and teacher_s else '–'} |")
        lines += [""] + teacher_student_claims(methods)
        reused = sorted({run["reused_from"] for e in methods.values() for run in e["runs"] if run.get("reused_from")})
        revisions = sorted({short_rev(run.get("git_revision", "?")) for e in methods.values() for run in e["runs"]})
        lines += ["", "Differences are seed-paired (mean ± 95% Student-t CI over the seeds both ran). "
                  + (f"The baseline and MetaDistiller runs are those of `{', '.join(reused)}` (the same config, "
                     "seeds and flags; their wall-clock was measured there). " if reused else "")
                  + provenance(r) + f" Runs trained at git {', '.join(revisions)}."]
        return "\n".join(lines)
    return table


teacher_student_converge_table = teacher_student_regime_table("teacher_student_converge")
teacher_student_small_data_table = teacher_student_regime_table("teacher_student_small_data")


@from_result("scaling", "python benchmarks/scaling.py")
def scaling_table(r):
    many = f"{r['replicas']} replicas"
    lines = [f"Global batch {r['batch_size']}, `{r['config_file']}`; {r['note']}.", "",
             f"| method [phase] | 1 replica (images/s) | {many} (images/s) | ratio |", "|---|---|---|---|"]
    for method, phases in r["methods"].items():
        for phase, row in phases.items():
            label = method if phase == "None" else f"{method} [{phase}]"
            lines.append(f"| {label} | {row['1 replica']['images_per_s']:.0f} | {row[many]['images_per_s']:.0f} | "
                         f"{row['throughput_ratio']:.2f} |")
    lines += ["", provenance(r)]
    return "\n".join(lines)


def paper_targets(methods):
    """The paper's Table-1 claims checked against the runs (means over the seeds all methods share)."""
    names = ("baseline", "dsn", "self_distill", "metadistiller")
    if not all(n in methods for n in names):
        return []
    common_seeds = set.intersection(*({r["seed"] for r in methods[n]["runs"]} for n in names))
    if not common_seeds:
        return []

    def mean(name, head):
        values = [r["test"][f"{head}_accuracy"] for r in methods[name]["runs"] if r["seed"] in common_seeds]
        return 100 * sum(values) / len(values)

    final = {n: mean(n, "final") for n in names}
    label = {"baseline": "baseline", "dsn": "DSN", "self_distill": "SD", "metadistiller": "MD"}
    holds = final["metadistiller"] > final["self_distill"] > final["dsn"] >= final["baseline"]
    ranked = " > ".join(f"{label[n]} {final[n]:.2f}" for n in sorted(names, key=final.get, reverse=True))
    exits = ", ".join(f"exit {k} {mean('metadistiller', f'exit_{k}') - mean('self_distill', f'exit_{k}'):+.2f}"
                      for k in (1, 2, 3))
    seeds = ", ".join(map(str, sorted(common_seeds)))
    return [f"Paper Table 1 ordering on the final exit, MD > SD > DSN ≥ baseline: **{'holds' if holds else 'does not hold'}"
            f"** here (seeds {seeds}: {ranked}). MetaDistiller's exits minus SD's exits (points): {exits}.", ""]


# Tuned variants of a method at the convergent regime, each a results file of its own:
# (results name, method, label, what differs).
CONVERGE_VARIANTS = [
    ("self_boosting_converge_generator_lr_0.1", "metadistiller", "MD, generator lr 0.1 (paper's)",
     "metadistiller.generator_lr=0.1"),
    ("self_boosting_converge_meta_every_4_shared", "metadistiller",
     "MD, a shared meta step every 4th update (cheaper cycle, step-cost table)",
     "metadistiller.meta_every_steps=4, metadistiller.share_inner_gradient=True"),
    # Every epoch a meta epoch (M=1) at generator lr 0.01: ~10x the generator steps of M=5, the
    # regime question of the lookahead probe (few generator steps -> near-uniform targets).
    ("self_boosting_converge_meta_every_1_glr_0.01", "metadistiller",
     "MD, a meta epoch every epoch (M=1), generator lr 0.01",
     "metadistiller.meta_every_epochs=1, metadistiller.generator_lr=0.01"),
    # Algorithm 1 with a smaller meta batch: every update a meta step, on 32 of the 128 examples.
    ("self_boosting_converge_meta_batch_32", "metadistiller",
     "MD, the meta step on 32 of the 128 D_train / D_test examples (cheaper cycle, step-cost table)",
     "metadistiller.meta_batch_size=32"),
]


# The same for the small-data regime (benchmarks/self_boosting_table.py --regime=small_data).
SMALL_DATA_VARIANTS = [
    # Eq. 5 as written (no BatchNorm / ReLU after the fusion convs), as the PyTorch reference's
    # generator: tfkd's exits pay more for the generated targets than the reference's do here.
    ("self_boosting_small_data_linear_fusion", "metadistiller",
     "MD, the label generator's fusion linear as in Eq. 5 (no BatchNorm / ReLU)", "metadistiller.fusion_norm=False"),
]
# Each regime's variants, by the results file of its default-knob runs.
REGIME_VARIANTS = {"self_boosting_converge": CONVERGE_VARIANTS, "self_boosting_small_data": SMALL_DATA_VARIANTS}


def _mean_val(entry, seeds=None):
    values = [r["val"]["final_accuracy"] for r in entry["runs"] if seeds is None or r["seed"] in seeds]
    return sum(values) / len(values) if values else float("-inf")


def best_on_validation(options):
    """The (label, results entry) with the best mean final-exit validation accuracy over the seeds
    every option ran (the first of equals), and those seeds."""
    shared = set.intersection(*({run["seed"] for run in e["runs"]} for _, e in options))
    return max(options, key=lambda option: _mean_val(option[1], shared)), shared


def converge_header(dataset, d, tuned=False):
    """The regime line and column header of a convergent-regime table (``tuned``: lr and weight
    decay are each method's searched values, not the config's)."""
    g = d["regime"]
    any_run = next(iter(d["methods"].values()))["runs"][0]
    lr = "each method's searched lr" if tuned else f"lr {g['learning_rate']}"
    decay = "each method's searched weight decay" if tuned else f"weight decay {g['weight_decay']}"
    return [f"**{dataset}** (`{d['config_file']}`: {g['arch']} width {g['width']}, {g['epochs']} epochs, "
            f"SGD {lr} ÷10 at epochs {', '.join(map(str, g['lr_boundaries']))}, "
            f"{decay}, batch {g['batch_size']}; {any_run['num_train_examples']} training "
            f"images, {any_run['num_test_examples']} test images. Test accuracy %, mean ± std over seeds, "
            f"each run's checkpoint chosen on validation `{g['select_metric']}`; the validation column is "
            f"that checkpoint's final-exit validation accuracy)\n",
            "| method | final exit | exit 1 | exit 2 | exit 3 | ensemble of exits | validation (final) | "
            "best epoch | wall time per run | seeds |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def _wall_time(runs):
    """Mean wall time of the runs that trained in one go: a resumed run's clock covers only its
    last part (or, resumed inside one invocation, a wait), so it is left out and counted."""
    times = [run["seconds"] for run in runs if run.get("seconds") and not run.get("resumed")]
    if not times:
        return "–"
    left_out = f" (n={len(times)}, {len(runs) - len(times)} resumed)" if len(times) < len(runs) else ""
    return f"{statistics.mean(times) / 60:.0f} min{left_out}"


def _mean_entropies(curves, epoch):
    """'exit 1 2.21, exit 2 ...': each exit's entropy at ``epoch`` (an index), averaged over runs."""
    return ", ".join(f"{k.replace('_', ' ')} {sum(c[k][epoch] for c in curves) / len(curves):.2f}"
                     for k in sorted(curves[0]))


def converge_rows(lines, rows, dataset):
    """Appends one table line per (label, method name, results entry); returns the notes on the
    generated targets' entropy."""
    entropy_notes = []
    for label, name, e in rows:
        seeds = ", ".join(str(run["seed"]) for run in e["runs"])
        exits = [pct(e.get(f"exit_{k}")) for k in (1, 2, 3)]
        ens = pct(e.get("ensemble")) if name != "baseline" else "– (no exits)"
        val = f"{100 * _mean_val(e):.2f}"
        best = ", ".join(str(run["best_epoch"]) for run in e["runs"])
        wall = _wall_time(e["runs"])
        lines.append(f"| {label} | {pct(e.get('final'))} | {' | '.join(exits)} | {ens} | {val} | {best} | "
                     f"{wall} | {seeds} |")
        classes = NUM_CLASSES.get(dataset)
        uniform = f"; uniform over {classes} classes = {math.log(classes):.2f}" if classes else ""
        where = []
        for key, said in (("train_target_entropy_curve", "on the training batches, the targets the exits learned "
                                                         "from (training-mode BatchNorm)"),
                          ("target_entropy_curve", "on validation after each epoch (inference mode)")):
            curves = [run[key] for run in e["runs"] if run.get(key)]
            if curves:
                where.append(f"{said}: first epoch {_mean_entropies(curves, 0)}; last epoch "
                             f"{_mean_entropies(curves, -1)} ({len(curves)} run(s))")
        if where:
            entropy_notes.append(f"{label}: mean entropy of the generated soft targets (nats{uniform}), "
                                 + "; ".join(where) + ".")
    return entropy_notes


def self_boosting_converge_table(name="self_boosting_converge", variants=CONVERGE_VARIANTS, regime="converge"):
    """A long-regime table (the convergent one by default, or the small-data one with its own variants):
    every exit, the ensemble, validation, best epoch and wall time per run; tuned variants as extra
    rows, the one used for the paper's ordering chosen on validation."""
    r = load(name)
    if r is None:
        return f"_Not measured yet: run `python benchmarks/self_boosting_table.py --regime={regime}`._"
    variants = [(load(v), method, label, change) for v, method, label, change in variants]
    lines = []
    for dataset, d in r["datasets"].items():
        methods = d["methods"]
        if not methods:
            continue
        lines += converge_header(dataset, d)
        rows = [(METHOD_LABELS[n], n, methods[n]) for n in SELF_BOOSTING_ORDER if n in methods]
        for v, method, label, _ in variants:
            if v and dataset in v["datasets"] and method in v["datasets"][dataset]["methods"]:
                rows.append((label, method, v["datasets"][dataset]["methods"][method]))
        entropy_notes = converge_rows(lines, rows, dataset)
        lines.append("")
        lines += [n + "\n" for n in entropy_notes]
        # The paper's ordering with the MetaDistiller variant that is best on validation.
        candidates = [("default knobs", methods.get("metadistiller"))] + [
            (change, v["datasets"][dataset]["methods"][m]) for v, m, _, change in variants
            if m == "metadistiller" and v and dataset in v["datasets"] and m in v["datasets"][dataset]["methods"]]
        candidates = [(c, e) for c, e in candidates if e]
        if len(candidates) > 1:
            (choice, chosen), shared = best_on_validation(candidates)
            vals = ", ".join(f"{c} {100 * _mean_val(e, shared):.2f}" for c, e in candidates)
            lines.append(f"MetaDistiller variant chosen on validation (mean final-exit validation accuracy over "
                         f"seeds {', '.join(map(str, sorted(shared))) or '–'}: {vals}): **{choice}**.\n")
            methods = {**methods, "metadistiller": chosen}
        lines += paper_targets(methods)
    lines.append(provenance(r) + run_revisions(r) + " Wall time: two runs side by side, one TensorFlow thread each; "
                 "other work shared the 2 cores at times, so it is an upper bound; resumed runs are left "
                 "out of it (their clock covers one part of the run).")
    for v, _, label, _ in variants:
        if v:
            lines.append(f"\n{label}: " + provenance(v) + run_revisions(v))
    return "\n".join(lines)


SELF_BOOSTING_ORDER = ("baseline", "dsn", "self_distill", "metadistiller")


def _paired_to_default(tuned, default):
    """Mean over shared seeds of tuned - default final-exit accuracy (points): (validation, test, seeds)."""
    t, d = ({run["seed"]: run for run in e["runs"]} for e in (tuned, default))
    seeds = sorted(set(t) & set(d))
    if not seeds:
        return None
    diff = lambda split: 100 * sum(t[s][split]["final_accuracy"] - d[s][split]["final_accuracy"]  # noqa: E731
                                   for s in seeds) / len(seeds)
    return diff("val"), diff("test"), seeds


def self_boosting_tuned_table():
    """Equal-budget searches per method (benchmarks/self_boosting_table.py --tune_trials) and the
    full-regime runs with each method's best values, against the default-knob runs."""
    r = load("self_boosting_converge_tuned")
    if r is None:
        return ("_Not measured yet: run `python benchmarks/self_boosting_table.py --regime=converge --tune_trials=4 "
                "--name=self_boosting_converge_tuned ...`._")
    default = load("self_boosting_converge") or {"datasets": {}}
    lines = []
    for dataset, searches in r.get("tuning", {}).items():
        lines.append(f"**{dataset}**, the searches: {r['tune_trials']} random-search trials per method (`bin/tune`, "
                     f"each method's default space, tuning seed {r['tune_seed']}), each trial trained at the proxy "
                     f"regime {', '.join(f'`{o}`' for o in r['tune_overrides'])} and scored by its best epoch's "
                     "final-exit validation accuracy.\n")
        lines.append("| method | searched | best trial's values | its validation | every trial's validation | "
                     "search time |")
        lines.append("| --- | --- | --- | --- | --- | --- |")
        for name in SELF_BOOSTING_ORDER:
            search = searches.get(name)
            if not search:
                continue
            searched = ", ".join(spec.split("=")[0].split(".")[-1] for spec in search["space"])
            values = ", ".join(f"{k.split('.')[-1]} {v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]} {v}"
                               for k, v in search["best"]["values"].items())
            every = ", ".join(f"{100 * t['score']:.1f}" for t in search["trials"])
            secs = search.get("seconds")
            lines.append(f"| {METHOD_LABELS[name]} | {searched} | {values} | {100 * search['best']['score']:.2f} | "
                         f"{every} | {f'{secs / 60:.0f} min' if secs else '–'} |")
        lines.append("")
        ranked = sorted(searches, key=lambda n: -searches[n]["best"]["score"])
        lines.append("At the proxy, the best trials rank " + " > ".join(
            f"{METHOD_LABELS.get(n, n).split(' (')[0]} {100 * searches[n]['best']['score']:.2f}" for n in ranked) + ".")
        # The same tuning seed over the same space draws the same trials: such methods are compared
        # on identical knobs, trial by trial.
        draws = {n: [t["values"] for t in searches[n]["trials"]] for n in ranked}
        same = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:] if draws[a] == draws[b]]
        for a, b in same:
            lines.append(f"{METHOD_LABELS[a].split(' (')[0]} and {METHOD_LABELS[b].split(' (')[0]} searched the same "
                         f"space with the same seed, so they trained the same {len(draws[a])} draws.")
        lines.append("")
        d = r["datasets"].get(dataset)
        if d and d["methods"]:
            lines.append("The full regime with each method's best values:\n")
            lines += converge_header(dataset, d, tuned=True)
            rows = [(METHOD_LABELS[n] + ", tuned", n, d["methods"][n]) for n in SELF_BOOSTING_ORDER
                    if n in d["methods"]]
            lines += [""] + [n + "\n" for n in converge_rows(lines, rows, dataset)]
            default_methods = default["datasets"].get(dataset, {}).get("methods", {})
            paired = []
            for n in SELF_BOOSTING_ORDER:
                if n in d["methods"] and n in default_methods:
                    p = _paired_to_default(d["methods"][n], default_methods[n])
                    if p:
                        paired.append(f"{METHOD_LABELS[n]} validation {p[0]:+.2f}, test {p[1]:+.2f} "
                                      f"(seeds {', '.join(map(str, p[2]))})")
            if paired:
                lines.append("Tuned minus default knobs, final exit, paired by seed (points): " + "; ".join(paired)
                             + ".\n")
            lines += paper_targets(d["methods"])
            # Each method had the same two candidates (its defaults and its search's winner): keep the
            # one with the better full-regime validation, then check the paper's ordering again.
            chosen, picks = {}, []
            for n in SELF_BOOSTING_ORDER:
                if n in d["methods"] and n in default_methods:
                    (pick, chosen[n]), _ = best_on_validation([("default", default_methods[n]),
                                                               ("tuned", d["methods"][n])])
                    picks.append(f"{METHOD_LABELS[n].split(' (')[0]} {pick}")
            if len(chosen) == len(SELF_BOOSTING_ORDER):
                lines.append("Each method's variant with the better full-regime validation: " + ", ".join(picks) + ".")
                lines += paper_targets(chosen)
    lines.append(provenance(r) + (run_revisions(r) if any(d["methods"] for d in r["datasets"].values()) else ""))
    return "\n".join(lines)


@from_result("default_job", "python benchmarks/default_job.py")
def default_job_table(r):
    """The measured duration of the README's first command (benchmarks/default_job.py)."""
    parts = []
    for run in r["runs"]:
        parts.append(f"{run['wall_s'] / 60:.1f} min wall clock ({run['cpu_s'] / 60:.1f} CPU-minutes; load average "
                     f"{run['load_average_before']:.1f} before, {run['load_average_after']:.1f} after), test accuracy "
                     f"of the final exit {100 * run['test_final_accuracy']:.2f}% after {run['epochs']} epochs on "
                     f"{run['num_train_examples']} training images"
                     + (f", TensorFlow's intra-op threads {run['threads']['intra_op'] or 'its default'}"
                        if "threads" in run else ""))
    return (f"Measured: `{r['train_command']}` took " + "; ".join(parts) + ". A load average above 2 means other "
            "work shared the cores, so the time is an upper bound. " + provenance(r))


def metadistiller_targets_table(r):
    """How accurate and soft MetaDistiller's generated targets are (benchmarks/metadistiller_targets.py)."""
    lines = ["| run (generator lr, seed, best epoch) | head | target entropy (nats) | target argmax accuracy | "
             "target p(true class) | spread across images | accuracy of the exit it teaches |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    classes = r["runs"][0]["num_classes"]
    digits = max(2, len(str(classes - 1)) + 1)  # probabilities near 1/classes stay readable: 0.10, 0.0013
    for run in r["runs"]:
        c = run["config"]
        label = f"{c['dataset']}, {c['epochs']} epochs, lr {run['generator_lr']:g}, seed {c['seed']}, epoch {run['best_epoch']}"
        for name, h in run["heads"].items():
            head = "final output" if name == "final" else f"T of {name.replace('_', ' ')}"
            exit_acc = f"{100 * h['exit_accuracy']:.1f}%" if "exit_accuracy" in h else "–"
            lines.append(f"| {label} | {head} | {h['entropy']:.2f} | {100 * h['argmax_accuracy']:.1f}% | "
                         f"{h['true_class_probability']:.{digits}f} | {h['spread_across_images']:.{digits + 1}f} | "
                         f"{exit_acc} |")
    lines.append("")
    lines.append(f"On {r['runs'][0]['images']} validation images, best checkpoint, inference mode; uniform over "
                 f"{r['runs'][0]['num_classes']} classes is {math.log(r['runs'][0]['num_classes']):.2f} "
                 f"nats and p = {1 / classes:.{digits}f}. " + provenance(r) + _earlier_commands(r))
    return "\n".join(lines)


def _earlier_commands(r):
    """Rows kept from earlier invocations (``--add``) name the commands that measured them."""
    earlier = r.get("earlier_commands") or []
    return "".join(f" Earlier rows: {e.get('date_utc', '?')}, git {e.get('git_revision', '?')[:12]}, "
                   f"`{e.get('command', '?')}`." for e in earlier)


TARGETS_COMMAND = "python benchmarks/metadistiller_targets.py --workdir=RUN"
targets_fashion_mnist_table = from_result("metadistiller_targets", TARGETS_COMMAND)(metadistiller_targets_table)
targets_glyphs_table = from_result("metadistiller_targets_glyphs", TARGETS_COMMAND + " --name=metadistiller_targets_glyphs")(
    metadistiller_targets_table)
targets_meta_steps_table = from_result("metadistiller_targets_meta_steps",
                                       TARGETS_COMMAND + " --name=metadistiller_targets_meta_steps")(
    metadistiller_targets_table)


@from_result("metadistiller_lookahead_probe", "python benchmarks/metadistiller_lookahead_probe.py --workdir=RUN")
def lookahead_probe_table(r):
    """The one-step lookahead's outer loss with other targets than the learned generator's
    (benchmarks/metadistiller_lookahead_probe.py)."""
    others = [k for k in r["kinds"] if k != "learned generator"] + ["no inner step"]
    lines = ["| run (dataset, α, generator lr, seed, best epoch) | inner step ζ | outer loss, learned generator | "
             + " | ".join(f"{k} − learned" for k in others) + " |",
             "| --- | --- | --- |" + " --- |" * len(others)]
    for run in r["runs"]:
        md = run["metadistiller"]
        label = (f"{run['dataset']}, α {md['alpha']:.2g}, lr {md['generator_lr']:.2g}, seed {run['seed']}, "
                 f"epoch {run['best_epoch']}")
        for zeta, kinds in run["outer_loss"].items():
            cells = [f"{kinds[k]['minus_learned_mean']:+.4f} ± {kinds[k]['minus_learned_ci95']:.4f}" for k in others]
            lines.append(f"| {label} | {float(zeta):.3g} | {kinds['learned generator']['mean']:.3f} | "
                         + " | ".join(cells) + " |")
    first = r["runs"][0]
    lines.append("")
    lines.append(f"Outer loss: the summed CE of all outputs on a D_test batch after one inner SGD step on a disjoint "
                 f"D_train batch (batch {first['batch_size']}, the run's weight decay), at the best checkpoint; "
                 f"differences paired over {first['pairs']} batch pairs of training images, mean ± 95% CI. ζ is the "
                 "run's learning rate in each of its schedule's three phases. " + provenance(r))
    commands = []  # rows kept from earlier invocations (--add) name their own command
    for run in r["runs"]:
        m = run.get("measured_by")
        if m and m["command"] != r.get("command") and m not in commands:
            commands.append(m)
    for m in commands:
        lines.append(f"Other rows: measured {m['date_utc']}, git {short_rev(m['git_revision'])}. "
                     f"Command: `{m['command']}`.")
    return "\n".join(lines)


SD_TARGET = "final exit's softmax (SD's target)"  # a kind of benchmarks/metadistiller_lookahead_probe.py


def _targets_cell(summary):
    return "; ".join(f"{name.replace('exit_', 'T')} {t['entropy']:.2f} / {100 * t['argmax_accuracy']:.0f}% / "
                     f"{t['true_class_probability']:.2f}" for name, t in summary.items())


@from_result("metadistiller_lookahead_probe", "python benchmarks/metadistiller_lookahead_probe.py --workdir=RUN "
             "--generator_steps=300")
def generator_only_table(r):
    """The generator trained alone from a checkpoint by Algorithm 1's meta step, network frozen."""
    lines = []
    for run in r["runs"]:
        g = run.get("generator_only")
        if not g:
            continue
        ref = g["reference"]
        rates = [k for k in g if k not in ("reference", "zeta", "targets_at_checkpoint")]
        steps = [s for s, _ in g[rates[0]]["curve"]]
        md = run["metadistiller"]
        lines += [f"`{run['workdir']}` ({run['dataset']}, α {md['alpha']:g}, τ {md['tau']:g}, generator lr "
                  f"{md['generator_lr']:g} in training, best epoch {run['best_epoch']}); inner step ζ = {g['zeta']:g}; "
                  f"outer loss on {run['pairs']} fixed batch pairs. The same pairs with SD's target: "
                  f"{ref[SD_TARGET]:.4f}, "
                  f"one-hot labels {ref['one-hot labels']:.4f}, uniform {ref['uniform']:.4f}.", "",
                  "| generator Adam lr | " + " | ".join(f"step {s}" for s in steps)
                  + " | targets after the last step: entropy (nats) / argmax accuracy / p(true class) |",
                  "| --- |" + " --- |" * (len(steps) + 1)]
        if "targets_at_checkpoint" in g:
            lines.append("| (the checkpoint's generator) | " + " | ".join("" for _ in steps) + " | "
                         + _targets_cell(g["targets_at_checkpoint"]) + " |")
        for lr in rates:
            curve = dict((s, v) for s, v in g[lr]["curve"])
            targets = _targets_cell(g[lr]["targets"]) if "targets" in g[lr] else "–"
            lines.append(f"| {float(lr):g} | " + " | ".join(f"{curve[s]:.4f}" for s in steps) + f" | {targets} |")
        lines.append("")
    lines.append(provenance(r))
    return "\n".join(lines)


@from_result("test_suite", "python benchmarks/test_suite.py")
def test_suite_table(r):
    """The suite's measured duration and slowest tests (benchmarks/test_suite.py)."""
    counts = ", ".join(f"{n} {k}" for k, n in r["counts"].items())
    lines = [f"`{r['pytest_command']}`: **{r['seconds'] / 60:.1f} min** ({counts}); measured on {r['note']}.\n",
             "| slowest tests | seconds |", "| --- | --- |"]
    for t in r["slowest"][:10]:
        lines.append(f"| `{t['test']}` ({t['phase']}) | {t['seconds']:.0f} |")
    lines.append("")
    lines.append(provenance(r))
    return "\n".join(lines)


def serving_table(r):
    """SavedModel serving vs the Keras network (benchmarks/serving.py)."""
    n = r["network"]
    lines = [f"{n['arch']} width {n['width']} on {n['dataset']}; images/s (median of {r['repeats']} calls) and the "
             "process's peak memory, each in a fresh process:\n",
             "| batch | SavedModel `serving_default` | Keras `network.predict` (all heads) | final head in one "
             "`tf.function` | SavedModel vs `predict` | SavedModel vs final head |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in r["results"]:
        cell = lambda k: f"{row[k]['images_per_s']:.0f}/s, {row[k]['peak_rss_mb']:.0f} MB"  # noqa: E731
        lines.append(f"| {row['batch']} | {cell('savedmodel')} | {cell('keras_predict')} | {cell('keras_final')} | "
                     f"{row['savedmodel_vs_keras_predict']:.2f}× | {row['savedmodel_vs_keras_final']:.2f}× |")
    if r.get("breakdown"):
        lines += ["", "From the bare final head to `serving_default`, one step at a time: images/s, and in brackets "
                  "the ratio to the step before (below 1: the step costs time).", ""]
        lines.append("| batch | " + " | ".join(label for _, label in SERVING_STEPS)
                     + " | saved and loaded: the `logits` signature (ratio to the in-process `logits`) "
                     "| spread: slowest ÷ fastest round, the widest kind |")
        lines.append("| --- |" + " --- |" * (len(SERVING_STEPS) + 2))
        for row in r["results"]:
            speed = [row[kind]["images_per_s"] for kind, _ in SERVING_STEPS]
            saved_logits = row["savedmodel_logits"]["images_per_s"]
            each_round = [m.get("seconds_per_call_each_round", [1.0]) for m in row.values() if isinstance(m, dict)]
            lines.append(f"| {row['batch']} | {speed[0]:.0f}/s | " + " | ".join(
                f"{now:.0f}/s ({now / before:.2f}×)" for before, now in zip(speed, speed[1:]))
                + f" | {saved_logits:.0f}/s ({saved_logits / row['module_logits']['images_per_s']:.2f}×) "
                f"| {max(max(t) / min(t) for t in each_round):.2f}× |")
    lines.append("")
    lines.append(serving_memory_note(r))
    lines.append("")
    rounds = r.get("rounds", 1)
    if rounds > 1 or r.get("min_seconds"):
        lines.append(f"Each figure: the fastest of {rounds} rounds (every kind in turn per round, a fresh process each), "
                     f"each the median of at least {r['repeats']} calls adding up to at least {r.get('min_seconds', 0):g} s.")
        lines.append("")
    lines.append(provenance(r))
    return "\n".join(lines)


SERVING_STEPS = (  # benchmarks/serving.py --breakdown: each step adds one thing to the one before
    ("keras_final", "final head, one `tf.function`, float images"),
    ("final_chunked", "+ slices of 256 (`in_chunks`)"),
    ("module_logits", "+ uint8 input, shape check, cast: the export's `logits`, in-process"),
    ("module_serve", "+ softmax, top-k: the export's `serve`, in-process"),
    ("savedmodel", "saved and loaded: `serving_default`"))


# Files measured before serving.py read VmHWM: ru_maxrss carries the parent's peak (TensorFlow, the
# restored network, the export: ~690 MB) into every child across fork and exec.
SERVING_MEMORY_NOTE = ("Peak memory in this file is ru_maxrss, which carried the measuring parent's own peak "
                       "(~690 MB: TensorFlow, the restored network, the export) into every child: no cell can read below "
                       "it, so the small-batch figures are the parent's, not the kind's. Later files read each child's "
                       "own peak (VmHWM).")


def serving_memory_note(r):
    return SERVING_MEMORY_NOTE if "peak_memory" not in r else "Peak memory: each measuring process's own (VmHWM)."


def serving_fewshot_table(r):
    """The exported few-shot predictor vs the in-process one (benchmarks/serving.py --fewshot_workdir)."""
    run = r["fewshot_run"]
    # Files measured before the dataset was read from the features' metadata hold config.data.name,
    # which a few-shot run does not use: the features folder names what was served.
    lines = [f"`{run['method']}` (`{r['fewshot_workdir']}`) on the features in `{run['features_dir']}`; 1-shot requests "
             "over its novel classes, each measured in a fresh process:\n",
             "| request | queries | SavedModel `serving_default` | in-process predictor (evaluation's) | SavedModel vs "
             "in-process |", "| --- | --- | --- | --- | --- |"]
    for row in r["fewshot"]:
        cell = lambda k: (f"{row[k]['requests_per_s']:.1f} requests/s ({row[k]['queries_per_s']:.0f} queries/s), "  # noqa: E731
                          f"{row[k]['peak_rss_mb']:.0f} MB" + (
                              f"; load {row[k]['setup_s']:.1f} s, first request {row[k]['first_call_s']:.2f} s"
                              if "setup_s" in row[k] else ""))
        lines.append(f"| {row['request']} ({row['way']} classes) | {row['queries']} | {cell('fewshot_savedmodel')} | "
                     f"{cell('fewshot_keras')} | {row['savedmodel_vs_keras']:.2f}× |")
    lines.append("")
    lines.append(serving_memory_note(r))
    lines.append("")
    lines.append(f"Each figure: the fastest of {r.get('rounds', 1)} rounds (both kinds in turn per round), each the median "
                 f"of at least {r['repeats']} calls adding up to at least {r.get('min_seconds', 0):g} s.")
    lines.append("")
    lines.append(provenance(r))
    return "\n".join(lines)


serving_busy_table = from_result("serving", "python benchmarks/serving.py --workdir=RUN")(serving_table)
serving_idle_table = from_result("serving_idle", "python benchmarks/serving.py --workdir=RUN --name=serving_idle")(
    serving_table)
serving_breakdown_table = from_result(
    "serving_breakdown", "python benchmarks/serving.py --workdir=RUN --breakdown --rounds=3 --min_seconds=1 "
    "--name=serving_breakdown")(serving_table)


def reference_targets_table():
    """tfkd's and the PyTorch reference's generated targets at the same 6-epoch regime."""
    ours, ref = load("metadistiller_targets_6_epochs"), load("reference_metadistiller_targets_6_epochs")
    if ours is None or ref is None:
        return "_Not measured yet: see benchmarks/metadistiller_targets.py and the reference's README._"
    lines = ["| implementation | head | target entropy (nats) | target argmax accuracy | target p(true class) | "
             "accuracy of the exit it teaches |", "| --- | --- | --- | --- | --- | --- |"]
    for label, heads in (("tfkd", ours["runs"][0]["heads"]), ("PyTorch reference", ref["heads"])):
        for name in ("exit_1", "exit_2", "exit_3"):
            h = heads[name]
            lines.append(f"| {label} | T of {name.replace('_', ' ')} | {h['entropy']:.2f} | "
                         f"{100 * h['argmax_accuracy']:.1f}% | {h['true_class_probability']:.2f} | "
                         f"{100 * h['exit_accuracy']:.1f}% |")
    lines.append("")
    lines.append("tfkd: " + provenance(ours) + f" Reference (PyTorch {ref['run']['torch']}; its copy's patch that prints "
                 "the targets is recorded in the JSON; the TensorFlow version below is the machine's): " + provenance(ref))
    return "\n".join(lines)


def _exits(s_of):
    return " / ".join(f"{100 * s_of(k)['mean']:.1f}" if s_of(k) else "–" for k in ("exit_1", "exit_2", "exit_3"))


def reference_converge_table(ours_name="self_boosting_converge", ref_name="reference_converge", command_flags=""):
    """tfkd's Fashion-MNIST rows of one regime next to the PyTorch reference trained at the same config's
    regime (benchmarks/reference_table.py): tells "no effect at this scale" from "tfkd differs"."""
    ours, ref = load(ours_name), load(ref_name)
    if ours is None or ref is None or not ref["methods"]:
        return ("_Not measured yet: run `python benchmarks/reference_table.py "
                f"--reference_python=/tmp/torchref/bin/python{command_flags}`._")
    dataset = "fashion_mnist"
    d = ours["datasets"][dataset]
    if d["config_file"] != ref["config_file"]:
        return f"_The reference ran {ref['config_file']}, tfkd's table {d['config_file']}: not comparable._"
    tfkd_methods, ref_methods = d["methods"], ref["methods"]

    def over_baseline(methods, name, final_of):
        """The method's mean minus the baseline's, over the seeds both have (n of them)."""
        if name == "baseline" or "baseline" not in methods:
            return "–"
        mean, _, n = seed_paired(methods[name], methods["baseline"], final_of)
        return f"{mean:+.2f} (n={n})" if n else "–"

    lines = ["| method | tfkd final exit | PyTorch final exit | PyTorch final exit, last epoch | tfkd − baseline | "
             "PyTorch − baseline | tfkd exits 1 / 2 / 3 | PyTorch exits 1 / 2 / 3 | PyTorch best epochs | "
             "PyTorch wall time per run |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("baseline", "dsn", "self_distill", "metadistiller"):
        t, p = tfkd_methods.get(name), ref_methods.get(name)
        if not p:
            continue
        t_exits = _exits(lambda k: t.get(k)) if t and name != "baseline" else "–"
        p_exits = _exits(lambda k: p.get(k)) if name != "baseline" else "–"
        best = ", ".join(str(run["best_epoch"] + 1) for run in p["runs"])  # the reference counts from 0
        last = [run["last_test"]["final"] for run in p["runs"] if "last_test" in run]
        last_cell = f"{100 * statistics.mean(last):.2f}" if last else "–"
        lines.append(f"| {METHOD_LABELS[name]} | {pct(t.get('final')) if t else '–'} (n={t['final']['n'] if t else 0}) | "
                     f"{pct(p['final'])} (n={p['final']['n']}) | {last_cell} | "
                     f"{over_baseline(tfkd_methods, name, lambda run: run['test']['final_accuracy'])} | "
                     f"{over_baseline(ref_methods, name, lambda run: run['test']['final'])} | {t_exits} | {p_exits} | "
                     f"{best} | {p['seconds']['mean'] / 60:.0f} min |")
    lines.append("")
    lines.append(f"Both from `{ref['config_file']}`; the reference's flags, read from that file by the benchmark: "
                 f"`{' '.join(ref['reference_args'])}`, {ref['threads']} PyTorch thread(s) per run. Test accuracy %, "
                 "mean ± std over each implementation's seeds (the last-epoch column: the mean of the reference's "
                 "final exit after its last epoch, with no checkpoint choice); a difference to the baseline is within one "
                 "implementation, over the seeds both rows have. The two draw different subsets and augmentations, so single runs are not paired. "
                 "Wall time: one thread per run, other jobs sharing the 2 cores at times, so context only.")
    lines.append("")
    lines.append(f"PyTorch reference ({ref['torch']}, `../shared/reference/byot_train.py`, sha256 "
                 f"{ref['reference_sha256'][:12]}): " + provenance(ref))
    return "\n".join(lines)


def reference_step_match_table(name):
    """tfkd and the PyTorch reference trained in lockstep (benchmarks/reference_step_match.py): the
    same initial weights and batches, one row per seed, then the difference paired by seed."""
    r = load(name)
    if not r or not r.get("runs"):
        return ("_Not measured yet: run `python benchmarks/reference_step_match.py "
                f"--reference_python=/tmp/torchref/bin/python --name={name}`._")
    runs, epochs = r["runs"], r["regime"]["epochs"]
    marks = sorted({1, epochs // 2, 3 * epochs // 4, epochs})
    lines = ["| seed | initial logits, largest difference (of their largest value) | first step's loss, tfkd / reference | "
             + " | ".join(f"training loss, epoch {e}, tfkd / reference" for e in marks)
             + " | test, final exit after the last step: tfkd | reference | tfkd − reference |",
             "| --- | --- | --- | " + " | ".join("---" for _ in marks) + " | --- | --- | --- |"]
    for run in runs:
        losses = " | ".join(f"{run['tfkd_epoch_loss'][e - 1]:.3f} / {run['reference_epoch_loss'][e - 1]:.3f}"
                            for e in marks)
        lines.append(f"| {run['seed']} | {run['initial_logits_max_abs_diff']:.1e} ({run['initial_logits_scale']:.1f}) | "
                     f"{run['first_step_loss']['tfkd']:.5f} / {run['first_step_loss']['reference']:.5f} | {losses} | "
                     f"{100 * run['tfkd_test_final']:.2f} | {100 * run['reference_test_final']:.2f} | "
                     f"{100 * (run['tfkd_test_final'] - run['reference_test_final']):+.2f} |")
    diffs = [100 * (run["tfkd_test_final"] - run["reference_test_final"]) for run in runs]
    summary = paired_cell(statistics.mean(diffs), t_interval(diffs) if len(diffs) > 1 else float("inf"), len(diffs))
    regime = r["regime"]
    edits = r.get("reference_edits")
    lines += ["", f"tfkd − reference, paired by seed: **{summary}** points (95% CI, Student t over seeds). "
              f"`{regime['config_file']}`'s baseline: {regime['epochs']} epochs, lr {regime['learning_rate']} ÷10 at "
              f"epochs {', '.join(str(b) for b in regime['lr_boundaries'])}, batch {regime['batch_size']}, "
              f"{regime['max_train_examples']} training images from tfkd's pipeline (its subset, order, crop and flip), "
              "test on 10,000 images after the last step. "
              + (f"The reference edited: {edits['why']} " if edits else "The reference as shipped. ")
              + f"PyTorch {runs[0]['torch']}, {r.get('threads', 1)} thread(s).", "", provenance(r)]
    return "\n".join(lines)


def small_data_reference_edit(edit, methods="baseline,self_distill"):
    """The table of one edit of the reference (benchmarks/reference_edits/EDIT.json) at the small-data
    regime, ``methods`` (measured ones; baseline and SD unless said), next to the reference as shipped."""
    name = f"reference_small_data_{edit}"
    return lambda: reference_edit_table(
        "reference_small_data", name, f" --config=configs/bench_fashion_mnist_small_data.py --name={name} "
        f"--reference_edits=benchmarks/reference_edits/{edit}.json --methods={methods}")


def reference_edit_table(shipped_name, edited_name, command_flags):
    """The PyTorch reference as shipped next to an edited copy (benchmarks/reference_table.py
    --reference_edits) at one regime. A seed draws the same subset, initialisation, batch order and
    augmentation in both, so the edit's effect is paired by seed."""
    shipped, edited = load(shipped_name), load(edited_name)
    if not shipped or not edited or not edited.get("methods"):
        return ("_Not measured yet: run `python benchmarks/reference_table.py "
                f"--reference_python=/tmp/torchref/bin/python{command_flags}`._")
    if shipped["reference_args"] != edited["reference_args"]:
        return "_The two reference tables ran different regimes: not comparable._"

    def final(run):
        return run["test"]["final"]

    def last(e):
        values = [run["last_test"]["final"] for run in e["runs"]]
        return f"{100 * statistics.mean(values):.2f}"

    def over_baseline(methods, name):
        if name == "baseline" or "baseline" not in methods or name not in methods:
            return "–"
        return paired_cell(*seed_paired(methods[name], methods["baseline"], final))

    seeds = {run["seed"] for e in edited["methods"].values() for run in e["runs"]}
    # The as-shipped runs over the edited runs' seeds only, so the two columns describe the same draws.
    same = {k: {"runs": [run for run in e["runs"] if run["seed"] in seeds]} for k, e in shipped["methods"].items()}

    def summary(e, head):
        return summarize([run["test"][head] for run in e["runs"]])

    lines = ["| method | as shipped: final exit | edited: final exit | edited − as shipped (paired by seed) | "
             "last epoch, as shipped / edited | − baseline, as shipped | − baseline, edited | "
             "exits 1 / 2 / 3, as shipped | exits 1 / 2 / 3, edited |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("baseline", "dsn", "self_distill", "metadistiller"):
        a, b = same.get(name), edited["methods"].get(name)
        if not b:
            continue
        a = a if a and a["runs"] else None
        exits = ["–" if name == "baseline" or not e else _exits(lambda k, e=e: summary(e, k)) for e in (a, b)]
        lines.append(
            f"| {METHOD_LABELS[name]} | {pct(summary(a, 'final')) if a else '–'} | {pct(summary(b, 'final'))} | "
            f"{paired_cell(*seed_paired(b, a, final)) if a else '–'} | {last(a) if a else '–'} / {last(b)} | "
            f"{over_baseline(same, name)} | {over_baseline(edited['methods'], name)} | {exits[0]} | {exits[1]} |")
    methods = edited["methods"]
    if "metadistiller" in methods and "self_distill" in methods:
        # The paper's exit claim at the chosen checkpoint and after the last epoch: the 200-image
        # validation choice moves single runs by points, the last epoch has no choice in it.
        lines += ["", "| MD − SD, edited, paired by seed | final exit | exit 1 | exit 2 | exit 3 |",
                  "| --- | --- | --- | --- | --- |"]
        for label, key in (("checkpoint chosen on validation", "test"), ("after the last epoch", "last_test")):
            cells = paired_heads(methods["metadistiller"], methods["self_distill"], lambda run, h, k=key: run[k][h])
            lines.append(f"| {label} | {' | '.join(cells)} |")
    spec = edited["reference_edits"]
    one_line = [e for e in spec["edits"] if "\n" not in e["old"].strip() + e["new"].strip()]
    # A multi-line edit reads as a diff block (inline code would lose its lines and indentation).
    blocks = [e for e in spec["edits"] if e not in one_line]
    changes = "; ".join([f"in `{e['file']}`, `{e['old'].strip()}` → `{e['new'].strip()}`" for e in one_line] +
                        [f"in `{e['file']}`, the diff below" for e in blocks])
    lines.append("")
    lines.append(f"The edit: {changes}. Why: {spec['why']} Test accuracy %, mean ± std over the edited runs' seeds "
                 "(the as-shipped columns over the same seeds); differences in points ± 95% CI (Student t over "
                 f"seeds). The regime's flags: `{' '.join(edited['reference_args'])}`.")
    for e in blocks:
        lines += ["", "```diff"] + [f"-{line}" for line in e["old"].rstrip("\n").split("\n")] + \
            [f"+{line}" for line in e["new"].rstrip("\n").split("\n")] + ["```"]
    lines.append("")
    lines.append(f"Edited PyTorch reference ({edited['torch']}, sha256 of the edited script "
                 f"{edited['reference_sha256'][:12]}): " + provenance(edited))
    return "\n".join(lines)


EXIT_HEAD_RUNS = "self_boosting_small_data_conv_chain_exits"


def exit_head_table():
    """SD and MetaDistiller (and DSN where run) at the small-data regime with the plain conv-chain
    exits (``model.exit_head=conv_chain``) next to the same seeds with tfkd's residual bottleneck
    exits: does the paper's "MD's exits above SD's" depend on the exits' design?"""
    chain, default = load(EXIT_HEAD_RUNS), load("self_boosting_small_data")
    if not chain or not default:
        return ("_Not measured yet: run `python benchmarks/self_boosting_table.py --regime=small_data "
                "--datasets=fashion_mnist --methods=self_distill,metadistiller --override=model.exit_head=conv_chain "
                f"--name={EXIT_HEAD_RUNS}`._")
    chain_methods = chain["datasets"]["fashion_mnist"]["methods"]
    seeds = {run["seed"] for e in chain_methods.values() for run in e["runs"]}
    # Each design's runs of the methods the chain exits ran, over the chain runs' seeds.
    variants = {exits: {name: {"runs": [run for run in methods[name]["runs"] if run["seed"] in seeds]}
                        for name in ("dsn", "self_distill", "metadistiller") if name in methods and name in chain_methods}
                for exits, methods in (("plain conv chain", chain_methods),
                                       ("residual bottleneck (default)", default["datasets"]["fashion_mnist"]["methods"]))}
    lines = ["| exits | method | final exit | exit 1 | exit 2 | exit 3 | validation (final) | wall time per run | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for exits, methods in variants.items():
        for name, e in methods.items():
            runs = e["runs"]
            cells = [pct(summarize([_tfkd_accuracy(run, head) for run in runs])) for head in HEADS]
            val = statistics.mean(100 * run["val"]["final_accuracy"] for run in runs)
            lines.append(f"| {exits} | {METHOD_LABELS[name]} | {' | '.join(cells)} | {val:.2f} | "
                         f"{_wall_time(runs)} | {', '.join(str(run['seed']) for run in runs)} |")
    lines += ["", "| MD − SD, paired by seed | final exit | exit 1 | exit 2 | exit 3 |", "| --- | --- | --- | --- | --- |"]
    for exits, methods in variants.items():
        if "self_distill" in methods and "metadistiller" in methods:
            cells = paired_heads(methods["metadistiller"], methods["self_distill"], _tfkd_accuracy)
            lines.append(f"| {exits} | {' | '.join(cells)} |")
    lines += ["", "Test accuracy %, mean ± std over the conv-chain runs' seeds (the default rows over the same seeds); "
              "differences in points ± 95% CI (Student t over seeds). Everything else is the small-data regime "
              "above, default knobs; MetaDistiller's label generator then has conv-chain target heads too.", "",
              provenance(chain) + run_revisions(chain)]
    return "\n".join(lines)


def fewshot_gamma_sweep_table(table="fewshot_table_glyphs_mid_backbone"):
    """dist's validation accuracy against gamma, from dist's own searched knobs and from gen's
    (benchmarks/fewshot_gamma_sweep.py), next to gen's tuned config at the same seeds."""
    mlp = "_teacher_embedding_units_512x512_teacher_pretrain_steps_2000"
    variants = (("dist", "", "dist, the rest of dist's searched config", "dist's search"),
                ("gen", "_from_gen", "dist, gen's searched student knobs", "gen's search"),
                ("gen_mlp", "_from_gen" + mlp, "dist, gen's searched student knobs, MLP teacher (512-512, 2000 "
                 "steps)", "gen's search, with the MLP teacher"))
    sweeps = {key: load(f"{table}_gamma_sweep{suffix}") for key, suffix, _, _ in variants}
    sweeps = {k: v for k, v in sweeps.items() if v}
    header = {key: h for key, _, h, _ in variants}
    origin = {key: o for key, _, _, o in variants}
    if not sweeps:
        return f"_Not measured yet: run `python benchmarks/fewshot_gamma_sweep.py --table={table}`._"

    def cell(entry):
        s = entry.get("val_accuracy") if entry else None
        return f"{pct(s)} ({', '.join(str(r['seed']) for r in entry['runs'])})" if s else "–"

    gammas = sorted({float(g) for r in sweeps.values() for g in r["gammas"]})
    lines = ["| dist.gamma | " + " | ".join(header[k] for k in sweeps) + " |",
             "| --- | " + " | ".join("---" for _ in sweeps) + " |"]
    for g in gammas:
        label = f"{g:g}" + (" (no teacher term)" if g == 0 else "")
        searched = [k for k, r in sweeps.items() if float(r["dist_values"].get("dist.gamma", -1)) == g]
        label += " (dist's search picked this)" if searched else ""
        lines.append(f"| {label} | " + " | ".join(cell(r["gammas"].get(repr(g))) for r in sweeps.values()) + " |")
    lines.append("| gen, its own searched config | " + " | ".join(cell(r.get("gen")) for r in sweeps.values()) + " |")
    first = next(iter(sweeps.values()))
    lines.append("")
    lines.append(f"Validation-class accuracy % (the selection protocol of the table's searches: "
                 f"{', '.join(first['overrides'])}; the best epoch of each run), mean ± std over the seeds in "
                 "brackets, which are tuning seeds apart from the table's reported ones. The novel classes are not "
                 "evaluated. For reference, the searches' best trials: "
                 + ", ".join(f"{m} {100 * v:.2f}" for m, v in first["tuned_val_accuracy"].items()) + ".")
    for source, r in sweeps.items():
        lines.append("")
        lines.append(f"From {origin[source]}: " + provenance(r))
    return "\n".join(lines)


def fewshot_base_holdout_table(variant="", table="fewshot_table_glyphs_mid_backbone", flags=None):
    """dist (or Dist↓) at several gamma on held-out images of the base classes and on the novel
    alphabets (benchmarks/fewshot_base_holdout.py), each paired with gamma = 0 (gen)."""
    r = load(f"{table}_base_holdout{variant}")
    if not r or "paired_vs_gamma_0" not in r:
        # The variant's name spells its --student flags: _field_value per flag.
        student = flags if flags is not None else "".join(
            f" --student=dist.{m.group(1)}={m.group(2)}" for m in re.finditer(r"_([a-z_]+?)_(none|[\dx]+)(?=_|$)", variant))
        return f"_Not measured yet: run `python benchmarks/fewshot_base_holdout.py --table={table}{student}`._"
    method = r.get("method", "dist")
    sets = (("held_out_base", "held-out images of the base classes"), ("novel", "novel alphabets"))
    protocols = (("all_way_1shot_top1", "all-way 1-shot"), ("all_way_2shot_top1", "all-way 2-shot"),
                 ("20way_within_group_1shot", "20-way within one alphabet, 1-shot"))
    n = r["images"]
    gamma_header = "dist.gamma" if method == "dist" else f"{method}.gamma (0: dist, i.e. gen)"
    lines = [f"| {gamma_header} | validation classes (selection) | "
             + " | ".join(f"{label}: {p}" for _, label in sets for _, p in protocols)
             + " | held-out base images, many-shot (every meta-training image as support) | the run's teacher on them |",
             "| --- | --- | " + " | ".join("---" for _ in sets for _ in protocols) + " | --- | --- |"]
    for g in r["gammas"]:
        s = r["summary"][repr(float(g))]
        label = f"{g:g}" + (" (gen)" if g == 0 else "")
        lines.append(f"| {label} | {100 * s['val_accuracy']:.2f} | "
                     + " | ".join(f"{100 * s['test'][k][p]:.2f}" for k, _ in sets for p, _ in protocols)
                     + f" | {100 * s['test']['held_out_base']['many_shot_all_base_classes']:.2f} | "
                     + (f"{100 * s['test']['held_out_base']['teacher_all_base_classes']:.2f} |"
                        if "teacher_all_base_classes" in s["test"]["held_out_base"] else "– |"))
    for g, by_set in r["paired_vs_gamma_0"].items():
        lines.append(f"| {float(g):g} − 0, paired | – | " + " | ".join(
            f"{100 * by_set[k][p]['mean']:+.2f} ± {100 * by_set[k][p]['ci95']:.2f}" for k, _ in sets for p, _ in protocols)
            + " | – | – |")
    t = r["teacher"]
    lines.append("")
    lines.append(
        f"Test accuracy %, mean over meta-training seeds {', '.join(str(s) for s in r['seeds'])}; paired rows: "
        f"seed-averaged hits on the same queries (all-way) or episodes (20-way), mean ± 95% CI (points). "
        f"{r['holdout_per_class']} images of each of the {n['base_classes']} base classes are held out "
        f"({n['held_out']} images; the other {n['meta_training']} meta-train the student and form the teacher's "
        f"S_teacher). Both test sets use the same protocols: all classes at once at 1 and 2 shots "
        f"({r['protocol']['all_way_draws']} support draws, {r['protocol']['all_way_queries']} queries per class) "
        f"and 20-way within one alphabet ({r['protocol']['test_episodes']} episodes). Student knobs: gen's searched "
        f"best values from `{table}` ({', '.join(f'{k.split(chr(46), 1)[1]}={v:.3g}' if isinstance(v, float) else f'{k.split(chr(46), 1)[1]}={v}' for k, v in r['student_values'].items())})"
        + "".join(f", then {k.split(chr(46), 1)[1]}={v}" for k, v in r.get("student_changes", {}).items())
        + ("" if method == "dist" else f"; at γ > 0 `{method}` (Dist↓: direction weaken)"
           + "".join(f", {k.split(chr(46), 1)[1]}={v}" for k, v in r.get("method_changes", {}).items()))
        + "; "
        f"checkpoints chosen on validation-class episodes ({', '.join(r['selection'])}).")
    lines.append("")
    lines.append(
        f"The teacher alone (cosine prototypes of every meta-training image of each base class, all "
        f"{t['classes']} classes at once): {100 * t['training_images_own_image_inside']:.1f}% on the meta-training "
        f"images with each image inside its own class's prototype (as the meta-training queries are), "
        f"{100 * t['training_images_left_out']:.1f}% with it left out, {100 * t['heldout_images']:.1f}% on the "
        f"held-out images.")
    b = r["backbone"]
    lines.append("")
    lines.append(f"Backbone: the table's (`{b['command'].split(' ', 1)[1]}`), base-class test accuracy "
                 f"{100 * b['test_base_class_accuracy']:.1f}% (the table's: {100 * b['table_test_base_class_accuracy']:.1f}%).")
    lines.append("")
    lines.append(provenance(r))
    return "\n".join(lines)


PROGRESSIVE_HOLDOUT = "_progressive_k_start_8_schedule_steps_1500_teacher_embedding_units_512x512_teacher_pretrain_steps_2000"
PROGRESSIVE_ENSEMBLE_HOLDOUT = "_progressive_k_start_8_schedule_steps_1500_ensemble_size_4_teacher_embedding_units_512x512_teacher_pretrain_steps_2000"
# The same Dist↓ ensemble paired with an ensemble of 4 gen students at gamma = 0 (dist.ensemble_size=4
# instead of progressive.ensemble_size=4); written under PROGRESSIVE_ENSEMBLE_HOLDOUT's name and renamed,
# so that the pairing with a single gen keeps its file.
ENSEMBLES_HOLDOUT = "_progressive_ensemble_vs_gen_ensemble"
ENSEMBLES_FLAGS = (" --method=progressive --student=progressive.k_start=8 --student=progressive.schedule_steps=1500 "
                   "--student=dist.ensemble_size=4 --student=dist.teacher_embedding_units=512x512 "
                   "--student=dist.teacher_pretrain_steps=2000 --seeds=100")
# A second, independent pair of ensembles: seed 104's members are 104-107, none shared with seed
# 100's 100-103 (seed 101's would share three). Its own file: the paired hits of seed 100's runs
# are not kept, so the two seeds are reported side by side, not pooled.
ENSEMBLES_HOLDOUT_SEED_104 = ENSEMBLES_HOLDOUT + "_seed104"
ENSEMBLES_FLAGS_SEED_104 = (ENSEMBLES_FLAGS.replace("--seeds=100", "--seeds=104")
                            + f" --name=fewshot_table_glyphs_mid_backbone_base_holdout{ENSEMBLES_HOLDOUT_SEED_104}")
# Seed 104 again with a third pair (members 108-111), both seeds' hits averaged per query: a
# replicate whose CI covers two ensembles of each kind (seed 104's runs are reused).
ENSEMBLES_HOLDOUT_SEEDS_104_108 = ENSEMBLES_HOLDOUT + "_seeds_104_108"
ENSEMBLES_FLAGS_SEEDS_104_108 = (ENSEMBLES_FLAGS.replace("--seeds=100", "--seeds=104,108")
                                 + f" --name=fewshot_table_glyphs_mid_backbone_base_holdout{ENSEMBLES_HOLDOUT_SEEDS_104_108}")
HOLDOUT_VARIANTS = (  # (result suffix, student, teacher), the order of the summary's rows
    ("", "f 512-512, 1 generated", "no embedding (raw features)"),
    ("_teacher_embedding_units_512", "f 512-512, 1 generated", "linear embedding, 200 steps (paper's ImageNet)"),
    ("_teacher_embedding_units_512_teacher_pretrain_steps_2000", "f 512-512, 1 generated",
     "linear embedding, 2000 steps"),
    ("_teacher_embedding_units_512x512_teacher_pretrain_steps_2000", "f 512-512, 1 generated",
     "MLP embedding 512-512, 2000 steps"),
    (PROGRESSIVE_HOLDOUT, "Dist↓ at γ > 0 (real shots 8 → 1), f 512-512, 1 generated",
     "MLP embedding 512-512, 2000 steps"),
    (PROGRESSIVE_ENSEMBLE_HOLDOUT, "Dist↓ ensemble of 4 at γ > 0, f 512-512, 1 generated",
     "MLP embedding 512-512, 2000 steps"),
    (ENSEMBLES_HOLDOUT, "Dist↓ ensemble of 4 at γ > 0 against a `gen` ensemble of 4 at γ = 0, f 512-512, 1 generated",
     "MLP embedding 512-512, 2000 steps"),
    (ENSEMBLES_HOLDOUT_SEED_104, "the same two ensembles, members seeded 104–107", "MLP embedding 512-512, 2000 steps"),
    (ENSEMBLES_HOLDOUT_SEEDS_104_108, "the same two ensembles, members seeded 104–107 and 108–111, hits averaged",
     "MLP embedding 512-512, 2000 steps"),
    ("_embedding_units_none", "no f, 1 generated (paper's miniImageNet)", "no embedding (raw features)"),
    ("_embedding_units_none_num_generated_8", "no f, 8 generated", "no embedding (raw features)"),
)


def ensemble_replicates(protocol="all_way_1shot_top1"):
    """[(seed, Dist↓ ensemble − gen ensemble in points on the novel alphabets)], one per seed of the
    ensemble-vs-ensemble base-holdout files, each seed's two runs paired by their means."""
    by_seed = {}
    for suffix in (ENSEMBLES_HOLDOUT, ENSEMBLES_HOLDOUT_SEED_104, ENSEMBLES_HOLDOUT_SEEDS_104_108):
        for run in (load(f"fewshot_table_glyphs_mid_backbone_base_holdout{suffix}") or {}).get("runs", []):
            by_seed.setdefault(run["seed"], {})[run["gamma"]] = 100 * run["test"]["novel"][protocol]
    # Both kinds must have run (seed 100's file also holds a single gen run of seed 101, left from its reference).
    return [(seed, g[0.5] - g[0.0]) for seed, g in sorted(by_seed.items()) if set(g) == {0.0, 0.5}]


def fewshot_base_holdout_summary(table="fewshot_table_glyphs_mid_backbone", gamma="0.5"):
    """One row per base-holdout variant: how strong its teacher is against the student's own
    many-shot classifier, and what the teacher's term at ``gamma`` does, paired with gamma = 0."""
    lines = [f"| student | teacher | teacher, many-shot on held-out base images | student's own many-shot there, "
             f"γ = 0 → {gamma} | γ = {gamma} − 0: held-out base, all-way 1-shot | novel, all-way 1-shot | "
             "novel, all-way 2-shot | novel, 20-way within one alphabet, 1-shot |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for suffix, student, teacher in HOLDOUT_VARIANTS:
        r = load(f"{table}_base_holdout{suffix}")
        if not r or "paired_vs_gamma_0" not in r or repr(float(gamma)) not in r["paired_vs_gamma_0"]:
            lines.append(f"| {student} | {teacher} | not measured yet | | | | | |")
            continue
        held = {g: r["summary"][g]["test"]["held_out_base"] for g in ("0.0", repr(float(gamma)))}
        d = r["paired_vs_gamma_0"][repr(float(gamma))]
        cells = [f"{100 * d[k][p]['mean']:+.2f} ± {100 * d[k][p]['ci95']:.2f}" for k, p in (
            ("held_out_base", "all_way_1shot_top1"), ("novel", "all_way_1shot_top1"), ("novel", "all_way_2shot_top1"),
            ("novel", "20way_within_group_1shot"))]
        seeds = "" if r["seeds"] == [100, 101] else f" (seeds {', '.join(str(x) for x in r['seeds'])})"
        lines.append(f"| {student}{seeds} | {teacher} | {100 * held['0.0']['teacher_all_base_classes']:.1f} | "
                     f"{100 * held['0.0']['many_shot_all_base_classes']:.1f} → "
                     f"{100 * held[repr(float(gamma))]['many_shot_all_base_classes']:.1f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Accuracy %, differences in points (mean ± 95% CI, paired on the same queries or episodes, seeds "
                 "100 and 101 averaged unless a row says otherwise); every row from its own `benchmarks/fewshot_base_holdout.py` run (tables "
                 "below). Many-shot: every meta-training image of each base class as the support, all 449 base "
                 "classes at once, on the held-out images.")
    return "\n".join(lines)


# The paper's claims, each checked against the committed results; the README's first table of
# evidence. A claim "A > B" is read from the difference A − B and its 95% CI.
T95 = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26, 11: 2.23, 12: 2.20,
       13: 2.18}  # two-sided Student t, n − 1 degrees of freedom


def verdict(mean, ci, at_least=False):
    """What the measured difference A − B (mean ± 95% CI) says of the claim A > B (A ≥ B)."""
    if mean + ci < 0:
        return "**reversed** (CI below 0)"
    if at_least:
        return "holds (no drop outside the CI)"
    if mean - ci > 0:
        return "**holds** (CI above 0)"
    return "trend only (CI includes 0)" if mean > 0 else "not seen (CI includes 0)"


def seed_paired(a, b, accuracy):
    """a − b in points over the seeds both ran: (mean, 95% CI by Student t over seeds, n)."""
    by_seed = [{run["seed"]: accuracy(run) for run in e["runs"]} for e in (a, b)]
    seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
    diffs = [100 * (by_seed[0][s] - by_seed[1][s]) for s in seeds]
    if len(diffs) < 2:
        return (diffs[0] if diffs else float("nan")), float("inf"), len(diffs)
    return statistics.mean(diffs), t_interval(diffs), len(diffs)


def t_interval(values):
    """Half-width of the two-sided 95% Student-t interval of the mean of ``values`` (at least two)."""
    return T95.get(len(values), 2.0) * statistics.stdev(values) / math.sqrt(len(values))


HEADS = ("final", "exit_1", "exit_2", "exit_3")


def paired_heads(a, b, accuracy):
    """``paired_cell`` of A − B for every head in HEADS; ``accuracy(run, head)``."""
    return [paired_cell(*seed_paired(a, b, lambda run, h=head: accuracy(run, h))) for head in HEADS]


def paired_cell(mean, ci, n):
    """A seed-paired difference as a table cell; one shared seed gives no interval."""
    if n == 0:
        return "no shared seeds"
    if n == 1:
        return f"{mean:+.2f} (n=1: one shared seed, no CI yet)"
    return f"{mean:+.2f} ± {ci:.2f} (n={n})"


def self_boosting_chosen(dataset):
    """Each self-boosting method's variant with the best mean validation among all measured at the
    convergent regime on ``dataset`` (default knobs, the equal-budget search's winner, the extra
    MetaDistiller rows): method -> (label, results entry)."""
    candidates = {n: [] for n in SELF_BOOSTING_ORDER}
    for label, name in (("default knobs", "self_boosting_converge"), ("searched", "self_boosting_converge_tuned")):
        for n, e in ((load(name) or {}).get("datasets", {}).get(dataset, {}).get("methods", {})).items():
            candidates[n].append((label, e))
    for name, method, _, change in CONVERGE_VARIANTS:
        e = (load(name) or {}).get("datasets", {}).get(dataset, {}).get("methods", {}).get(method)
        if e:
            candidates[method].append((change, e))
    return {n: best_on_validation(options)[0] for n, options in candidates.items() if options}


SELF_BOOSTING_CLAIMS = (  # (claim, A, B, head, at_least)
    ("MD > SD, final exit", "metadistiller", "self_distill", "final", False),
    ("SD > DSN, final exit", "self_distill", "dsn", "final", False),
    ("DSN ≥ baseline, final exit", "dsn", "baseline", "final", True),
    ("MD's exit 1 > SD's exit 1", "metadistiller", "self_distill", "exit_1", False),
    ("MD's exit 2 > SD's exit 2", "metadistiller", "self_distill", "exit_2", False),
    ("MD's exit 3 > SD's exit 3", "metadistiller", "self_distill", "exit_3", False),
)


def _tfkd_accuracy(run, head):
    return run["test"][f"{head}_accuracy"]


def _reference_accuracy(run, head):
    return run["test"][head]


def self_boosting_default_columns():
    """[(header, {method: results entry}, accuracy(run, head), (results name, dataset))] of every
    regime measured with the methods' default knobs, in tfkd and in the PyTorch reference."""
    columns = []
    for name, dataset, label in (("self_boosting_converge", "fashion_mnist", "tfkd, Fashion-MNIST (10k)"),
                                 ("self_boosting_converge", "glyphs", "tfkd, glyphs (761 classes)"),
                                 ("self_boosting_small_data", "fashion_mnist",
                                  "tfkd, Fashion-MNIST (2k images, 100 epochs)"),
                                 (EXIT_HEAD_RUNS, "fashion_mnist",
                                  "tfkd, Fashion-MNIST (2k images, 100 epochs), plain conv-chain exits")):
        methods = (load(name) or {}).get("datasets", {}).get(dataset, {}).get("methods")
        if methods:
            columns.append((label, methods, _tfkd_accuracy, (name, dataset)))
    for name, label, whole in (("reference_converge", "Fashion-MNIST (10k)", False),
                               ("reference_small_data", "Fashion-MNIST (2k images, 100 epochs)", False),
                               # Like for like with tfkd's data handling: no update on a last batch of 8.
                               ("reference_small_data_drop_last_batch",
                                "Fashion-MNIST (2k images, 100 epochs), without its last batch of 8 images", True)):
        ref = load(name)
        # An edited reference (``whole``) becomes a column once every method has run in it.
        if ref and ref["methods"] and (not whole or set(SELF_BOOSTING_ORDER) <= set(ref["methods"])):
            columns.append((f"the PyTorch reference, {label}", ref["methods"], _reference_accuracy, (name, None)))
    return columns


def evidence_self_boosting_table():
    """MetaDistiller's Table 1 / 4 claims at the convergent regime, in tfkd and the PyTorch reference."""
    columns = [(f"tfkd, {label}", self_boosting_chosen(dataset), _tfkd_accuracy)
               for dataset, label in (("fashion_mnist", "Fashion-MNIST (10k)"), ("glyphs", "glyphs (761 classes)"))]
    # The other regimes were run with default knobs only (the first two are also in the chosen columns).
    columns += [(f"{header}, default knobs", {n: ("default knobs", e) for n, e in methods.items()}, accuracy)
                for header, methods, accuracy, _ in self_boosting_default_columns()
                if header not in {c[0] for c in columns}]
    lines = ["| paper's claim | " + " | ".join(c[0] for c in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for claim, a, b, head, at_least in SELF_BOOSTING_CLAIMS:
        cells = []
        for _, chosen, accuracy in columns:
            if a not in chosen or b not in chosen:
                cells.append("not measured")
                continue
            mean, ci, n = seed_paired(chosen[a][1], chosen[b][1], lambda run: accuracy(run, head))
            cells.append(f"{paired_cell(mean, ci, n)}: {verdict(mean, ci, at_least)}" if n > 1 else paired_cell(mean, ci, n))
        lines.append(f"| {claim} | " + " | ".join(cells) + " |")
    picks = "; ".join(f"{header[len('tfkd, '):]}: " + ", ".join(f"{METHOD_LABELS[n].split(' (')[0]} {label}"
                                                                for n, (label, _) in chosen.items())
                      for header, chosen, _ in columns[:2])
    lines += ["", "Test accuracy difference A − B in points, mean over the seeds both ran ± 95% CI (Student t over "
              "seeds), each run's checkpoint chosen on validation; width 0.125, the papers' step schedule, 40 epochs (100 "
              "on 2k images). "
              f"Each method is its variant with the best mean validation among those measured ({picks})."]
    return "\n".join(lines)


def exit_soft_terms_table():
    """Each exit of SD and of MetaDistiller against DSN's (the same exits trained on the labels alone):
    what the soft half of the exits' loss, SD's final output or MD's generated targets, adds. The
    MetaDistiller variants of the convergent table get rows of their own where they were run."""
    columns = [c for c in self_boosting_default_columns() if "dsn" in c[1]]  # DSN is what each exit is paired with
    if not columns:
        return "_Not measured yet: run `python benchmarks/self_boosting_table.py --regime=converge`._"

    # Each row: its label and its results entry in every column (None where it was not run). A
    # MetaDistiller variant of the convergent table only has entries in that regime's columns.
    rows = [("SD: the final output", [methods.get("self_distill") for _, methods, _, _ in columns]),
            ("MD: the generator's", [methods.get("metadistiller") for _, methods, _, _ in columns])]
    for regime, variants in REGIME_VARIANTS.items():
        for name, method, _, change in variants:
            if method != "metadistiller":
                continue
            datasets = (load(name) or {}).get("datasets", {})
            rows.append((f"MD with `{change}`: the generator's",
                         [datasets.get(dataset, {}).get("methods", {}).get("metadistiller")
                          if results == regime else None for _, _, _, (results, dataset) in columns]))
    lines = ["| exit | soft targets of the exits | " + " | ".join(c[0] for c in columns) + " |",
             "| --- | --- |" + " --- |" * len(columns)]
    for head in ("exit_1", "exit_2", "exit_3"):
        for targets, entries in rows:
            cells = []
            for (_, methods, accuracy, _), entry in zip(columns, entries):
                if entry is None or "dsn" not in methods:
                    cells.append("not measured")
                    continue
                mean, ci, n = seed_paired(entry, methods["dsn"], lambda run: accuracy(run, head))
                cells.append(paired_cell(mean, ci, n))
            if set(cells) != {"not measured"}:
                lines.append(f"| {head.replace('_', ' ')} | {targets} | " + " | ".join(cells) + " |")
    lines += ["", "Test accuracy of the exit minus DSN's same exit, points, mean over the seeds both ran ± 95% CI "
              "(Student t over seeds); each run's checkpoint chosen on validation. SD and MD with their default "
              "knobs (α = 0.5: half of each exit's loss is the soft term); the MD variants are the convergent "
              "table's rows, each with the one change it names. DSN trains the exits on the labels alone, "
              "so a negative difference means the soft targets cost the exit accuracy."]
    return "\n".join(lines)


MLP_TEACHER_TABLE = "fewshot_table_glyphs_mid_backbone_mlp_teacher"
FIXED_T_TABLE = MLP_TEACHER_TABLE + "_fixed_temperature"  # the same with learn_temperature=False
FEWSHOT_CLAIMS = (("Gen > cosine", "gen - cosine"), ("Dist > Gen", "dist - gen"), ("Dist↓ ≥ Dist", "dist_down - dist"),
                  ("Dist↓ ensemble > Dist↓", "dist_down_ensemble - dist_down"))


def evidence_fewshot_table():
    """The progressive-distillation paper's ordering (its Table 1) on novel glyph alphabets."""
    protocols = (("all_way_1shot_top1", "all-way 1-shot"), ("20way_within_group_1shot", "20-way within one alphabet, 1-shot"))
    searched = "each row searched (12 trials)"
    tables = (("strong backbone", f"{searched}, the paper's teacher", load("fewshot_table_glyphs_tuned")),
              ("mid backbone", f"{searched}, the paper's teacher", load("fewshot_table_glyphs_mid_backbone")),
              ("mid backbone", f"{searched}; Dist and Dist↓ with a teacher stronger than the student (MLP "
               "embedding)", load(MLP_TEACHER_TABLE)),
              ("mid backbone", f"{searched}; Dist and Dist↓ with the MLP teacher and T held at its initial value "
               "(`learn_temperature=False`)",
               load(FIXED_T_TABLE)))
    tables = tables[:2] + tuple(t for t in tables[2:] if t[2] is not None)  # a variant shows once measured

    def cell(d, at_least=False):
        if not d:
            return "not measured"
        mean, ci = 100 * d["mean"], 100 * d["ci95"]
        return f"{mean:+.2f} ± {ci:.2f}: {verdict(mean, ci, at_least)}"

    lines = ["| paper's claim | setting | " + " | ".join(label for _, label in protocols) + " |",
             "| --- | --- |" + " --- |" * len(protocols)]
    for claim, step in FEWSHOT_CLAIMS:
        for backbone, setting, r in tables:
            steps = (r or {}).get("paired_steps", {}).get(step, {})
            changed = (r or {}).get("row_overrides")
            if changed and not (steps and any(row in changed for row in step.split(" - "))):
                continue  # a table that changes some rows only: its other steps are the plain table's,
                # and a step it did not run (e.g. its rows leave the ensemble out) is not a result
            lines.append(f"| {claim} | {backbone}, {setting} | "
                         + " | ".join(cell(steps.get(p), "≥" in claim) for p, _ in protocols) + " |")
    # The replicate's row once it has run: the two-seed file, whose runs include seed 104's alone.
    replicate = [(suffix, "Dist↓ ensemble > Gen ensemble") for suffix in (
        ENSEMBLES_HOLDOUT_SEEDS_104_108, ENSEMBLES_HOLDOUT_SEED_104)
        if load(f"fewshot_table_glyphs_mid_backbone_base_holdout{suffix}")][:1]
    for suffix, claim in [(PROGRESSIVE_HOLDOUT, "Dist↓ > Gen"),
                          (ENSEMBLES_HOLDOUT, "Dist↓ ensemble > Gen ensemble")] + replicate:
        r = load(f"fewshot_table_glyphs_mid_backbone_base_holdout{suffix}")
        novel = (r or {}).get("paired_vs_gamma_0", {}).get("0.5", {}).get("novel", {})
        seeds = f", seeds {', '.join(map(str, r['seeds']))}" if r else ""
        lines.append(f"| {claim} | mid backbone, a teacher stronger than the student (MLP embedding){seeds} | "
                     + " | ".join(cell(novel.get(p)) for p, _ in protocols) + " |")
    replicates = ensemble_replicates()
    if len(replicates) >= 2:
        diffs = [d for _, d in replicates]
        lines += ["", "Dist↓ ensemble − Gen ensemble over the independent replicates (one pair of ensembles per seed, "
                  "members seed … seed + 3, none shared), novel all-way 1-shot: "
                  + ", ".join(f"seed {seed} {d:+.2f}" for seed, d in replicates)
                  + f"; mean {statistics.mean(diffs):+.2f} ± {t_interval(diffs):.2f} (95% Student t over the "
                  f"{len(diffs)} seeds, so seed-to-seed variation is in this CI)."]
    lines += ["", "Novel classes (165 letters of 4 alphabets never seen in training). Difference A − B in points ± 95% CI over the "
              "test queries (all-way) or episodes (20-way), paired on the same ones, each model's hits averaged "
              "over its seeds (3 for the tables, as listed for the rest), so the CI leaves out seed-to-seed "
              "variation. Backbones (base-class test accuracy): " + "; ".join(
                  f"{backbone} {r['backbone']['epochs']} epochs, {100 * r['backbone']['test_base_class_accuracy']:.1f} %"
                  for backbone, _, r in tables[:2] if r) + ". The paper's teacher: cosine prototypes of every base "
              "example on the raw features."]
    return "\n".join(lines)


TABLES = {"teacher_student": teacher_student_table, "teacher_student_converge": teacher_student_converge_table,
          "teacher_student_small_data": teacher_student_small_data_table,
          "evidence_teacher_student": evidence_teacher_student_table,
          "scaling": scaling_table,
          "fewshot_glyphs": lambda: fewshot_table("glyphs"),
          "fewshot_fashion_mnist": lambda: fewshot_table("fashion_mnist"),
          "fewshot_glyphs_tuned": fewshot_tuned_table,
          "fewshot_glyphs_mid_backbone": lambda: fewshot_tuned_table("fewshot_table_glyphs_mid_backbone"),
          "fewshot_glyphs_mid_backbone_mlp_teacher": lambda: fewshot_tuned_table(MLP_TEACHER_TABLE),
          "fewshot_glyphs_mid_backbone_mlp_teacher_fixed_temperature": lambda: fewshot_tuned_table(FIXED_T_TABLE),
          "fewshot_glyphs_weak_backbone": lambda: fewshot_table("glyphs", "fewshot_table_glyphs_weak_backbone"),
          "self_boosting": self_boosting_table, "self_boosting_converge": self_boosting_converge_table,
          "self_boosting_small_data": lambda: self_boosting_converge_table("self_boosting_small_data",
                                                                           SMALL_DATA_VARIANTS, "small_data"),
          "self_boosting_tuned": self_boosting_tuned_table,
          "step_cost": step_cost_table, "step_cost_meta_batch": step_cost_meta_batch_table,
          "step_cost_idle": step_cost_idle_table, "step_cost_one_intra_thread": step_cost_one_intra_thread_table,
          "step_cost_threads_one_intra": step_cost_threads_one_intra_table,
          "step_cost_threads_default": step_cost_threads_default_table,
          "first_step": first_step_table, "first_step_idle": first_step_idle_table,
          "first_step_static_bn": first_step_static_bn_table,
          "first_step_bn_second_order": first_step_bn_second_order_table,
          "first_step_frozen_statistics": first_step_frozen_statistics_table,
          "first_step_meta_graph": first_step_meta_graph_table,
          "first_step_grappler_off": first_step_grappler_off_table, "batchnorm_ab": batchnorm_ab_table,
          "generator_lr": generator_lr_table, "default_job": default_job_table,
          "metadistiller_targets": targets_fashion_mnist_table,
          "metadistiller_targets_glyphs": targets_glyphs_table, "test_suite": test_suite_table,
          "serving": serving_busy_table, "serving_idle": serving_idle_table,
          "serving_breakdown": serving_breakdown_table,
          "serving_fewshot": from_result(
              "serving_fewshot", "python benchmarks/serving.py --fewshot_workdir=FEWSHOT_RUN --rounds=3 --min_seconds=1 "
              "--name=serving_fewshot")(serving_fewshot_table),
          "reference_targets": reference_targets_table,
          "reference_converge": reference_converge_table, "exit_soft_terms": exit_soft_terms_table,
          "reference_small_data": lambda: reference_converge_table(
              "self_boosting_small_data", "reference_small_data",
              " --config=configs/bench_fashion_mnist_small_data.py --name=reference_small_data"),
          "reference_small_data_black_crop_borders": small_data_reference_edit("black_crop_borders"),
          "reference_small_data_tfkd_init": small_data_reference_edit("tfkd_init"),
          "reference_small_data_tfkd_split": small_data_reference_edit("tfkd_split"),
          "self_boosting_small_data_conv_chain_exits": exit_head_table,
          "reference_small_data_drop_last_batch": small_data_reference_edit(
              "drop_last_batch", "baseline,dsn,self_distill,metadistiller"),
          "reference_step_match_tf_same_padding": lambda: reference_step_match_table(
              "reference_step_match_tf_same_padding"),
          "reference_step_match": lambda: reference_step_match_table("reference_step_match"),
          "fewshot_gamma_sweep": fewshot_gamma_sweep_table,
          "fewshot_base_holdout": fewshot_base_holdout_table,
          "fewshot_base_holdout_summary": fewshot_base_holdout_summary,
          "fewshot_base_holdout_no_f": lambda: fewshot_base_holdout_table("_embedding_units_none"),
          "fewshot_base_holdout_teacher_f": lambda: fewshot_base_holdout_table("_teacher_embedding_units_512"),
          "fewshot_base_holdout_teacher_f_2000": lambda: fewshot_base_holdout_table(
              "_teacher_embedding_units_512_teacher_pretrain_steps_2000"),
          "fewshot_base_holdout_no_f_8_generated": lambda: fewshot_base_holdout_table(
              "_embedding_units_none_num_generated_8"),
          "fewshot_base_holdout_mlp_teacher": lambda: fewshot_base_holdout_table(
              "_teacher_embedding_units_512x512_teacher_pretrain_steps_2000"),
          "fewshot_base_holdout_progressive_mlp_teacher": lambda: fewshot_base_holdout_table(
              PROGRESSIVE_HOLDOUT, flags=" --method=progressive --student=progressive.k_start=8 "
              "--student=progressive.schedule_steps=1500 --student=dist.teacher_embedding_units=512x512 "
              "--student=dist.teacher_pretrain_steps=2000"),
          "fewshot_base_holdout_progressive_ensemble_mlp_teacher": lambda: fewshot_base_holdout_table(
              PROGRESSIVE_ENSEMBLE_HOLDOUT, flags=" --method=progressive --student=progressive.k_start=8 "
              "--student=progressive.schedule_steps=1500 --student=progressive.ensemble_size=4 "
              "--student=dist.teacher_embedding_units=512x512 --student=dist.teacher_pretrain_steps=2000 --seeds=100"),
          "fewshot_base_holdout_ensembles_mlp_teacher": lambda: fewshot_base_holdout_table(
              ENSEMBLES_HOLDOUT, flags=ENSEMBLES_FLAGS) + (
              f"\nThis run wrote `benchmarks/results/fewshot_table_glyphs_mid_backbone_base_holdout"
              f"{PROGRESSIVE_ENSEMBLE_HOLDOUT}.json`; the file was renamed to `..._base_holdout{ENSEMBLES_HOLDOUT}.json` "
              "so that the pairing with a single `gen` (the table above) keeps its own file."
              if load(f"fewshot_table_glyphs_mid_backbone_base_holdout{ENSEMBLES_HOLDOUT}") else ""),
          "fewshot_base_holdout_ensembles_mlp_teacher_seed104": lambda: fewshot_base_holdout_table(
              ENSEMBLES_HOLDOUT_SEED_104, flags=ENSEMBLES_FLAGS_SEED_104),
          "fewshot_base_holdout_ensembles_mlp_teacher_seeds_104_108": lambda: fewshot_base_holdout_table(
              ENSEMBLES_HOLDOUT_SEEDS_104_108, flags=ENSEMBLES_FLAGS_SEEDS_104_108),
          "metadistiller_lookahead_probe": lookahead_probe_table,
          "metadistiller_generator_only": generator_only_table,
          "metadistiller_targets_meta_steps": targets_meta_steps_table,
          "evidence_self_boosting": evidence_self_boosting_table, "evidence_fewshot": evidence_fewshot_table}


def unmatched_markers(text):
    """Problems with the documents' marker pairs (``text``: all of them together), one line each: a
    table with no pair (it would never be written), a pair naming no table (it would never be
    filled), an opening with no closing."""
    opened = re.findall(r"<!-- table:([\w.-]+) -->", text)
    closed = set(re.findall(r"<!-- /table:([\w.-]+) -->", text))
    return ([f"table {name!r} has no <!-- table:{name} --> marker pair in README.md or docs/benchmarks.md"
             for name in TABLES if name not in opened] +
            [f"marker table:{name} names no table in benchmarks/make_tables.py TABLES"
             for name in opened if name not in TABLES] +
            [f"marker table:{name} has no closing <!-- /table:{name} -->" for name in opened
             if name not in closed])


def render(text):
    for name, fn in TABLES.items():
        # The body may be empty: a new marker pair is filled on the first run.
        pattern = re.compile(rf"(<!-- table:{name} -->\n)(?:.*?\n)?(<!-- /table:{name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + fn() + "\n" + m.group(2), text)
    return text


def main():
    old = {}
    for path in DOCUMENTS:
        with open(path) as f:
            old[path] = f.read()
    problems = unmatched_markers("".join(old.values()))
    if problems:
        print("\n".join(problems))
        sys.exit(1)
    new = {path: render(text) for path, text in old.items()}
    stale = [os.path.relpath(path, REPO) for path in DOCUMENTS if new[path] != old[path]]
    if "--check" in sys.argv:
        if stale:
            print(f"{', '.join(stale)}: tables out of date: run python benchmarks/make_tables.py")
            sys.exit(1)
        return
    for path in DOCUMENTS:
        if new[path] != old[path]:
            try:
                io.write_text_atomic(path, new[path])  # a killed or failed write leaves the old document
            except UserError as e:  # a full disk: one line, as every tfkd command says it
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
    print("README.md and docs/benchmarks.md tables up to date")


if __name__ == "__main__":
    main()
