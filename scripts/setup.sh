#!/usr/bin/env bash
# Install caffe2torch with its test tools and optional extras into the current Python. torch is pinned to the
# CPU build these machines carry: an unpinned torch would pull several GB of CUDA wheels. CI installs and tests
# every optional extra listed in EXTRAS.
# The first run downloads everything and compiles pydensecrf2 (DeepLab's dense CRF) and caffe2torch's native
# CRF from source, which needs a C++17 compiler: 1-2 minutes on the project's 2-core machine (a fresh venv: 71 s; the compile alone: 32-93 s,
# with the machine idle or busy), longer where torch's CPU wheel (about 200 MB) must be downloaded; later runs
# take about 10 s. pip's lines show what is installed ("Requirement already satisfied" lines are left out).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
python=$(command -v python3)
EXTRAS="test,openvino,cluster"
if ! python3 -c "import pydensecrf.densecrf" 2>/dev/null; then
  echo "setup: pydensecrf2 (DeepLab's dense CRF) will be compiled from source: about half a minute to a few minutes"
fi
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
  echo "setup: warning: no C++ compiler found (c++, g++ or clang++); pydensecrf2 and caffe2torch's native CRF" \
       "need one to build (Debian/Ubuntu: apt-get install g++; macOS: xcode-select --install)" >&2
fi
echo "setup: installing torch (CPU) and caffe2torch with its dependencies for $python"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --disable-pip-version-check "torch==2.13.0" -e ".[${EXTRAS}]" \
  | awk '!/^Requirement already satisfied/ { print; fflush() }'
python3 -c "import caffe2torch._densecrf" 2>/dev/null \
    || echo "setup: caffe2torch's native dense CRF was not built (no C++ compiler?); the CRF will use pydensecrf" >&2
echo "setup: done in $((SECONDS - started)) s"
