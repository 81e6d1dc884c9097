#!/usr/bin/env bash
# Install caffe2torch with its test tools and optional extras into the current Python. torch is pinned to the
# CPU build these machines carry: an unpinned torch would pull several GB of CUDA wheels. CI installs and tests
# every optional extra listed in EXTRAS.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="test,openvino"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" -e ".[${EXTRAS}]"
