"""Shared helpers for benchmarks: machine description and result files with provenance."""
import datetime
import os
import platform
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, REPO)


_HELD_LOCKS = {}


def refuse(message):
    """A request the benchmark cannot honour: one line ``error: ...`` and exit status 2, before any
    training (the contract of bin/, tfkd.cli.fail)."""
    from tfkd import cli

    cli.fail(message)


def run(main):
    """``app.run(main)`` with bin/'s contract: a bad flag value, a stray argument or a UserError
    raised later (a damaged run folder, bad data) is one error line and exit status 2 instead of
    absl's usage text or a traceback."""
    from absl import app

    from tfkd import cli

    app.run(lambda argv: cli.main_guard(lambda: main(argv)), flags_parser=cli.parse_flags)


def hold_results(name):
    """Takes benchmarks/results/.<name>.lock for the rest of this process, so that a second
    invocation writing the same results file is refused (one line, exit 2) instead of both
    rewriting the file and the later one dropping the other's finished runs. The OS releases the
    lock when the process ends, however it ends, so a killed run leaves nothing to clean up."""
    import fcntl

    os.makedirs(RESULTS, exist_ok=True)
    f = open(os.path.join(RESULTS, f".{name}.lock"), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        refuse(f"benchmarks/results/{name}.json is being written by {owner}; wait for it to finish, "
               "or give another --name")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {platform.node()}")
    f.flush()
    _HELD_LOCKS[name] = f


def machine():
    import tensorflow as tf

    from tfkd.io import cpu_model, thread_counts

    cpu = cpu_model()
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpus": gpus, "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__, "threads": thread_counts()}


def invocation():
    """This benchmark's command line, as results files record it."""
    return " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_result(name, payload):
    """Writes benchmarks/results/<name>.json with command, date, machine and git revision."""
    from tfkd import io

    payload = dict(payload)
    payload.setdefault("command", invocation())
    payload.setdefault("date_utc", now_utc())
    if "machine" not in payload:  # machine() imports TensorFlow
        payload["machine"] = machine()
    payload.setdefault("git_revision", io.git_revision())
    path = os.path.join(RESULTS, f"{name}.json")
    io.write_json_atomic(path, payload)
    print(f"wrote {os.path.relpath(path, REPO)}")
    return path


def read_result(name):
    """The results file benchmarks/results/<name>.json (FileNotFoundError when there is none yet).
    A damaged one is refused in one line before any work: continuing from it would rewrite the file
    without the finished runs it held."""
    from tfkd import errors, io

    shown = f"benchmarks/results/{name}.json"
    expected = (f"a results file as a benchmark wrote it (restore it with `git checkout {shown}`, "
                "or give another --name)")
    try:
        value = io.read_json(os.path.join(RESULTS, f"{name}.json"), expected=expected)
    except errors.WorkdirError as e:
        refuse(str(e).replace(os.path.join(RESULTS, f"{name}.json"), shown))
    if not isinstance(value, dict):
        refuse(f"{shown} holds a JSON {type(value).__name__}, not a JSON object; expected {expected}")
    return value


def load_config(path):
    """The ConfigDict of a configs/*.py file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def timing_setup(config_path, batch_size, intra_op_threads=None, inter_op_threads=None):
    """(config, data) of a config file at ``batch_size``: what the timing benchmarks start from.
    TensorFlow's thread pools are set here, as bin/train sets them: the config file's, or the
    given counts (None: the config's; 0: TensorFlow's choice)."""
    from tfkd import data as data_lib
    from tfkd.distribute import set_thread_counts

    base = load_config(config_path)
    base.train.batch_size = batch_size
    for field, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
        if value is not None:
            base.train[field] = value
    set_thread_counts(base.train.intra_op_threads, base.train.inter_op_threads)
    # MetaDistiller as published (the lookahead on the whole batch), whatever the config file picks:
    # the timing tables' "metadistiller" rows and their cycle ratios are Algorithm 1's, and a smaller
    # meta batch is one of step_cost's own variants.
    base.metadistiller.meta_batch_size = 0
    return base, data_lib.load_dataset(base.data)


def fresh_method(config, data, seed):
    """A newly built, compiled method of ``config`` (seeded), on the default strategy."""
    import keras
    import tensorflow as tf

    from tfkd import train

    keras.utils.set_random_seed(seed)
    method, _, _ = train.build_all(config, data, tf.distribute.get_strategy())
    return method


class FitTimer:
    """Times ``fit`` of one method in one training phase (MetaDistiller: 'meta' or 'main'). Built
    once: the phase's first ``fit`` step (tracing included: what a user waits before the progress
    bar moves, ``first_step_s``) and ``warmup`` untimed steps; then ``rate(steps)`` times a fit.
    Timers of several methods are meant to be called in turns (``interleaved_rates``), so that the
    machine's slow drifts (other VMs, caches) hit every method alike."""

    def __init__(self, method, data, phase, *, batch_size, augment, seed, warmup):
        from tfkd import data as data_lib

        self.method, self.phase, self.batch_size = method, phase, batch_size
        method.set_phase(phase)
        self.dataset = data_lib.train_dataset(data, batch_size=batch_size, seed=seed, augment=augment,
                                              meta_split=method.phase_needs_meta_split(phase))
        start = time.perf_counter()
        method.fit(self.dataset, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
        self.first_step_s = time.perf_counter() - start
        method.fit(self.dataset, epochs=1, steps_per_epoch=warmup, verbose=0, shuffle=False)

    def rate(self, steps):
        """images/s of steps 2..``steps`` of one fit: a fit's start (a new iterator refilling the
        shuffle buffer) varied by over a second and dominated 30-step timings."""
        import keras

        starts, ends = [], []
        clock = keras.callbacks.LambdaCallback(
            on_train_batch_begin=lambda batch, logs: starts.append(time.perf_counter()),
            on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
        self.method.set_phase(self.phase)  # each phase keeps its compiled step: no retracing here
        self.method.fit(self.dataset, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[clock])
        return (steps - 1) * self.batch_size / (ends[-1] - starts[1])


def interleaved_rates(timers, steps, repeats):
    """{key: every repeat's images/s}, timing each of ``timers`` ({key: FitTimer}) once per round."""
    rates = {key: [] for key in timers}
    for _ in range(repeats):
        for key, timer in timers.items():
            rates[key].append(timer.rate(steps))
    return rates


def time_fit(method, data, phase, *, batch_size, augment, seed, warmup, steps, repeats, with_first_step=False):
    """Median images/s of ``fit`` in one training phase after ``warmup`` untimed steps; returns
    (median, every repeat's rate), and with ``with_first_step`` also the first step's seconds."""
    import statistics

    timer = FitTimer(method, data, phase, batch_size=batch_size, augment=augment, seed=seed, warmup=warmup)
    rates = [timer.rate(steps) for _ in range(repeats)]
    if with_first_step:
        return statistics.median(rates), rates, timer.first_step_s
    return statistics.median(rates), rates


def in_section(values, source, target):
    """Searched ``values`` ({"section.field": v}) with the ``source`` method section's fields moved
    to ``target``'s (another method trained with them); other sections' fields as they are."""
    return {(target + k[len(source):] if k.startswith(source + ".") else k): v for k, v in values.items()}


def write_reused_config(path, fewshot_cfg_file, values):
    """A config file: ``fewshot_cfg_file`` with a committed search's best values applied the way
    bin/tune applies them (the seed runs add the row's and --override's flags, as for bin/tune's
    own best_config.py)."""
    from tfkd import io

    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = (f'"""Written by a tfkd benchmark: the best values of a committed bin/tune search."""\n'
            f"import importlib.util\n\nfrom tfkd import tuning\n\n\n"
            f"def get_config():\n"
            f"    spec = importlib.util.spec_from_file_location('fewshot_base', {fewshot_cfg_file!r})\n"
            f"    module = importlib.util.module_from_spec(spec)\n"
            f"    spec.loader.exec_module(module)\n"
            f"    return tuning.apply_values(module.get_config(), {values!r})\n")
    io.write_text_atomic(path, text)


def run_logged(cmd, log_path, done_marker, threads=0):
    """Runs a bin/ command with its output appended to ``log_path``, unless ``done_marker`` exists
    (a finished run is reused); returns its seconds, or None when skipped. A failure stops the
    benchmark, naming the command and the log."""
    import subprocess

    if os.path.exists(done_marker):
        return None
    from tfkd.io import thread_environment

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **thread_environment(threads, threads))
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}; see {log_path}")
    return time.time() - start


# TensorFlow's Grappler logs each optimizer pass over each graph at VLOG 1 of meta_optimizer.cc:
# "I... meta_optimizer.cc:973] remapper: Graph size after: 7353 nodes (-18), 23936 edges (-18), time = 594.803ms."
GRAPPLER_PASS = re.compile(r"\]\s+(\S+): Graph size after: (\d+) nodes.*?time = ([\d.]+)ms")


def grappler_seconds(log):
    """Grappler's time over the graphs of at least 1000 nodes it optimised in a process's log (the
    train function's; the input pipeline's and Keras' small helper graphs are left out): total and
    per optimizer (the tfg_optimizer pipelines, named by their pass lists, summed as one)."""
    per_pass = {}
    for name, nodes, ms in GRAPPLER_PASS.findall(log):
        if int(nodes) < 1000:
            continue
        name = "tfg_optimizer" if name.startswith("tfg_optimizer") else name
        per_pass[name] = per_pass.get(name, 0.0) + float(ms) / 1000
    return sum(per_pass.values()), dict(sorted(per_pass.items(), key=lambda kv: -kv[1]))
