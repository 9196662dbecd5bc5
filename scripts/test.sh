#!/usr/bin/env bash
# Install the project with its test dependencies into .venv, then lint, type-check and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
if command -v npm >/dev/null 2>&1 && [ -f tests/fhir_server/package-lock.json ]; then
  npm ci --silent --no-audit --no-fund --prefix tests/fhir_server
fi
.venv/bin/ruff check .
.venv/bin/mypy
# pytest exits 5 when it collects nothing: that is a failure here too.
.venv/bin/pytest "$@"
