#!/usr/bin/env bash
# Set up, lint, and run the tests (the README's second command; CI runs exactly this).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m ruff check .
bash scripts/check_protobuf_versions.sh
python3 -m pytest -q
