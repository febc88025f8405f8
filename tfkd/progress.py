"""Console progress of a training run (bin/train).

Keras' progress bar, with three changes that a run of several ``fit`` calls needs (tfkd.train fits
each phase of epochs separately, e.g. MetaDistiller's meta and main epochs):

* ``Epoch k/N`` before every epoch, N being the run's epochs: Keras prints it only when its own
  ``epochs`` is above 1, and counts to the end of the current fit, not of the run;
* the first step of each fit, when TensorFlow traces and compiles the step function (minutes for
  MetaDistiller's meta step on a slow CPU), is announced ("tracing the meta step...") and timed;
* that first step is left out of the bar's ETA, which otherwise extrapolates the tracing time to
  every remaining step (an ETA of hours for an epoch of minutes).

``bar_verbosity`` keeps a bar out of logs written to files and pipes (one line per epoch there);
``print_run_paths`` ends a run's output with where its folder, best checkpoint and export are.

Layer: a leaf (Keras only); the drivers use it.
"""
import sys
import time

import keras


class RunProgress(keras.callbacks.ProgbarLogger):
    """Pass it in ``fit``'s callbacks (Keras then adds no progress bar of its own) and call
    ``start_fit`` before each ``fit`` of the run. Silent at ``verbose=0``."""

    def __init__(self, total_epochs, stream=None):
        super().__init__()
        self.total_epochs = int(total_epochs)
        self.stream = stream
        self.step_name = "training step"
        self.trace_seconds = []  # (step name, seconds of the first, traced step) per fit
        self._tracing_since = None
        self._first_step_pending = False
        self._header = None

    def _print(self, text, end="\n"):
        stream = self.stream or sys.stdout
        stream.write(text + end)
        stream.flush()

    def start_fit(self, step_name="training step", header=None):
        """Before each ``fit``: the name of the step it traces, and an optional header line (the phase)."""
        self.step_name = step_name
        self._header = header  # printed when the fit starts (its verbosity is known then)

    def set_params(self, params):
        super().set_params(params)
        self._first_step_pending = True  # a new fit: its train function is traced on its first step

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._header and self.verbose:
            self._print(self._header)
        self._header = None

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_progbar()
        self._maybe_init_progbar()
        if self.verbose:
            self._print(f"Epoch {epoch + 1}/{self.total_epochs}")

    def on_train_batch_begin(self, batch, logs=None):
        if self._first_step_pending:
            self._tracing_since = time.perf_counter()
            if self.verbose:
                self._print(f"tracing the {self.step_name}...", end="")

    def on_train_batch_end(self, batch, logs=None):
        if not self._first_step_pending:
            return super().on_train_batch_end(batch, logs)
        self._first_step_pending = False
        seconds = time.perf_counter() - self._tracing_since
        self.trace_seconds.append((self.step_name, seconds))
        if self.verbose:
            self._print(f" {seconds:.1f} s")
        # The bar sees step 1 silently: Keras' Progbar times later steps from its end, so the
        # tracing stays out of the time per step and the ETA.
        self._maybe_init_progbar()
        self.seen = batch + 1
        shown, self.progbar.verbose = self.progbar.verbose, 0
        try:
            self.progbar.update(self.seen, list((logs or {}).items()), finalize=False)
        finally:
            self.progbar.verbose = shown


def bar_verbosity(verbose, stream=None):
    """The Keras ``verbose`` to use for a progress bar written to ``stream`` (default stdout).

    Keras' bar redraws itself with backspaces and a carriage return wherever the ``posix`` module
    is loaded -- always on Linux, into a file or pipe too, where every redraw stays: a log of
    hundreds of KB per epoch (``nohup``, a batch job). Off a terminal, a bar (1) becomes one line
    per epoch (2); 0 and 2 are kept."""
    stream = stream or sys.stdout
    if verbose == 1 and not (hasattr(stream, "isatty") and stream.isatty()):
        return 2
    return verbose


def print_run_paths(workdir, best_dir, best_epoch, export_dir):
    """The last lines of a run: where its folder, best checkpoint and export are."""
    print(f"\nworkdir          {workdir}")
    print(f"best checkpoint  {best_dir} (epoch {best_epoch})")
    print(f"export           {export_dir or 'none (config.export.enabled=False)'}", flush=True)
