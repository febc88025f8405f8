"""Shared pieces of the absl entry points in bin/."""
import os
import sys

from tfkd.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "fashion_mnist_resnet18.py")


def main_guard(fn):
    """Runs ``fn``; a UserError becomes a one-line message and exit status 2 (no traceback)."""
    try:
        fn()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyError as e:  # registry lookups (unknown method / arch)
        if "unknown" in str(e):
            print(f"error: {e.args[0]}", file=sys.stderr)
            sys.exit(2)
        raise
