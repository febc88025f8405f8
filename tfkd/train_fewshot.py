"""Training driver for the episodic few-shot methods (``task = "fewshot"``; bin/train dispatches
here): meta-training on base-class feature episodes, model selection on validation-class
episodes, and the evaluation protocols of tfkd.evaluation on novel-class features.

The run folder (layout, atomic epoch / best checkpoints, snapshots, resume, history.csv) is
tfkd.runs, as for tfkd.train. Episode ``i`` of training is a function of (seed, i), so a resumed run sees exactly
the episodes an uninterrupted one would. Validation and test episodes come from
``config.fewshot.eval_seed``: the same for every method, so results are paired.

Extra outputs: ``evaluation.json`` (every protocol, with per-episode accuracies), and
``metrics.json`` (summary; marks the run finished).

Layer: a driver (imports runs, export; never tfkd.train, which dispatches here).
"""
import os

import keras
import ml_collections
import numpy as np

from tfkd import evaluation
from tfkd import export
from tfkd import io
from tfkd import runs
from tfkd.config import config_json, resolve
from tfkd.data.episodes import SPLITS, EpisodeSampler, episode_dataset
from tfkd.data.features import check_labels_against_metadata, read_feature_metadata, read_features
from tfkd.distribute import get_strategy, is_chief
from tfkd.errors import ConfigError, DataError
from tfkd.methods import build_fewshot_method  # noqa: F401  (part of this driver's API)
from tfkd.methods.fewshot import episode_predictor
from tfkd.progress import RunProgress, bar_verbosity, print_run_paths
from tfkd.registry import METHODS
from tfkd.runs import restore_fewshot_method, snapshot_for_shot  # noqa: F401  (bin/export, tests)

FEATURE_EXTENSIONS = (".h5", ".hdf5", ".npz")


def find_feature_file(features_dir, split):
    candidates = [os.path.join(features_dir, split + ext) for ext in FEATURE_EXTENSIONS]
    found = [p for p in candidates if os.path.exists(p)]
    if not found:
        raise DataError(f"config.fewshot.features_dir={features_dir!r}: no {split} features "
                        f"(expected one of {', '.join(os.path.basename(p) for p in candidates)}; "
                        f"bin/extract_features writes them)")
    if len(found) > 1:
        raise DataError(f"config.fewshot.features_dir={features_dir!r}: several {split} files {found}; keep one")
    return found[0]


class FeatureSplits:
    """Base / validation / novel features of one feature space, checked for consistency."""

    def __init__(self, features_dir):
        if not os.path.isdir(features_dir):
            raise DataError(f"config.fewshot.features_dir={features_dir!r} is not a folder")
        self.features_dir = features_dir
        self.paths = {s: find_feature_file(features_dir, s) for s in SPLITS}
        self.splits = {s: read_features(p) for s, p in self.paths.items()}
        dims = {s: f.shape[1] for s, (f, _) in self.splits.items()}
        if len(set(dims.values())) != 1:
            raise DataError(f"{features_dir}: feature dimensions differ between splits {dims}; all splits "
                            f"must come from the same feature extractor")
        self.feature_dim = dims["base"]
        classes = {s: set(np.unique(l).tolist()) for s, (_, l) in self.splits.items()}
        for a, b in (("base", "validation"), ("base", "novel"), ("validation", "novel")):
            shared = classes[a] & classes[b]
            if shared:
                raise DataError(f"{features_dir}: classes {sorted(shared)[:5]} are in both {a} and {b}; "
                                f"few-shot splits must have disjoint classes")
        meta = read_feature_metadata(features_dir)
        for s, (_, labels) in self.splits.items():
            check_labels_against_metadata(labels, self.paths[s], meta)
        groups = meta.get("class_groups")
        self.class_groups = np.asarray(groups) if groups else None

    def __getitem__(self, split):
        return self.splits[split]

    def classes(self, split):
        return np.unique(self.splits[split][1])

    def check_dim(self, feature_dim, where):
        if feature_dim != self.feature_dim:
            raise DataError(f"{where} expects {feature_dim}-d features but {self.features_dir} holds "
                            f"{self.feature_dim}-d features")


def samplers(config, feats):
    f = config.fewshot
    k_shot, k_max = METHODS.get(config.method).sampler_shots(config[config.method], f)
    base_f, base_l = feats["base"]
    val_f, val_l = feats["validation"]
    try:
        train = EpisodeSampler(base_l, feats.classes("base"), f.n_way, k_shot, f.n_query, seed=config.seed,
                               k_max=k_max)
        val_way = min(f.val_way or f.n_way, len(feats.classes("validation")))
        val = EpisodeSampler(val_l, feats.classes("validation"), val_way,
                             f.k_shot, f.n_query, seed=f.eval_seed, k_max=max(f.k_max, f.k_shot))
    except (ConfigError, DataError) as e:
        raise type(e)(f"config.fewshot (n_way={f.n_way}, k_shot={f.k_shot}, k_max={k_max}, "
                      f"n_query={f.n_query}) with --method={config.method}: {e}") from None
    return train, val


def method_predictor_for_shot(method, workdir, checkpoint_dir):
    """k -> predictor: the k-matched snapshot when the run saved snapshots, else ``checkpoint_dir``."""
    loaded = {"path": None}

    @evaluation.per_shot
    def predictor_for_shot(k):
        path = snapshot_for_shot(workdir, k) or checkpoint_dir
        if loaded["path"] != path:
            method.load_weights(os.path.join(path, runs.WEIGHTS))
            loaded["path"] = path
        return method.predictor()

    return predictor_for_shot


def run(config, workdir, *, strategy="default", overwrite=False):
    """Trains (or resumes) a few-shot run, or every member of an ensemble; returns the metrics."""
    config = resolve(config)
    method_cfg = config[config.method]
    if method_cfg.get("ensemble_size", 1) > 1:
        return run_ensemble(config, workdir, strategy=strategy, overwrite=overwrite)
    return run_single(config, workdir, strategy=strategy, overwrite=overwrite)


def member_config(config, member):
    """Ensemble member ``member``: its own seed and S_teacher sample, trained as a single run."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed = config.seed + member
    m = c[config.method]
    m.teacher_seed = m.teacher_seed + member
    m.ensemble_size, m.ensemble_member = 1, -1
    return c


def run_ensemble(config, workdir, *, strategy="default", overwrite=False):
    """Members train one after another in WORKDIR/members/member_i (each a resumable run); with
    ``ensemble_member=i`` only member i trains, so members can run in parallel on several machines
    (then re-run with ensemble_member=-1 to evaluate). Prediction = mean of members' probabilities."""
    method_cfg = config[config.method]
    size, only = method_cfg.ensemble_size, method_cfg.ensemble_member
    members = [os.path.join(workdir, "members", f"member_{i}") for i in range(size)]
    if only >= 0:
        return run_single(member_config(config, only), members[only], strategy=strategy, overwrite=overwrite)
    with runs.locked(workdir):  # the parent folder; each member locks its own
        return _train_ensemble(config, workdir, members, strategy, overwrite)


def _train_ensemble(config, workdir, members, strategy, overwrite):
    size = len(members)
    parent = resolve(config)
    resuming = runs.prepare_workdir(workdir, parent, overwrite, may_contain=("members",))
    feats = FeatureSplits(parent.fewshot.features_dir)
    runs.write_run_files(workdir, parent,
                         {"task": "fewshot", "method": config.method, "feature_dim": feats.feature_dim,
                          "ensemble_members": [os.path.relpath(m, workdir) for m in members]},
                         {"strategy": strategy, "resumed": resuming, "ensemble_size": size})
    member_metrics = []
    for i, member_dir in enumerate(members):
        done = os.path.join(member_dir, runs.METRICS)
        if os.path.exists(done):
            member_metrics.append(runs.read_run_json(done))
            continue
        print(f"Ensemble member {i + 1}/{size}: {member_dir}", flush=True)
        member_metrics.append(run_single(member_config(config, i), member_dir, strategy=strategy))
    predictor_for_shot = ensemble_predictor_for_shot(members)
    results = evaluate_predictor(predictor_for_shot, feats, parent.fewshot, verbose=parent.train.verbose)
    metrics = {"method": config.method, "task": "fewshot", "ensemble_size": size,
               "features_dir": os.path.abspath(parent.fewshot.features_dir), "seed": config.seed,
               "members": [{"seed": m["seed"], "best_epoch": m["best_epoch"], "val_accuracy": m["val_accuracy"]}
                           for m in member_metrics],
               "test": evaluation.summary_values(results)}
    if is_chief():
        io.write_json_atomic(os.path.join(workdir, runs.EVALUATION), results)
        export_predictor(parent, workdir)
        runs.write_metrics(workdir, metrics)
    print_results(f"{config.method} ensemble of {size}", results)
    return metrics


def ensemble_predictor_for_shot(member_dirs):
    """k -> predictor averaging the members' probabilities (returned as log-probabilities)."""
    methods, loaders = [], []
    for member_dir in member_dirs:
        method, _ = restore_fewshot_method(member_dir)
        methods.append(method)
        loaders.append(method_predictor_for_shot(method, member_dir, runs.verified_best(member_dir)))
    predict = episode_predictor(methods)  # one function for all members and shot counts: traced once

    @evaluation.per_shot
    def predictor_for_shot(k):
        for load in loaders:
            load(k)  # each member's k-matched snapshot (or best checkpoint)
        return predict

    return predictor_for_shot


def run_single(config, workdir, *, strategy="default", overwrite=False):
    with runs.locked(workdir):  # a second process training in this workdir stops here
        return _run_single(config, workdir, strategy, overwrite)


def _run_single(config, workdir, strategy, overwrite):
    config = resolve(config)
    resuming = runs.prepare_workdir(workdir, config, overwrite)
    f = config.fewshot
    feats = FeatureSplits(f.features_dir)  # data errors surface before any file is written
    train_sampler, val_sampler = samplers(config, feats)
    novel_classes = feats.classes("novel")
    if len(novel_classes) < f.test_way:
        raise ConfigError(f"config.fewshot.test_way={f.test_way} but the novel split has {len(novel_classes)} classes")
    METHODS.get(config.method).check_fewshot_config(config[config.method], f)
    strategy_obj = get_strategy(strategy)
    if f.episodes_per_batch % strategy_obj.num_replicas_in_sync:
        raise ConfigError(f"config.fewshot.episodes_per_batch={f.episodes_per_batch} must be divisible by the "
                          f"{strategy_obj.num_replicas_in_sync} replicas of --strategy={strategy}")
    steps = f.episodes_per_epoch // f.episodes_per_batch
    if steps < 1:
        raise ConfigError(f"config.fewshot.episodes_per_epoch={f.episodes_per_epoch} is smaller than "
                          f"episodes_per_batch={f.episodes_per_batch}")

    keras.utils.set_random_seed(config.seed)
    method = build_fewshot_method(config, feats.feature_dim, strategy_obj, steps)
    base_f, base_l = feats["base"]
    method.use_base_split(base_f, base_l, train_sampler.classes)
    chief = is_chief()
    runs.write_run_files(workdir, config,
                              {"task": "fewshot", "method": config.method, "feature_dim": feats.feature_dim,
                               "features": {s: os.path.abspath(p) for s, p in feats.paths.items()}},
                              {"strategy": strategy, "resumed": resuming,
                               "replicas": strategy_obj.num_replicas_in_sync})

    state, initial_epoch = runs.resume_latest(workdir, method, config.train.epochs)
    if not state:
        # e.g. pre-trains a teacher (saved with the checkpoints, and cached beside the features)
        method.start_training(seed=config.seed,
                              cache_dir=f.teacher_cache and os.path.join(f.features_dir, f.teacher_cache))

    val_f, val_l = feats["validation"]
    if initial_epoch < config.train.epochs:
        per_batch = f.episodes_per_batch
        train_ds = episode_dataset(base_f, base_l, train_sampler, first_episode=initial_epoch * steps * per_batch,
                                   episodes_per_batch=per_batch)
        # Finite, so every epoch is validated on the same episodes (Keras keeps one validation
        # iterator for the whole fit; a repeated stream would move on to new episodes).
        val_steps = max(1, f.val_episodes // per_batch)
        val_ds = episode_dataset(val_f, val_l, val_sampler, episodes_per_batch=per_batch,
                                 num_episodes=val_steps * per_batch)
        callbacks = [runs.KSnapshots(workdir, method.snapshot_at_k())] if method.snapshot_at_k() else []
        callbacks += [RunProgress(config.train.epochs), runs.LearningRateLogger(),
                      runs.EpochCheckpoint(workdir, "val_accuracy", config.train.keep_checkpoints, state)]
        if chief:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(workdir, runs.LOGS), update_freq="epoch"))
        method.fit(train_ds, epochs=config.train.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                   validation_data=val_ds, callbacks=callbacks, verbose=bar_verbosity(config.train.verbose))

    best_dir = runs.verified_best(workdir)  # a damaged best is rebuilt from its epoch's checkpoint
    best_state = runs.read_state(best_dir)
    results = evaluate_predictor(method_predictor_for_shot(method, workdir, best_dir), feats, f,
                                 verbose=config.train.verbose)
    metrics = {
        "method": config.method,
        "task": "fewshot",
        "features_dir": os.path.abspath(f.features_dir),
        "seed": config.seed,
        "epochs": config.train.epochs,
        "best_epoch": best_state["best_epoch"],
        "val_accuracy": best_state["best_value"],
        "snapshots": sorted(os.path.basename(d) for d in runs.snapshot_dirs(workdir).values()),
        "test": evaluation.summary_values(results),
    }
    if chief:
        io.write_json_atomic(os.path.join(workdir, runs.EVALUATION), results)
        export_predictor(config, workdir)
        runs.write_metrics(workdir, metrics)  # last: marks the run finished
    print_results(f"{config.method} few-shot (best epoch {best_state['best_epoch']} by validation-class episode "
                  f"accuracy {best_state['best_value']:.4f})", results)
    print_run_paths(workdir, best_dir, best_state["best_epoch"],
                    runs.export_dir(workdir) if config.export.enabled else None)
    return metrics


def export_predictor(config, workdir):
    """WORKDIR/export: the few-shot predictor SavedModel (config.export.enabled)."""
    if not config.export.enabled:
        return
    export.export_fewshot_predictor(workdir, runs.export_dir(workdir), {"config": config_json(config)})


def print_results(title, results):
    if not results:
        print(f"\n{title}; novel classes not evaluated (config.fewshot.evaluate_novel=False)")
        return
    print(f"\n{title}; novel classes:")
    for name, value in evaluation.summary_rows(results):
        print(f"  {name:<48} {value}")


def evaluate_predictor(predictor_for_shot, feats, fewshot_cfg, verbose=1):
    """Every protocol of ``fewshot_cfg`` on the novel split ({} when ``evaluate_novel`` is off)."""
    if not fewshot_cfg.evaluate_novel:
        return {}
    novel_f, novel_l = feats["novel"]
    n = len(fewshot_cfg.test_shots) * fewshot_cfg.test_episodes
    if fewshot_cfg.within_group_way and feats.class_groups is not None:
        n *= 2
    bar = keras.utils.Progbar(n, verbose=bar_verbosity(1) if verbose else 0, unit_name="episode")
    return evaluation.protocol_suite(predictor_for_shot, novel_f, novel_l, feats.classes("novel"), fewshot_cfg,
                                     class_groups=feats.class_groups, progress=bar)


def run_predictor_for_shot(workdir):
    """(k -> predictor, config, feature_dim) of a finished few-shot run or ensemble."""
    method, config = restore_fewshot_method(workdir)
    network = runs.read_network_info(workdir)
    if network.get("ensemble_members"):
        members = [os.path.join(workdir, m) for m in network["ensemble_members"]]
        return ensemble_predictor_for_shot(members), config, method.feature_dim
    return method_predictor_for_shot(method, workdir, runs.verified_best(workdir)), config, method.feature_dim


def evaluate_runs(workdirs, fewshot_overrides=None, features_dir=None, output=None, verbose=1):
    """Evaluates several few-shot runs on the same seeded novel episodes (the protocols of the first
    run's config.fewshot, updated by ``fewshot_overrides``); returns {workdir: results} and, with
    ``output``, writes them with paired per-episode differences against the first run."""
    from tfkd.data.episodes import mean_confidence_interval

    results, protocol_cfg = {}, None
    for workdir in workdirs:
        predictor_for_shot, config, feature_dim = run_predictor_for_shot(workdir)
        if protocol_cfg is None:
            protocol_cfg = ml_collections.ConfigDict(config.fewshot.to_dict())
            for key, value in (fewshot_overrides or {}).items():
                if key not in protocol_cfg:
                    raise ConfigError(f"--{key}: not a field of config.fewshot")
                protocol_cfg[key] = value
        feats = FeatureSplits(features_dir or runs.fewshot_features_dir(workdir, config))
        feats.check_dim(feature_dim, f"--workdir={workdir} ({config.method})")
        results[workdir] = {"method": config.method, "seed": config.seed,
                            "results": evaluate_predictor(predictor_for_shot, feats, protocol_cfg, verbose)}
    first = workdirs[0]
    paired = {}
    for workdir in workdirs[1:]:
        paired[workdir] = {}
        for name, r in results[workdir]["results"].items():
            if "accuracies" in r:
                diff = np.subtract(r["accuracies"], results[first]["results"][name]["accuracies"])
                mean, ci = mean_confidence_interval(diff)
                paired[workdir][name] = {"mean": mean, "ci95": ci}
    payload = {"protocols": protocol_cfg.to_dict(), "runs": results, "paired_vs_first": paired,
               "features_dir": os.path.abspath(features_dir) if features_dir else None}
    if output:
        io.write_json_atomic(output, payload)
    return payload
