#!/usr/bin/env bash
# Installs everything tfkd needs on a fresh Debian/Ubuntu machine: the offline Fashion-MNIST files
# (Debian package) and the Python package with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get install -y dataset-fashion-mnist || { $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; }
fi
PYTHON=${PYTHON:-python3}
# TFKD_TF_EXTRA=gpu installs tensorflow[and-cuda] instead of tensorflow-cpu.
# constraints.txt: the exact versions CI passes on (README, "Pinned versions").
"$PYTHON" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[${TFKD_TF_EXTRA:-cpu},test]"
