#!/usr/bin/env bash
# Install the adapter into .venv and run it on its embedded defaults: SQLite store under ./var,
# MLLP on 127.0.0.1:2575, HTTP on 127.0.0.1:8080, and a local OnCall sandbox on 127.0.0.1:8900.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/oncall-adapter serve --sandbox "$@"
