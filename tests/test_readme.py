"""The README's commands work as written, in order, from a fresh clone (tests/readme_commands.py):
all of them chain (flags, config fields, methods, offline data, folders written before they are
read, no command refused for overwriting an earlier one's output), and the quick-start chain --
train, export --check, the few-shot backbone, features, two few-shot runs, evaluate -- runs with
tiny overrides appended."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, SUBPROCESS_TIMEOUT
from tests.readme_commands import MAKE_WORKDIR, check_chain, needed_for, readme_commands

RUNNER = os.path.join(REPO, "tests", "readme_commands.py")


def test_every_readme_command_chains():
    commands = readme_commands()
    assert len(commands) >= 15 and commands[0] == ["make", "train"]
    assert check_chain(commands) == []


def test_make_train_writes_where_the_checker_says():
    makefile = open(os.path.join(REPO, "Makefile")).read()
    assert re.search(rf"^WORKDIR \?= {re.escape(MAKE_WORKDIR)}$", makefile, flags=re.M)
    assert "--workdir=$(WORKDIR)" in makefile


def test_suite_benchmark_times_the_makefile_test_command():
    """benchmarks/test_suite.py (the README's suite time) runs exactly `make test`'s pytest."""
    makefile = open(os.path.join(REPO, "Makefile")).read()
    recipe = re.search(r"^test:.*\n\t\$\(PYTHON\) (-m pytest .*)$", makefile, flags=re.M).group(1)
    source = open(os.path.join(REPO, "benchmarks", "test_suite.py")).read()
    pytest_list = re.search(r"^PYTEST = \[sys.executable, (.*?)\]", source, flags=re.M | re.S).group(1)
    assert recipe.split() == [arg.strip().strip('"') for arg in pytest_list.split(",")]


@pytest.mark.parametrize("commands, problem", [
    ([["bin/export", "--workdir=runs/md", "--check"]], "--workdir=runs/md was not written by an earlier"),
    ([["bin/train", "--workdir=runs/md"], ["bin/export", "--workdir=runs/md"]], "it would be refused"),
    ([["bin/train", "--workdir=runs/md"], ["bin/train", "--workdir=runs/md"]], "it would be refused"),
    ([["bin/export", "--workdir=runs/md", "[--output=DIR]"]], "unexpected argument '[--output=DIR]'"),
    ([["bin/export", "--workdir=x", "--chek"]], "--chek is not a flag of bin/export"),
    ([["bin/train", "--workdir=x", "--config.train.epochz=3"]], "has no field 'train.epochz'"),
    ([["bin/train", "--workdir=x", "--method=nope"]], "--method=nope is not a registered method"),
    ([["bin/train", "--workdir=x", "--config=configs/cifar100_resnet18.py"]], "'cifar100' is a TFDS dataset"),
    ([["bin/train", "--workdir=x", "--method=gen", "--config=configs/glyphs_fewshot.py"]],
     "config.fewshot.features_dir=runs/glyphs_features was not written"),
    ([["bin/train", "--workdir=x", "--method=kd", "--config.kd.teacher=runs/t"]], "config.kd.teacher=runs/t was not"),
    ([["bin/evaluate", "--workdir=runs/a"]], "--workdir=runs/a was not written"),
    ([["saved_model_cli", "show", "--dir", "runs/md/export"]], "--dir=runs/md/export was not written"),
])
def test_the_checker_finds_broken_chains(commands, problem):
    problems = check_chain(commands)
    assert any(problem in p for p in problems), problems


def test_quick_start_chain_runs_with_tiny_overrides(tmp_path):
    """One fresh process runs the chain (TensorFlow is imported once); --check starts one more."""
    from tfkd.data.sources import default_glyphs_path

    commands = readme_commands()
    export = next(i for i, c in enumerate(commands) if c[0] == "bin/export")
    targets = [export]
    glyphs = os.path.exists(default_glyphs_path())
    if glyphs:  # the few-shot chain needs the glyphs file (shared/data, beside the checkout)
        targets.append(next(i for i, c in enumerate(commands) if c[0] == "bin/evaluate"))
    indices = needed_for(commands, targets)
    (tmp_path / "configs").symlink_to(os.path.join(REPO, "configs"))
    proc = subprocess.run([sys.executable, RUNNER, str(tmp_path), *map(str, indices)], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    out = proc.stdout
    assert proc.returncode == 0, (out[-3000:], proc.stderr[-3000:])
    ran = [line[2:].split()[:2] for line in out.splitlines() if line.startswith("$ ")]
    assert ran == [commands[i][:2] for i in indices] and ["bin/export", "--workdir=runs/sd"] in ran
    # bin/train's console: the epoch header (the appended epochs=1 wins over the README's), the
    # traced first step timed, and where the run, its best checkpoint and export are.
    assert "Epoch 1/1" in out and re.search(r"tracing the training step\.\.\. \d+\.\d s", out)
    assert "workdir          runs/sd\nbest checkpoint  runs/sd/checkpoints/best (epoch 1)\n" in out
    assert "export           runs/sd/export\n" in out
    assert "check passed" in out and (tmp_path / "runs" / "sd_latest_export" / "saved_model.pb").exists()
    assert "Gradients do not exist" not in proc.stderr + out
    assert "\b" not in out and "\r" not in out  # a bar's redraws, kept in a pipe (tfkd.progress.bar_verbosity)
    # Retracing of tfkd's own functions (e.g. the ensemble predictor). Keras makes a new
    # multi_step_on_iterator per model, and TensorFlow counts their traces together across the
    # models this one process trains, which a user's separate commands never do.
    retraced = [line for line in (proc.stderr + out).splitlines()
                if "retracing" in line and "TensorFlowTrainer._make_function" not in line]
    assert not retraced, retraced
    if glyphs:
        summary = out[out.index("few-shot backbone (baseline) on the base classes of glyphs"):]
        table = summary[: summary.index("workdir ")]
        assert "final " in table and "ensemble" not in table  # one head: no ensemble row
        assert (tmp_path / "runs" / "compare.json").exists()


def _anchors(path):
    """GitHub's heading anchors of a Markdown file: lower case, punctuation but '-' and '_' dropped,
    spaces to '-' (code blocks skipped: their '#' lines are comments)."""
    anchors, in_code = set(), False
    for line in open(path):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_links_between_the_readme_and_docs_resolve():
    """Every relative link of README.md and docs/benchmarks.md names a file that exists and, with a
    '#', a heading there: the README's benchmark list cannot drift from the headings it points at."""
    problems, checked = [], 0
    for doc in ("README.md", os.path.join("docs", "benchmarks.md")):
        base = os.path.dirname(os.path.join(REPO, doc))
        for target in re.findall(r"\]\(([^)\s]+)\)", open(os.path.join(REPO, doc)).read()):
            if re.match(r"\w+://", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(base, path)) if path else os.path.join(REPO, doc)
            checked += 1
            if not os.path.exists(full):
                problems.append(f"{doc}: {target}: no such file")
            elif anchor and anchor not in _anchors(full):
                problems.append(f"{doc}: {target}: no such heading")
    assert checked > 20 and problems == [], problems
