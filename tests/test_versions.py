"""Pinned versions: constraints.txt is what is installed, and setup.py's ranges admit it."""
import importlib.metadata as md
import os
import re

import pytest
from packaging.requirements import Requirement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pins():
    with open(os.path.join(REPO, "constraints.txt")) as f:
        lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return {_normal(name): version for name, version in (line.split("==") for line in lines)}


def _normal(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def test_installed_versions_are_the_pinned_ones():
    # scripts/setup.sh installs with -c constraints.txt, so the suite runs on exactly these.
    wrong = {name: (version, _installed(name)) for name, version in pins().items()
             if _installed(name) not in (None, version)}
    assert not wrong, f"installed versions differ from constraints.txt (pinned, installed): {wrong}"
    for core in ("keras", "tensorflow-cpu", "tensorflow-datasets", "keras-tuner", "ml-collections", "h5py", "numpy"):
        assert core in pins(), core


def test_setup_ranges_admit_the_pins_and_cap_major_versions():
    with open(os.path.join(REPO, "setup.py")) as f:
        text = f.read()
    specs = re.findall(r'"([A-Za-z][A-Za-z0-9_.\-\[\]]*(?:[<>=!~][^";]*)?(?:;[^"]*)?)"', text)
    pinned = pins()
    checked = 0
    for spec in specs:
        try:
            req = Requirement(spec)
        except Exception:
            continue  # a description string, not a requirement
        key = _normal(req.name)
        if key not in pinned or not str(req.specifier):
            continue
        assert req.specifier.contains(pinned[key], prereleases=True), f"{spec!r} excludes the pin {pinned[key]}"
        assert any(s.operator == "<" for s in req.specifier), f"{spec!r} has no upper bound"
        checked += 1
    assert checked >= 10, checked


@pytest.mark.parametrize("name", ["keras", "tensorflow"])
def test_imported_modules_match_pins(name):
    module = __import__(name)
    pinned = pins().get(name) or pins().get(f"{name}-cpu")
    assert module.__version__ == pinned
