"""Console progress of a run (tfkd.progress): the run's own "Epoch k/N" before every epoch of every
fit, the first (traced) step of each fit announced and timed, and kept out of the ETA."""
import io
import re
import time

import keras
import numpy as np

from tfkd.progress import RunProgress, bar_verbosity, print_run_paths


class SlowFirstStep(keras.callbacks.Callback):
    """Stands in for a step function that takes long to trace: the first step of each fit sleeps."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def set_params(self, params):
        super().set_params(params)
        self.pending = True

    def on_train_batch_begin(self, batch, logs=None):
        if self.pending:
            self.pending = False
            time.sleep(self.seconds)


def test_epoch_headers_phase_lines_tracing_time_and_eta(capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((40, 3), np.float32), np.zeros((40, 2), np.float32)
    progress = RunProgress(total_epochs=3)
    callbacks = [progress, SlowFirstStep(2.5)]
    # As tfkd.train runs MetaDistiller with M = 3: a meta fit of epoch 1, then a main fit of 2-3.
    progress.start_fit("meta step", "Meta phase, epochs 1-1 of 3")
    model.fit(x, y, batch_size=1, epochs=1, callbacks=callbacks, verbose=1)
    progress.start_fit("main step", "Main phase, epochs 2-3 of 3")
    model.fit(x, y, batch_size=1, epochs=3, initial_epoch=1, callbacks=callbacks, verbose=1)
    out = capsys.readouterr().out
    lines = [line for line in re.split(r"[\r\n]", out) if line.strip()]
    headers = [line for line in lines if line.startswith(("Epoch", "Meta phase", "Main phase", "tracing"))]
    assert [re.sub(r"\d+\.\d s", "T s", h) for h in headers] == [
        "Meta phase, epochs 1-1 of 3", "Epoch 1/3", "tracing the meta step... T s",
        "Main phase, epochs 2-3 of 3", "Epoch 2/3", "tracing the main step... T s", "Epoch 3/3"]
    assert [name for name, _ in progress.trace_seconds] == ["meta step", "main step"]
    assert all(seconds >= 2.5 for _, seconds in progress.trace_seconds)
    # The 2.5 s first step is not extrapolated to the 39 steps left (Keras alone showed ~97 s at
    # step 1); a bound far above a real step's time on a loaded CPU.
    etas = re.findall(r"━\x1b\[0m \x1b\[1m([\d:]+)s?\x1b\[0m", out)  # the bar's ETA, before the last step
    assert etas and all(":" not in eta and int(eta) < 45 for eta in etas), etas


def test_silent_at_verbose_zero(capsys):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    progress = RunProgress(total_epochs=2)
    progress.start_fit("main step", "Main phase, epochs 1-2 of 2")
    model.fit(np.zeros((4, 3)), np.zeros((4, 2)), epochs=2, callbacks=[progress], verbose=0)
    assert capsys.readouterr().out == ""
    assert len(progress.trace_seconds) == 1


def test_run_paths(capsys):
    print_run_paths("runs/x", "runs/x/checkpoints/best", 2, None)
    assert capsys.readouterr().out.splitlines()[1:] == [
        "workdir          runs/x", "best checkpoint  runs/x/checkpoints/best (epoch 2)",
        "export           none (config.export.enabled=False)"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_off_a_terminal_is_one_line_per_epoch():
    """Keras redraws its bar with backspaces wherever `posix` is imported, into files and pipes too."""
    assert [bar_verbosity(v, Terminal()) for v in (0, 1, 2)] == [0, 1, 2]
    assert [bar_verbosity(v, io.StringIO()) for v in (0, 1, 2)] == [0, 2, 2]


def test_summary_shows_an_ensemble_row_only_for_a_network_with_exits(capsys):
    """DML's "peer" is a second network, not an exit: its ensemble row (the student's one head
    again) read like a mistake; a multi-exit run keeps its ensemble of exits."""
    from tfkd.train import print_summary

    def metrics(heads):
        accuracies = {f"{h}_accuracy": 0.5 + i / 100 for i, h in enumerate(heads)}
        return {"val": dict(accuracies), "test": dict(accuracies), "best_epoch": 3, "select_metric": "val_final_accuracy"}

    print_summary(metrics(["ensemble", "final", "peer"]), "dml on fashion_mnist")
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[3:]]
    assert rows == ["final", "peer"]
    print_summary(metrics(["ensemble", "exit_1", "final"]), "dsn on fashion_mnist")
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[3:]]
    assert rows == ["ensemble", "exit_1", "final"]
