#!/usr/bin/env bash
# Runs the whole test suite on this machine: makes the virtualenv, installs the
# project with its dev extra, checks for redis-server and PostgreSQL (installing
# them with apt when run as root and they are missing; likewise Chromium for the
# dashboard's browser tests), then runs pytest. The
# tests start and stop their own throw-away servers on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_python_env dev
ensure_redis_server
ensure_postgres
ensure_chromium
exec .venv/bin/python -m pytest "$@"
