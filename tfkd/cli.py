"""Shared pieces of the absl entry points in bin/: every user mistake -- a bad flag value, a
missing or broken config file, an unknown config field, a UserError raised later -- ends in one
line ``error: ...`` on stderr and exit status 2, never a traceback."""
import os
import re
import sys

from absl import flags

from tfkd.errors import ConfigError, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "fashion_mnist_resnet18.py")


def fail(message):
    """Prints ``error: message`` as one line and exits with status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def _unknown_field(error, argv, name):
    """A one-line message for a --config.a.b=v override whose field the config lacks
    (ml_collections raises a KeyError, wrapped in AttributeError, with a did-you-mean hint)."""
    text = str(error.__context__ or error)
    key = re.search(r"'([^'\\]+)", text)
    key = key.group(1) if key else text
    hint = re.search(r'Did you mean "([^"]+)"', text)
    overrides = [a for a in argv if re.match(rf"--?{name}\.", a)]
    flag = next((a for a in overrides if key in re.split(r"[.=]", a.lstrip("-"))), None)
    where = flag or f"--{name}.…"
    return f"{where}: the config has no field {key!r}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")


def define_config_flag(name="config", default=DEFAULT_CONFIG, help_string="Experiment config file (configs/*.py)."):
    """``--config`` (ml_collections config_flags, locked). Its overrides are checked against the
    config while the flag is defined, so an unknown field fails here, before absl runs."""
    from ml_collections import config_flags

    try:
        config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
    except (AttributeError, KeyError) as e:
        fail(_unknown_field(e, sys.argv, name))


def parse_flags(argv):
    """``app.run(main, flags_parser=cli.parse_flags)``: absl's parsing, but a bad flag value or a stray
    positional argument is one error line and exit 2 (absl prints the usage text and exits 1)."""
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        fail(e)
    except (AttributeError, KeyError) as e:  # a config override naming no field
        fail(_unknown_field(e, argv, "config"))
    except (TypeError, ValueError) as e:  # a config override of the wrong type
        fail(f"{e}; expected a value of the field's type")
    if len(remaining) > 1:  # absl would print the whole usage text and exit 1 from main
        fail(f"unexpected argument(s) {' '.join(remaining[1:])}: expected only --flag=value settings, "
             f"e.g. --config={os.path.relpath(DEFAULT_CONFIG, REPO)}")
    return remaining


def experiment_config(name="config"):
    """An unlocked copy of --config's ConfigDict. config_flags defers a load failure (missing file,
    syntax error, failing get_config) to the first use of the value: it becomes a ConfigError here."""
    import ml_collections
    from ml_collections import config_flags

    flag = flags.FLAGS[name]
    path = config_flags.get_config_filename(flag)
    try:
        return ml_collections.ConfigDict(flag.value.to_dict())
    except Exception as e:  # noqa: BLE001  (whatever the config file raised)
        if not os.path.isfile(path):
            raise ConfigError(f"--{name}={path}: no such config file; expected a Python file defining get_config(), "
                              f"e.g. {os.path.relpath(DEFAULT_CONFIG, REPO)}") from None
        cause = e.__cause__ or e
        raise ConfigError(f"--{name}={path} cannot be loaded: {type(cause).__name__}: {cause}") from None


def main_guard(fn):
    """Runs ``fn``; a UserError becomes a one-line message and exit status 2 (no traceback)."""
    try:
        fn()
    except UserError as e:
        fail(e)
    except KeyError as e:  # registry lookups (unknown method / arch)
        if "unknown" in str(e):
            fail(e.args[0])
        raise
