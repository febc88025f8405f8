"""What the benchmarks that run the PyTorch reference share: an edited copy of it, and the
mapping of tfkd's ResNet18 weights onto its network.

Edits (``--reference_edits`` of benchmarks/reference_table.py and
benchmarks/reference_step_match.py) each measure one of the reference's differences from tfkd.
The file is a JSON object {"why": ..., "edits": [{"file": ..., "old": ..., "new": ...}]}, each
``old`` a text that occurs exactly once in its file; the shared reference is never changed."""
import json
import os
import re
import shutil

import common


def check_reference_python(path):
    """Refuses (one line, exit 2) a --reference_python that cannot be run."""
    if not path or not os.access(path, os.X_OK):
        common.refuse(f"--reference_python={path!r} is not an executable; expected "
                      "the python of a virtual environment with torch and numpy")


def read_edits(path):
    """The edits of --reference_edits, or a refusal naming what is wrong with the file."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, ValueError) as e:
        common.refuse(f"--reference_edits={path}: {e}; expected a JSON file")
    edits = spec.get("edits") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("why"), str) or not edits or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("file", "old", "new")) for e in edits):
        common.refuse(f"--reference_edits={path}: expected {{\"why\": text, \"edits\": [{{\"file\", \"old\", "
                      "\"new\"}, ...]}")
    return spec


def edited_sources(reference_dir, spec):
    """{file name: edited text} for ``spec``'s edits; refuses (before anything trains) an edit whose
    text is not found exactly once."""
    sources = {}
    for edit in spec["edits"]:
        name = edit["file"]
        if name not in sources:
            source = os.path.join(reference_dir, name)
            if os.path.dirname(name) or not os.path.isfile(source):
                common.refuse(f"--reference_edits: {name!r} is not a file of {reference_dir}")
            with open(source) as f:
                sources[name] = f.read()
        count = sources[name].count(edit["old"])
        if count != 1:
            common.refuse(f"--reference_edits: the text {edit['old']!r} occurs {count} times in {name}; "
                          "expected exactly once")
        sources[name] = sources[name].replace(edit["old"], edit["new"])
    return sources


def write_edited_copy(reference_dir, sources, destination):
    """The reference's Python files in ``destination`` with ``sources`` written over them (staged,
    then renamed: a killed invocation never leaves a half-edited copy to run)."""
    staging = destination + ".partial"
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(reference_dir, staging, ignore=lambda d, names: [n for n in names if not n.endswith(".py")])
    for name, text in sources.items():
        with open(os.path.join(staging, name), "w") as f:
            f.write(text)
    shutil.rmtree(destination, ignore_errors=True)
    os.rename(staging, destination)
    return os.path.join(destination, "byot_train.py")


def reference_name(path):
    """tfkd variable path -> the reference's state_dict key (stem, stages, BatchNorm statistics,
    final classifier), or None for the exits, which the baseline does not train."""
    parts = path.split("/")
    # Keras numbers the names of later models in a process: multi_exit_res_net_1, ...
    roots = [i for i, part in enumerate(parts) if re.fullmatch(r"multi_exit_res_net(_\d+)?", part)]
    if not roots:
        return None
    layer, leaf = parts[roots[0] + 1:-1], parts[-1]
    if not layer or layer[0].startswith("exit_"):
        return None
    bn_leaf = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    if layer[0] == "classifier":
        return {"kernel": "fc.weight", "bias": "fc.bias"}[leaf]
    if layer[0] == "stem_conv":
        return "stem.0.weight"
    if layer[0] == "stem_bn":
        return f"stem.1.{bn_leaf[leaf]}"
    stage, block = layer[0].split("_")  # e.g. stage2_block0
    prefix = f"stages.{int(stage[len('stage'):]) - 1}.{int(block[len('block'):])}"
    sub = {"conv1": "conv1", "conv2": "conv2", "bn1": "bn1", "bn2": "bn2", "shortcut_conv": "shortcut.0",
           "shortcut_bn": "shortcut.1"}[layer[1]]
    return f"{prefix}.{sub}.{'weight' if leaf == 'kernel' else bn_leaf[leaf]}"


def to_torch_layout(value):
    """Conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in); vectors unchanged."""
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value
