"""Hyper-parameter searches with Keras Tuner (behind ``bin/tune``).

Every trial is a full ``bin/train`` run of the experiment (its own resumable workdir under
``WORKDIR/trials/``) with the sampled values applied to the config; the objective is a
validation metric of the trial's best epoch (``config.tune.objective``; few-shot methods:
``val_accuracy`` on validation-class episodes). Test data is never looked at.

The search space is data in the config, ``config.tune.space``: a tuple of ``"field=kind:args"``
strings, e.g. ``"train.learning_rate=log:1e-3:0.3"``, ``"metadistiller.alpha=float:0.1:0.9"``,
``"metadistiller.meta_every_epochs=choice:1,3,5"``, ``"train.epochs=int:1:4"``. A tuple field
takes ``x``-joined choices, ``none`` for the empty tuple: ``"cosine.embedding_units=choice:none,256x256"``.
Left empty, the method's own default space (``default_search_space``) is used.

Few-shot trials skip the novel-class evaluation (``config.fewshot.evaluate_novel``): it would
cost time and nothing may be chosen on it; ``best_config.py`` evaluates as usual.

Keras Tuner swallows trial exceptions; here the first failure's traceback is printed and kept
in ``WORKDIR/failures.txt``, and the search stops after ``max_consecutive_failed_trials``
failures in a row. Re-running the same command resumes the search (the oracle's state and the
finished trials are on disk). The best trial's config is written as a ready-to-run config file
(``best_config.py``), and a trials x hyper-parameters x score table is printed and saved.
"""
import json
import math
import os
import traceback

import keras_tuner
import ml_collections

from tfkd import io, train
from tfkd.distribute import set_thread_counts
from tfkd.errors import ConfigError
from tfkd.registry import METHODS

TUNERS = ("random", "bayesian", "hyperband")
KINDS = ("float", "log", "int", "choice")

# Used when neither config.tune.space nor the method declares one.
COMMON_SPACE = ("train.learning_rate=log:0.01:0.3", "train.weight_decay=log:1e-5:1e-3")
METHOD_SPACES = {
    "self_distill": ("self_distill.alpha=float:0.1:0.9", "self_distill.tau=choice:1.0,2.0,3.0"),
    "metadistiller": ("metadistiller.alpha=float:0.1:0.9", "metadistiller.tau=choice:1.0,2.0,3.0",
                      "metadistiller.generator_lr=log:1e-4:0.1", "metadistiller.meta_every_epochs=choice:1,3,5"),
    "kd": ("kd.alpha=float:0.5:0.95", "kd.temperature=choice:2.0,4.0,8.0"),
    "progressive": ("progressive.gamma=log:0.5:150", "progressive.temperature_init=choice:3.0,7.0,12.0",
                    "progressive.schedule=choice:log,linear"),
    "dist": ("dist.gamma=log:0.5:150", "dist.temperature_init=choice:3.0,7.0,12.0"),
}


def _value(text):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _as_tuple(text):
    """'256x256' -> (256, 256), 'none' -> (); None when ``text`` is neither."""
    if text.strip().lower() == "none":
        return ()
    parts = [_value(p) for p in text.split("x")]
    return tuple(parts) if all(isinstance(p, (int, float)) for p in parts) else None


def parse_space(specs, config):
    """[(field, kind, args)] from ``"field=kind:args"`` strings; every field must exist in ``config``."""
    out = []
    for spec in specs:
        field, sep, rest = spec.partition("=")
        kind, _, args = rest.partition(":")
        if not sep or kind not in KINDS:
            raise ConfigError(f"config.tune.space entry {spec!r}: expected 'field=kind:args' with kind in {KINDS}")
        node = config
        for part in field.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise ConfigError(f"config.tune.space entry {spec!r}: config.{field} does not exist")
            node = node[part]
        if kind == "choice":
            is_tuple = isinstance(node, (tuple, list))
            values = [v if is_tuple else _value(v) for v in args.split(",") if v]
            if not values:
                raise ConfigError(f"config.tune.space entry {spec!r}: choice needs values")
            for v in values if is_tuple else ():
                if _as_tuple(v) is None:
                    raise ConfigError(f"config.tune.space entry {spec!r}: {v!r} is not a tuple choice; expected "
                                      f"x-joined numbers such as 256x256, or none")
            out.append((field, kind, values))
            continue
        if isinstance(node, (tuple, list)):
            raise ConfigError(f"config.tune.space entry {spec!r}: config.{field} is a tuple; use choice:none,256x256")
        try:
            lo, hi = (_value(v) for v in args.split(":"))
        except ValueError:
            raise ConfigError(f"config.tune.space entry {spec!r}: {kind} needs 'low:high'") from None
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
            raise ConfigError(f"config.tune.space entry {spec!r}: expected numbers low < high")
        if kind == "log" and lo <= 0:
            raise ConfigError(f"config.tune.space entry {spec!r}: log sampling needs low > 0")
        out.append((field, kind, (lo, hi)))
    return out


def default_space(method):
    return tuple(METHOD_SPACES.get(method, ())) + COMMON_SPACE


def sample(hp, space):
    """Registers the space with a Keras Tuner ``HyperParameters`` and returns {field: value}."""
    values = {}
    for field, kind, args in space:
        if kind == "choice":
            values[field] = hp.Choice(field, args)
        elif kind == "int":
            values[field] = hp.Int(field, int(args[0]), int(args[1]))
        else:
            values[field] = hp.Float(field, float(args[0]), float(args[1]), sampling="log" if kind == "log" else "linear")
    return values


def apply_values(config, values):
    config = ml_collections.ConfigDict(config.to_dict())
    for field, value in values.items():
        *parents, leaf = field.split(".")
        node = config
        for part in parents:
            node = node[part]
        if isinstance(node[leaf], (tuple, list)):
            node[leaf] = _as_tuple(str(value))
        elif isinstance(node[leaf], (int, float)) and not isinstance(node[leaf], bool):
            node[leaf] = type(node[leaf])(value)
        else:
            node[leaf] = value
    return config


def _tuner_class(kind):
    bases = {"random": keras_tuner.RandomSearch, "bayesian": keras_tuner.BayesianOptimization,
             "hyperband": keras_tuner.Hyperband}
    base = bases[kind]

    class TrainRunTuner(base):
        """run_trial = one bin/train run; Hyperband's budget is the number of epochs."""

        def __init__(self, *args, base_config, space, workdir, strategy, objective_name, fewshot, **kwargs):
            self.base_config, self.space, self.runs_dir = base_config, space, os.path.join(workdir, "trials")
            self.fewshot = fewshot
            self.strategy, self.objective_name = strategy, objective_name
            self.failures_file = os.path.join(workdir, "failures.txt")
            super().__init__(*args, **kwargs)

        def run_trial(self, trial, *args, **kwargs):
            values = sample(trial.hyperparameters, self.space)
            config = apply_values(self.base_config, values)
            # A search never sees test (novel classes for few-shot), and a trial's export would only
            # be thrown away: the best values are retrained from best_config.py.
            if self.fewshot:
                config.fewshot.evaluate_novel = False
            else:
                config.train.evaluate_test = False
            config.export.enabled = False
            if "tuner/epochs" in trial.hyperparameters.values:
                config.train.epochs = int(trial.hyperparameters.values["tuner/epochs"])
            trial_dir = os.path.join(self.runs_dir, trial.trial_id)
            done = os.path.join(trial_dir, "metrics.json")
            try:
                if os.path.exists(done):  # finished before an interruption the oracle did not record
                    with open(done) as f:
                        metrics = json.load(f)
                else:
                    metrics = train.run(config, trial_dir, strategy=self.strategy)
            except Exception:
                text = traceback.format_exc()
                first = not os.path.exists(self.failures_file)
                with open(self.failures_file, "a") as f:
                    f.write(f"--- trial {trial.trial_id} {json.dumps(values)}\n{text}\n")
                if first:
                    print(f"\nTrial {trial.trial_id} failed (all failures: {self.failures_file}):\n{text}", flush=True)
                raise
            score = objective_value(metrics, self.objective_name)
            with open(os.path.join(trial_dir, "trial.json"), "w") as f:
                json.dump({"values": values, "objective": self.objective_name, "score": score}, f)
            return {self.objective_name: score}

    return TrainRunTuner


def objective_value(metrics, name):
    if metrics.get("task") == "fewshot":
        if name != "val_accuracy":
            raise ConfigError(f"config.tune.objective={name!r}: few-shot runs are selected on 'val_accuracy' "
                              f"(validation-class episodes)")
        return float(metrics["val_accuracy"])
    key = name[len("val_"):] if name.startswith("val_") else name
    if key not in metrics["val"]:
        raise ConfigError(f"config.tune.objective={name!r}: not a validation metric; have "
                          f"{sorted('val_' + k for k in metrics['val'])}")
    return float(metrics["val"][key])


def tune(config, workdir, *, strategy="default", overwrite=False, verbose=1):
    """Runs (or resumes) the search; returns (best values, best score, path of best_config.py)."""
    config = ml_collections.ConfigDict(config.to_dict())
    t = config.tune
    if t.tuner not in TUNERS:
        raise ConfigError(f"config.tune.tuner={t.tuner!r}: expected one of {TUNERS}")
    if t.max_trials < 1:
        raise ConfigError(f"config.tune.max_trials={t.max_trials}: expected at least 1")
    space = parse_space(tuple(t.space) or default_space(config.method), config)
    if not space:
        raise ConfigError(f"config.tune.space is empty and method {config.method!r} has no default space")
    fewshot = METHODS.get(config.method).task == "fewshot"
    objective = t.objective or ("val_accuracy" if fewshot else config.train.select_metric)
    train.resolve(config)  # config errors before any trial starts
    # The trials share this process: its thread pools are set once, before the tuner starts
    # TensorFlow, from the config the trials start from (a searched thread count could not apply).
    set_thread_counts(config.train.intra_op_threads, config.train.inter_op_threads)
    io.check_output_folder(workdir, "--workdir")
    if overwrite and os.path.exists(workdir):
        import shutil

        shutil.rmtree(workdir)
    os.makedirs(workdir, exist_ok=True)
    known = keras_tuner.HyperParameters()
    sample(known, space)  # the whole space up front, so every tuner samples it from the first trial
    common = dict(hyperparameters=known, tune_new_entries=False, base_config=config, space=space, workdir=workdir, strategy=strategy, objective_name=objective, fewshot=fewshot,
                  objective=keras_tuner.Objective(objective, direction="max"), directory=workdir,
                  project_name="search", overwrite=False, seed=config.seed,
                  max_consecutive_failed_trials=t.max_consecutive_failed_trials)
    if t.tuner == "hyperband":
        if config.train.epochs < t.hyperband_factor:
            raise ConfigError(f"config.tune.tuner=hyperband: train.epochs={config.train.epochs} (the largest budget) "
                              f"must be >= tune.hyperband_factor={t.hyperband_factor}")
        tuner = _tuner_class("hyperband")(max_epochs=config.train.epochs, factor=t.hyperband_factor,
                                          hyperband_iterations=1, **common)
    else:
        tuner = _tuner_class(t.tuner)(max_trials=t.max_trials, **common)
    tuner.search(verbose=verbose)
    trials = [tr for tr in tuner.oracle.trials.values() if tr.score is not None]
    if not trials:
        raise RuntimeError(f"no trial of {workdir} finished; see {os.path.join(workdir, 'failures.txt')}")
    best = max(trials, key=lambda tr: tr.score)
    values = {f: best.hyperparameters.values[f] for f, _, _ in space if f in best.hyperparameters.values}
    best_config = apply_values(config, values)
    if "tuner/epochs" in best.hyperparameters.values:
        best_config.train.epochs = int(best.hyperparameters.values["tuner/epochs"])
    path = write_config_file(best_config, os.path.join(workdir, "best_config.py"),
                             f"best of {len(trials)} trials by {objective} = {best.score:.4f} (trial {best.trial_id})")
    table = summary_table(trials, space, objective)
    io.write_text_atomic(os.path.join(workdir, "trials.md"), table + "\n")
    if verbose:
        print(table)
        print(f"\nbest {objective} = {best.score:.4f}: {json.dumps(values)}\nready-to-run config: {path}")
    return values, best.score, path


def summary_table(trials, space, objective):
    fields = [f for f, _, _ in space]
    rows = ["| trial | " + " | ".join(fields) + f" | {objective} |", "|---" * (len(fields) + 2) + "|"]
    for tr in sorted(trials, key=lambda tr: -tr.score):
        cells = [_fmt(tr.hyperparameters.values.get(f)) for f in fields]
        rows.append(f"| {tr.trial_id} | " + " | ".join(cells) + f" | {tr.score:.4f} |")
    return "\n".join(rows)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_config_file(config, path, comment):
    """A config file for ``bin/train --config=PATH`` that reproduces ``config`` exactly."""
    flat = _flatten(config.to_dict())
    lines = [f'"""Written by bin/tune: {comment}."""', "from tfkd.config import base_config", "", "",
             "def get_config():", "    c = base_config()"]
    for key, value in flat:
        if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
            continue
        lines.append(f"    c.{key} = {value!r}")
    lines.append("    return c")
    io.write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _flatten(d, prefix=""):
    out = []
    for key, value in d.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", tuple(value) if isinstance(value, list) else value))
    return out
