"""Diagnostic figures of the two papers (behind ``bin/visualize``), as small PNG files.

Per run folder (``--workdir``), whichever apply to its method:

* ``metadistiller``:
  - ``<run>_targets.png`` (MetaDistiller Fig. 3): for a few test images, the final output's
    probabilities next to the label generator's soft targets T_k = softmax(target_k / tau) of every
    exit, from the best checkpoint;
  - ``<run>_target_entropy.png``: the mean entropy of each exit's targets per epoch (train and
    validation, from history.csv) and the meta (outer) loss on meta epochs.
* ``gen``, ``dist``, ``progressive``: ``<run>_tsne.png``, t-SNE of real novel-class features and of
  features G(x, z, q) generated from one real seed example per class (the 1-shot case, q = x).
* ``progressive``: ``<run>_k_schedule.png``, the scheduled k per optimizer step and the k logged
  at each epoch's end (``k_train`` or ``k_teacher`` in history.csv).
* ``baseline``, ``dsn``, ``self_distill``, ``metadistiller``: all such runs given together share
  ``learning_curves.png`` (validation final-exit accuracy per epoch, mean over runs of a method).

From a self-boosting results file (``--results``, benchmarks/self_boosting_table.py, whose runs
carry ``val_curve``): ``<file>_curves.png``, the same learning curves, one panel per dataset.

Everything that can be checked (run folders, files, columns, existing PNGs) is checked before any
model is loaded, so a bad input fails at once with one line and nothing written.
"""
import csv
import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from tfkd import layout  # noqa: E402  (TF-free: every input is checked before TensorFlow loads)
from tfkd.errors import ConfigError, DataError, WorkdirError  # noqa: E402

SELF_BOOSTING = ("baseline", "dsn", "self_distill", "metadistiller")
GENERATOR_METHODS = ("gen", "dist", "progressive")
METHOD_LABELS = {"baseline": "Baseline", "dsn": "DSN", "self_distill": "SD", "metadistiller": "MetaDistiller"}
ENTROPY_PREFIX = "target_entropy_"
# One colour per line / class, cycled; few distinct flat colours also keep the PNGs small.
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
           "tab:olive", "tab:cyan", "tab:gray")
DEFAULT_DPI = 80


# ---------------------------------------------------------------------- reading run folders


def read_history(workdir):
    """history.csv as {column: float array (NaN where an epoch did not log it)}, epochs ascending."""
    path = os.path.join(workdir, layout.HISTORY)
    if not os.path.exists(path):
        raise WorkdirError(f"--workdir={workdir} has no {layout.HISTORY} (no epoch finished yet)")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise WorkdirError(f"{path} has no epochs")
    columns = {}
    for key in rows[0]:
        columns[key] = np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])
    order = np.argsort(columns["epoch"])
    return {k: v[order] for k, v in columns.items()}


def history_columns(workdir):
    path = os.path.join(workdir, layout.HISTORY)
    if not os.path.exists(path):
        raise WorkdirError(f"--workdir={workdir} has no {layout.HISTORY} (no epoch finished yet)")
    with open(path) as f:
        return next(csv.reader(f), [])


def _require_columns(workdir, wanted, why):
    have = history_columns(workdir)
    missing = [c for c in wanted if c not in have]
    if missing:
        raise WorkdirError(f"{os.path.join(workdir, layout.HISTORY)} has no column(s) {missing} ({why})")


def _require_checkpoint(workdir):
    """The best checkpoint is there, or an epoch checkpoint it can be rebuilt from (tfkd.runs
    rebuilds a damaged one when the figure is drawn)."""
    best = os.path.join(workdir, layout.CHECKPOINTS, layout.BEST)
    problem = layout.checkpoint_problem(best)
    epochs = os.path.join(workdir, layout.CHECKPOINTS)
    if problem and not any(d.startswith("epoch_") for d in (os.listdir(epochs) if os.path.isdir(epochs) else ())):
        raise WorkdirError(f"--workdir={workdir}: its best checkpoint {best} is unusable ({problem}) and no epoch "
                           f"checkpoint is left to rebuild it from")


def figures_for_run(workdir):
    """(run name, config, [figure kinds]) of one run folder; raises a UserError if none applies or
    a file a figure needs is missing."""
    if not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir={workdir} is not a folder")
    config = layout.read_config(workdir)
    method = config.get("method")
    name = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
    supported = SELF_BOOSTING + GENERATOR_METHODS
    if method not in supported:
        raise WorkdirError(f"--workdir={workdir} holds a {method!r} run; bin/visualize draws figures for "
                           f"{', '.join(supported)}")
    layout.require_run_folder(workdir)  # network.json there and readable too, whatever the figures need
    kinds = []
    if method in SELF_BOOSTING:
        _require_columns(workdir, ["val_final_accuracy"], "the learning curve")
        kinds.append("curve")
    if method == "metadistiller":
        layout.read_network_info(workdir)
        _require_checkpoint(workdir)
        if not any(c.startswith(ENTROPY_PREFIX) for c in history_columns(workdir)):
            raise WorkdirError(f"{os.path.join(workdir, layout.HISTORY)} has no {ENTROPY_PREFIX}* columns: the run was "
                               f"trained before MetaDistiller logged its target entropy; re-train it")
        kinds += ["targets", "target_entropy"]
    if method in GENERATOR_METHODS:
        if config[method].get("ensemble_size", 1) > 1:
            raise WorkdirError(f"--workdir={workdir} is an ensemble; pass one member's folder "
                               f"({os.path.join(workdir, 'members', 'member_0')})")
        novel = layout.read_network_info(workdir).get("features", {}).get("novel")
        if not novel or not os.path.exists(novel):
            raise WorkdirError(f"--workdir={workdir}: its novel-class feature file {novel!r} (network.json) is missing")
        _require_checkpoint(workdir)
        kinds.append("tsne")
    if method == "progressive":
        k_column = "k_train" if config.progressive.direction == "weaken" else "k_teacher"
        _require_columns(workdir, [k_column], "the k schedule")
        kinds.append("k_schedule")
    return name, config, kinds


# ---------------------------------------------------------------------- figure data


def pick_examples(labels, count):
    """Indices of ``count`` examples of distinct classes spread over the label range (the first
    example of each), deterministic."""
    classes = np.unique(labels)
    chosen = classes[np.unique(np.linspace(0, len(classes) - 1, min(count, len(classes))).round().astype(int))]
    return np.array([int(np.flatnonzero(labels == c)[0]) for c in chosen])


def test_images(config, count):
    """(uint8 images, labels) of ``count`` test examples of distinct classes."""
    from tfkd import data as data_lib

    data = data_lib.load_dataset(config.data)
    split = data.test
    if isinstance(split, data_lib.ArraySplit):
        images, labels = split.images, split.labels
    else:  # a streamed split: choose among its first examples
        batch = list(split.dataset.take(max(200, count)).as_numpy_iterator())
        images, labels = np.stack([b[0] for b in batch]), np.array([b[1] for b in batch])
    idx = pick_examples(labels, count)
    return images[idx], labels[idx]


def restore_metadistiller(workdir):
    """The MetaDistiller method (network + label generator) of a run, best checkpoint loaded."""
    import tensorflow as tf

    from tfkd.methods import build_method, build_optimizer
    from tfkd.models import build_backbone

    from tfkd import runs

    config, net = layout.read_config(workdir), layout.read_network_info(workdir)
    kwargs = dict(net["kwargs"], input_shape=tuple(net["kwargs"]["input_shape"]))
    network = build_backbone(net["arch"], **kwargs)
    network.ensure_built()
    method = build_method(config.method, network, config[config.method], weight_decay=0.0)
    method(tf.zeros((1,) + tuple(network.image_shape)), training=False)
    method.compile(optimizer=build_optimizer(config.train, steps=1))
    method.build_state()  # the checkpoint holds the optimizers' state too
    method.load_weights(os.path.join(runs.resolve_checkpoint(workdir, "best"), runs.WEIGHTS))
    return method, net.get("class_names")


def metadistiller_targets(method, images):
    """{'final': softmax of the final output, exit_k: T_k} for ``images``, each (n, classes), in
    inference mode (BatchNorm moving statistics)."""
    import tensorflow as tf

    x = tf.cast(images, tf.float32)
    logits, features = method.network(x, training=False, return_features=True)
    targets = method.generator(method.stage_features(features), training=False)
    out = {"final": tf.nn.softmax(tf.cast(logits["final"], tf.float32))}
    out.update(method.soft_targets(targets, tf.float32))
    return {k: np.asarray(v) for k, v in out.items()}


def tsne_data(method, novel_features, novel_labels, num_classes=4, real_per_class=50, generated_per_class=50,
              seed=0):
    """Real novel-class features and generated ones, embedded together by t-SNE.

    For each of ``num_classes`` novel classes: up to ``real_per_class`` real features, and
    ``generated_per_class`` features G(x, z, q) from one real seed example x (q = x: the class mean
    of a 1-shot support), with fixed noise. Features are L2-normalised first (the cosine
    classifier's geometry). Returns a dict of arrays: ``points`` (n, 2), ``labels`` (n,) class ids,
    ``generated`` (n,) bool, ``seed_example`` (n,) bool (the real seeds), ``classes``.
    """
    import tensorflow as tf
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    classes = np.unique(novel_labels)[:num_classes]
    feats, labels, generated, seeds = [], [], [], []
    for c in classes:
        idx = rng.permutation(np.flatnonzero(novel_labels == c))
        seed_index, real = idx[0], idx[:real_per_class]
        x = np.repeat(novel_features[seed_index][None], generated_per_class, axis=0)
        noise = tf.random.stateless_normal((generated_per_class, method.generator.noise_dim), seed=(seed, int(c)))
        fake = np.asarray(method.generator((tf.constant(x), tf.constant(x)), noise=noise))
        feats += [novel_features[real], fake]
        labels += [np.full(len(real) + generated_per_class, c)]
        generated += [np.zeros(len(real), bool), np.ones(generated_per_class, bool)]
        seeds += [real == seed_index, np.zeros(generated_per_class, bool)]
    feats = np.concatenate(feats).astype(np.float64)
    feats /= np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    perplexity = min(30.0, (len(feats) - 1) / 3.0)  # t-SNE needs perplexity < number of points
    # One OpenMP/BLAS thread: a few hundred points take ~1 s that way, and with TensorFlow (or any
    # other job) on the cores, sklearn's spinning worker threads took 5-30 s (measured on 2 cores).
    with threadpool_limits(1):
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(feats)
    return {"points": points, "labels": np.concatenate(labels), "generated": np.concatenate(generated),
            "seed_example": np.concatenate(seeds), "classes": classes}


def novel_split(workdir):
    """(features, labels, {class id: name}) of the run's novel-class feature file."""
    from tfkd.data.features import read_features

    path = layout.read_network_info(workdir)["features"]["novel"]
    features, labels = read_features(path)
    names = {}
    meta = os.path.join(os.path.dirname(path), "features.json")
    if os.path.exists(meta):
        all_names = layout.read_run_json(meta).get("class_names") or []
        names = {i: n for i, n in enumerate(all_names)}
    return features, labels, names


def k_schedule_data(config, history):
    """(steps-as-epochs, scheduled k per step, epochs, logged k per epoch, column) of a progressive run."""
    from tfkd.methods.distill import k_at

    p, f = config.progressive, config.fewshot
    steps_per_epoch = max(1, f.episodes_per_epoch // f.episodes_per_batch)
    total = int(config.train.epochs) * steps_per_epoch
    steps = np.arange(1, total + 1)
    # The step function reads the optimizer's step count before its update: step s trains at k_at(s - 1).
    scheduled = np.array([k_at(s - 1, p.k_start, p.k_end, p.schedule_steps, p.schedule) for s in steps])
    column = "k_train" if p.direction == "weaken" else "k_teacher"
    return steps / steps_per_epoch, scheduled, history["epoch"], history[column], column


def self_boosting_curves_from_results(path):
    """{dataset: {method: [validation curve of each run]}} from a self-boosting results JSON."""
    if not os.path.exists(path):
        raise DataError(f"--results={path} does not exist")
    try:
        with open(path) as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"--results={path} is not valid JSON ({e})") from None
    if not isinstance(results, dict) or not isinstance(results.get("datasets"), dict):
        raise DataError(f"--results={path}: expected a self-boosting results file "
                        f"(benchmarks/self_boosting_table.py) with a 'datasets' object")
    curves = {}
    for dataset, entry in sorted(results["datasets"].items()):
        for method, m in (entry.get("methods") or {}).items():
            found = [r["val_curve"] for r in m.get("runs", []) if r.get("val_curve")]
            if found:
                curves.setdefault(dataset, {})[method] = found
    if not curves:
        raise DataError(f"--results={path}: no run has a 'val_curve' (files written before "
                        f"benchmarks/self_boosting_table.py recorded it cannot be plotted)")
    return curves


def self_boosting_curves_from_runs(workdirs):
    """Like self_boosting_curves_from_results, from run folders' history.csv."""
    curves = {}
    for workdir in workdirs:
        config = layout.read_config(workdir)
        history = read_history(workdir)
        curves.setdefault(config.data.name, {}).setdefault(config.method, []).append(
            list(history["val_final_accuracy"]))
    return curves


# ---------------------------------------------------------------------- drawing


def save(fig, path, dpi=DEFAULT_DPI):
    """Writes the PNG atomically (a temp file in the same folder, then renamed)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def plot_targets(images, labels, probs, class_names, path, max_bars=10, dpi=DEFAULT_DPI):
    """Rows: images; columns: the image, the final output, T_1..T_{K-1}. The true class's bar is
    coloured. With more than ``max_bars`` classes, each row shows the final output's top classes."""
    heads = ["final"] + [k for k in probs if k != "final"]
    num_classes = probs["final"].shape[1]
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    rows, cols = len(images), len(heads) + 1
    fig = Figure(figsize=(1.2 + 1.9 * len(heads), 0.5 + 1.45 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={"width_ratios": [0.6] + [1] * len(heads)})
    for r in range(rows):
        shown = np.arange(num_classes)
        if num_classes > max_bars:
            shown = np.sort(np.union1d(np.argsort(-probs["final"][r])[: max_bars - 1], [labels[r]]))
        image = images[r][..., 0] if images[r].shape[-1] == 1 else images[r]
        ax = axes[r, 0]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_title(names[labels[r]], fontsize=7)
        for c, head in enumerate(heads, start=1):
            ax = axes[r, c]
            colours = ["tab:green" if k == labels[r] else "0.6" for k in shown]
            ax.bar(np.arange(len(shown)), probs[head][r][shown], color=colours, width=0.8)
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=6, length=2)
            if c > 1:
                ax.set_yticklabels([])
            ax.set_xticks(np.arange(len(shown)))
            ax.set_xticklabels([names[k] for k in shown], rotation=90, fontsize=5)
            if r == 0:
                title = "final output" if head == "final" else f"$T_{{{head.rsplit('_', 1)[-1]}}}$ ({head})"
                ax.set_title(title, fontsize=8)
    fig.suptitle("Final output vs. the label generator's soft targets (true class in green)", fontsize=8)
    return save(fig, path, dpi)


def plot_target_entropy(history, num_classes, path, dpi=DEFAULT_DPI):
    epochs = history["epoch"]
    exits = sorted(k[len(ENTROPY_PREFIX):] for k in history if k.startswith(ENTROPY_PREFIX))
    fig = Figure(figsize=(7.0, 3.0), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    for i, name in enumerate(exits):
        colour = COLOURS[i % len(COLOURS)]
        left.plot(epochs, history[ENTROPY_PREFIX + name], color=colour, marker="o", ms=3, label=f"{name} train")
        if "val_" + ENTROPY_PREFIX + name in history:
            left.plot(epochs, history["val_" + ENTROPY_PREFIX + name], color=colour, ls="--", marker="o", ms=3,
                      mfc="none", label=f"{name} val")
    left.axhline(math.log(num_classes), color="0.5", ls=":", lw=1, label="uniform (ln C)")
    left.set(xlabel="epoch", ylabel="entropy of $T_k$ (nats)", title="Mean entropy of the generated targets")
    left.legend(fontsize=6, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    meta = history.get("meta_loss")
    if meta is not None and np.isfinite(meta).any():
        ok = np.isfinite(meta)
        right.plot(epochs[ok], meta[ok], color="tab:red", marker="s", ms=4)
    right.set(xlabel="epoch", ylabel="outer CE", title="Meta loss (meta epochs)")
    for ax in (left, right):
        ax.title.set_fontsize(8)
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)
        ax.tick_params(labelsize=6)
        # Every epoch labelled up to ~12 epochs; beyond that the labels ran into one another.
        ax.xaxis.set_major_locator(MaxNLocator(nbins=min(len(epochs), 10), integer=True))
    return save(fig, path, dpi)


def plot_tsne(data, class_names, title, path, dpi=DEFAULT_DPI):
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = fig.subplots()
    for i, c in enumerate(data["classes"]):
        colour = COLOURS[i % len(COLOURS)]
        of_class = data["labels"] == c
        real, fake = of_class & ~data["generated"], of_class & data["generated"]
        seed = of_class & data["seed_example"]
        ax.scatter(*data["points"][real].T, s=9, color=colour, marker="o", alpha=0.6, linewidths=0,
                   label=class_names.get(int(c), str(c)))
        ax.scatter(*data["points"][fake].T, s=14, color=colour, marker="x", linewidths=0.8)
        ax.scatter(*data["points"][seed].T, s=70, color=colour, marker="*", edgecolors="black", linewidths=0.7)
    handles, names = ax.get_legend_handles_labels()
    handles += [ax.scatter([], [], s=9, color="0.4", marker="o"), ax.scatter([], [], s=14, color="0.4", marker="x"),
                ax.scatter([], [], s=70, color="0.4", marker="*", edgecolors="black", linewidths=0.7)]
    names += ["real", "generated", "seed (x = q)"]
    ax.legend(handles, names, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title, fontsize=7)
    return save(fig, path, dpi)


def plot_k_schedule(schedule, title, path, dpi=DEFAULT_DPI):
    x, scheduled, epochs, logged, column = schedule
    fig = Figure(figsize=(4.5, 2.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, scheduled, color="tab:blue", lw=1.2, drawstyle="steps-pre", label="scheduled k (per step)")
    ax.plot(epochs, logged, "o", color="tab:red", ms=4, label=f"{column} at epoch end (history.csv)")
    ax.set_yscale("log", base=2)
    values = np.concatenate([scheduled, logged[np.isfinite(logged)]])
    ticks = [2 ** i for i in range(int(math.log2(values.max())) + 1) if 2 ** i >= values.min()]
    ticks = sorted(set(ticks) | {int(values.min()), int(values.max())})
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="epoch", ylabel=column)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=6)
    return save(fig, path, dpi)


def plot_learning_curves(curves, title, path, dpi=DEFAULT_DPI):
    """One column per dataset; per method the mean validation curve over its runs (band: min-max
    over runs). The lower row zooms on the second half of training, where the methods separate."""
    fig = Figure(figsize=(0.6 + 3.6 * len(curves), 4.6), layout="constrained")
    axes = fig.subplots(2, len(curves), squeeze=False, gridspec_kw={"height_ratios": [1.3, 1]})
    order = list(SELF_BOOSTING)
    for column, (dataset, methods) in enumerate(sorted(curves.items())):
        full, zoom = axes[0, column], axes[1, column]
        for method in sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m)):
            runs_ = methods[method]
            length = min(len(c) for c in runs_)
            stack = np.array([c[:length] for c in runs_], np.float64)
            epochs = np.arange(1, length + 1)
            colour = COLOURS[order.index(method) if method in order else len(order) % len(COLOURS)]
            label = f"{METHOD_LABELS.get(method, method)} ({len(runs_)} run{'s' if len(runs_) > 1 else ''})"
            late = epochs > length // 2
            for ax, keep in ((full, np.ones_like(late)), (zoom, late)):
                ax.plot(epochs[keep], stack.mean(0)[keep], color=colour, lw=1.3, label=label)
                if len(runs_) > 1:
                    ax.fill_between(epochs[keep], stack.min(0)[keep], stack.max(0)[keep], color=colour, alpha=0.15,
                                    linewidth=0)
        full.set_title(f"{title}: {dataset}", fontsize=8)
        full.legend(fontsize=6)
        zoom.set_title("second half of training", fontsize=7)
        for ax in (full, zoom):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set(xlabel="epoch", ylabel="val. accuracy (final exit)")
            ax.xaxis.label.set_fontsize(7)
            ax.yaxis.label.set_fontsize(7)
            ax.tick_params(labelsize=6)
    return save(fig, path, dpi)


# ---------------------------------------------------------------------- the command


def plan(workdirs=(), results=(), output=None, overwrite=False):
    """Checks every input and lists the PNGs to write: [(path, kind, source)], before any work."""
    if not workdirs and not results:
        raise ConfigError("nothing to draw: pass --workdir=RUN (one or more) and/or --results=FILE.json")
    if not output:
        raise ConfigError("--output: the folder the PNG files go to is required")
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output={output} exists and is not a folder")
    jobs, curve_runs = [], []
    for workdir in workdirs:
        name, config, kinds = figures_for_run(workdir)
        for kind in kinds:
            if kind == "curve":
                curve_runs.append(workdir)
            else:
                jobs.append((os.path.join(output, f"{name}_{kind}.png"), kind, workdir))
    if curve_runs:
        jobs.append((os.path.join(output, "learning_curves.png"), "curves_runs", tuple(curve_runs)))
    for path in results:
        self_boosting_curves_from_results(path)  # validates
        stem = os.path.splitext(os.path.basename(path))[0]
        jobs.append((os.path.join(output, f"{stem}_curves.png"), "curves_results", path))
    targets = [p for p, _, _ in jobs]
    doubled = sorted({p for p in targets if targets.count(p) > 1})
    if doubled:
        raise ConfigError(f"two inputs would write the same file(s) {doubled}: run folders need distinct "
                          f"names (the PNGs are named after them)")
    existing = [p for p in targets if os.path.exists(p)]
    if existing and not overwrite:
        raise WorkdirError(f"{', '.join(existing)} already exist; pass --overwrite to replace them")
    return jobs


def make_figures(workdirs=(), results=(), output=None, overwrite=False, images=3, tsne_classes=4,
                 tsne_points=50, seed=0, dpi=DEFAULT_DPI):
    """Writes every applicable figure; returns the written paths."""
    if images < 1 or tsne_classes < 1 or tsne_points < 1:
        raise ConfigError(f"--images={images}, --tsne_classes={tsne_classes}, --tsne_points={tsne_points}: "
                          f"expected positive counts")
    jobs = plan(workdirs, results, output, overwrite)
    written, restored = [], {}
    for path, kind, source in jobs:
        if kind == "targets":
            method, class_names = restore_metadistiller(source)
            config = layout.read_config(source)
            x, y = test_images(config, images)
            plot_targets(x, y, metadistiller_targets(method, x), class_names, path, dpi=dpi)
        elif kind == "target_entropy":
            net = layout.read_network_info(source)
            plot_target_entropy(read_history(source), int(net["kwargs"]["num_classes"]), path, dpi=dpi)
        elif kind == "tsne":
            if source not in restored:
                from tfkd import runs

                restored[source] = runs.restore_fewshot_method(source)
            method, config = restored[source]
            features, labels, names = novel_split(source)
            data = tsne_data(method, features, labels, tsne_classes, tsne_points, tsne_points, seed)
            title = f"{_fewshot_label(config)}\nreal vs generated novel-class features (t-SNE)"
            plot_tsne(data, names, title, path, dpi=dpi)
        elif kind == "k_schedule":
            config = layout.read_config(source)
            title = f"{_fewshot_label(config)}: k over meta-training ({config.progressive.schedule} schedule)"
            plot_k_schedule(k_schedule_data(config, read_history(source)), title, path, dpi=dpi)
        elif kind == "curves_runs":
            plot_learning_curves(self_boosting_curves_from_runs(source), "Self-boosting", path, dpi=dpi)
        elif kind == "curves_results":
            plot_learning_curves(self_boosting_curves_from_results(source), "Self-boosting", path, dpi=dpi)
        written.append(path)
    return written


def _fewshot_label(config):
    if config.method == "progressive":
        return "Dist↓ (progressive, weaken)" if config.progressive.direction == "weaken" else \
            "Dist↑ (progressive, strengthen)"
    return {"gen": "gen", "dist": "Dist"}.get(config.method, config.method)

