#!/usr/bin/env python3
"""Rewrites constraints.txt with the installed versions of tfkd's dependency closure.

Run it in an environment where `make test` passes after moving a pin (README, "Pinned versions"):
it walks the requirements of setup.py's install_requires and its cpu/test extras (plus their
own requirements, recursively) and writes `name==version` for each installed one.
"""
import importlib.metadata as md
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(os.path.dirname(HERE), "constraints.txt")
HEADER = """# Exact versions CI passes on (scripts/setup.sh installs with -c constraints.txt; setup.py keeps ranges).
# To move the pins: pip install -U <pkg> in a fresh venv with 'pip install -e .[cpu,test]' (no -c), run
# 'make test', then regenerate this file with 'python scripts/freeze_constraints.py' and commit it.
"""
SKIP = {"setuptools", "wheel", "pip", "tfkd"}  # installer tools and the project itself


def _name(requirement):
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)


def closure():
    tfkd = md.distribution("tfkd")
    wanted = [r for r in tfkd.requires or [] if "extra ==" not in r or re.search(r"extra == .(cpu|test).", r)]
    seen, stack = {}, [_name(r) for r in wanted]
    while stack:
        name = stack.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen or key in SKIP:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:  # an environment marker excluded it (e.g. another platform)
            continue
        seen[key] = f"{dist.metadata['Name']}=={dist.version}"
        if key == "tensorflow-cpu":  # the gpu extra and non-x86 machines install `tensorflow` instead
            seen["tensorflow"] = f"tensorflow=={dist.version}"
        stack += [_name(r) for r in dist.requires or [] if "extra ==" not in r]
    return sorted(seen.values(), key=str.lower)


def main():
    with open(PATH, "w") as f:
        f.write(HEADER + "\n".join(closure()) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
