"""The README's shell commands, as data: tests/test_readme.py checks that they chain and runs the
quick-start chain with tiny overrides, so the README cannot drift from the code.

* ``readme_commands`` extracts every command of every ```bash block, in order (continuation
  lines joined, comments dropped).
* ``check_chain`` checks them without running anything: every bin/ flag exists, every
  ``--config.a.b`` names a config field, every ``--method`` is registered, every config file
  exists, and every folder a command reads (``--workdir`` of export / evaluate / extract, features,
  teachers, ``--dir``) was written by an earlier command, which in turn never writes over an
  earlier command's output.
* Run as a script (``python tests/readme_commands.py CWD INDEX...``), it executes the README
  commands with those indices in ``CWD``, one after another in this one process (TensorFlow is
  imported once), each bin/ script under its own absl flags, with ``tiny_overrides`` appended.
"""
import importlib.util
import os
import re
import shlex
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
MAKE_WORKDIR = "runs/fashion_mnist_metadistiller"  # the Makefile's WORKDIR default (checked by the test)


def readme_commands(path=README):
    """[argv] of every command in the README's ```bash blocks, in order."""
    text = open(path).read()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def script_flags(script):
    """Flag names a bin/ script defines (from its source: DEFINE_* calls and the config flag)."""
    source = open(os.path.join(REPO, script)).read()
    names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    if re.search(r"define_config_flag\(\s*\)", source):
        names.add("config")
    names |= set(re.findall(r"define_config_flag\(\s*\"(\w+)\"", source))
    return names


def parse_flags(argv):
    """{name: [values]} of --name=value / --name / --noname arguments; anything else is an error."""
    out = {}
    for arg in argv:
        match = re.fullmatch(r"--([\w.]+)(?:=(.*))?", arg, flags=re.S)
        if not match:
            raise ValueError(f"unexpected argument {arg!r}")
        out.setdefault(match.group(1), []).append(match.group(2))
    return out


def load_config_file(path):
    spec = importlib.util.spec_from_file_location(f"readme_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def config_of(flags, cwd):
    """(config, path): the config file a bin/train or bin/tune command names (or the default), with
    its --method applied; config is None for a file that does not exist (yet)."""
    from tfkd.cli import DEFAULT_CONFIG

    path = (flags.get("config") or [DEFAULT_CONFIG])[0]
    full = path if os.path.isabs(path) else os.path.join(cwd, path)
    if not os.path.exists(full):
        return None, path
    config = load_config_file(full)
    config.unlock()
    if flags.get("method"):
        config.method = flags["method"][0]
    return config, path


def setting(flags, config, dotted):
    """A config value as the command sets it: its --config.<dotted> flag (a string) if given."""
    if f"config.{dotted}" in flags:
        return flags[f"config.{dotted}"][0]
    node = config
    for key in dotted.split("."):
        node = node[key]
    return node


def has_field(config, dotted):
    node = config
    for key in dotted.split("."):
        try:
            if key not in node:
                return False
        except TypeError:
            return False
        node = node[key]
    return True


def norm(path):
    return os.path.normpath(path)


def check_chain(commands, cwd=REPO):
    """Problems (a list of strings; empty = fine) of the README commands as one session from a fresh
    clone in ``cwd``, in order."""
    from tfkd.registry import DATASETS, METHODS

    import tfkd.data  # noqa: F401  (registers the local datasets)
    import tfkd.methods  # noqa: F401  (registers the methods)

    offline = set(DATASETS.names()) - {"tfds"}
    problems, produced = [], set()

    def need(path, what, i):
        if norm(path) not in produced:
            problems.append(f"command {i + 1} ({' '.join(commands[i][:2])}): {what}={path} was not written by an "
                            f"earlier README command")

    def write(path, i, overwrite=False):
        if norm(path) in produced and not overwrite:
            problems.append(f"command {i + 1} ({' '.join(commands[i][:2])}): writes {path}, which an earlier README "
                            f"command already wrote (it would be refused)")
        produced.add(norm(path))

    for i, argv in enumerate(commands):
        program, args = argv[0], argv[1:]
        if program == "make":
            if args == ["train"]:
                write(MAKE_WORKDIR, i)
                write(os.path.join(MAKE_WORKDIR, "export"), i)
            elif args not in (["test"], ["setup"], ["bench"]):
                problems.append(f"command {i + 1}: unknown make target {args}")
            continue
        if program in ("saved_model_cli", "tensorboard"):  # --dir DIR / --logdir DIR
            for flag in ("--dir", "--logdir"):
                if flag in args:
                    need(args[args.index(flag) + 1], flag, i)
            continue
        if not program.startswith("bin/") or not os.path.exists(os.path.join(REPO, program)):
            problems.append(f"command {i + 1}: {program} is not a bin/ script of this repository")
            continue
        try:
            flags = parse_flags(args)
        except ValueError as e:
            problems.append(f"command {i + 1} ({program}): {e}")
            continue
        known = script_flags(program)
        for name in flags:
            base = name.split(".")[0]
            if base not in known and not (name.startswith("no") and name[2:] in known):
                problems.append(f"command {i + 1} ({program}): --{name} is not a flag of {program}")
        if program in ("bin/train", "bin/tune"):
            config, config_path = config_of(flags, cwd)
            if config is None:
                need(config_path, "--config", i)
            else:
                for name in flags:
                    if name.startswith("config.") and not has_field(config, name[len("config."):]):
                        problems.append(f"command {i + 1} ({program}): --{name}: {config_path} has no field "
                                        f"{name[len('config.'):]!r}")
                if config.method not in METHODS:
                    problems.append(f"command {i + 1} ({program}): --method={config.method} is not a registered "
                                    f"method")
                    continue
                if METHODS.get(config.method).task == "fewshot":
                    need(setting(flags, config, "fewshot.features_dir"), "config.fewshot.features_dir", i)
                elif setting(flags, config, "data.name") not in offline:  # a TFDS dataset: downloads first
                    problems.append(f"command {i + 1} ({program}): data.name={setting(flags, config, 'data.name')!r} "
                                    f"is a TFDS dataset, not prepared in a fresh clone (offline: {sorted(offline)})")
                if has_field(config, f"{config.method}.teacher"):
                    need(setting(flags, config, f"{config.method}.teacher"), f"config.{config.method}.teacher", i)
            workdir = flags["workdir"][0]
            overwrite = "overwrite" in flags
            write(workdir, i, overwrite)
            if program == "bin/tune":
                write(os.path.join(workdir, "best_config.py"), i, overwrite)
            elif config is None or str(setting(flags, config, "export.enabled")) == "True":
                write(os.path.join(workdir, "export"), i, overwrite)
        elif program == "bin/export":
            workdir = flags["workdir"][0]
            need(workdir, "--workdir", i)
            write((flags.get("output") or [os.path.join(workdir, "export")])[0], i, "overwrite" in flags)
        elif program == "bin/extract_features":
            need(flags["workdir"][0], "--workdir", i)
            write(flags["output"][0], i, "overwrite" in flags)
        elif program == "bin/evaluate":
            for workdir in flags["workdir"]:
                need(workdir, "--workdir", i)
            if flags.get("output"):
                write(flags["output"][0], i)
    return problems


def needed_for(commands, targets):
    """Indices of ``targets`` and of every earlier command whose output they (transitively) read."""
    writes, reads = [], []
    for argv in commands:
        flags = parse_flags([a for a in argv[1:] if a.startswith("--")]) if argv[0] != "make" else {}
        w, r = set(), set()
        if argv[0] == "bin/train" or argv[0] == "bin/tune":
            w.add(norm(flags["workdir"][0]))
            r |= {norm(v[0]) for k, v in flags.items() if k.endswith((".features_dir", ".teacher"))}
            if (flags.get("config") or [""])[0].startswith("runs/"):
                r.add(norm(os.path.dirname(flags["config"][0])))
        elif argv[0] == "bin/extract_features":
            r.add(norm(flags["workdir"][0]))
            w.add(norm(flags["output"][0]))
        elif argv[0] in ("bin/export", "bin/evaluate"):
            r |= {norm(v) for v in flags["workdir"]}
        writes.append(w)
        reads.append(r)
    chosen, wanted = set(), set()
    for i in sorted(targets, reverse=True):
        chosen.add(i)
        wanted |= reads[i]
    for i in range(max(targets), -1, -1):
        if writes[i] & wanted:
            chosen.add(i)
            wanted |= reads[i]
    return sorted(chosen)


# ------------------------------------------------------------------ running (in a fresh process)

TINY_CLASSIFICATION = ["--config.train.epochs=1", "--config.data.max_train_examples=256",
                       "--config.data.max_eval_examples=128", "--config.model.width=0.0625",
                       "--config.train.batch_size=64", "--config.train.verbose=2"]
TINY_BACKBONE = ["--config.fewshot_val.episodes=20", "--config.fewshot_val.max_images=1000"]
TINY_FEWSHOT = ["--config.train.epochs=1", "--config.fewshot.episodes_per_epoch=8",
                "--config.fewshot.val_episodes=8", "--config.fewshot.test_episodes=10",
                "--config.fewshot.all_way_shots=(1,)", "--config.fewshot.all_way_draws=1",
                "--config.train.verbose=0"]


def tiny_overrides(argv, cwd):
    """Flags appended to a README command so that it runs in seconds (the same code paths)."""
    if argv[0] != "bin/train":
        return []
    from tfkd.registry import METHODS

    import tfkd.methods  # noqa: F401

    config, _ = config_of(parse_flags(argv[1:]), cwd)
    if METHODS.get(config.method).task == "fewshot":
        return TINY_FEWSHOT
    return TINY_CLASSIFICATION + (TINY_BACKBONE if config.data.class_split else [])


def run_in_process(argv):
    """Runs one bin/ script as ``__main__`` with ``argv``, under absl flags of its own; returns its
    exit status."""
    import runpy

    from absl import flags

    before = set(flags.FLAGS)
    sys.argv = [argv[0]] + argv[1:]
    try:
        runpy.run_path(os.path.join(REPO, argv[0]), run_name="__main__")
        status = 0
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        for name in set(flags.FLAGS) - before:  # the next script defines its own
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()
    return status


def main(cwd, indices):
    os.chdir(cwd)
    commands = readme_commands()
    for i in indices:
        argv = commands[i] + tiny_overrides(commands[i], cwd)
        print(f"\n$ {shlex.join(argv)}", flush=True)
        cpu, wall = time.process_time(), time.time()
        status = run_in_process(argv)
        print(f"[exit {status}; {time.process_time() - cpu:.1f} s CPU, {time.time() - wall:.1f} s]", flush=True)
        if status != 0:
            sys.exit(status)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main(sys.argv[1], [int(i) for i in sys.argv[2:]])
