#!/usr/bin/env bash
# Install caffe2torch and its test tools into the current Python. torch is pinned to the CPU build these
# machines carry: an unpinned torch would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[test,cluster]"
