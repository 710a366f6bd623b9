#!/usr/bin/env bash
# One command per benchmark, from a fresh clone: makes the virtualenv, installs
# the project with its bench extra (the peer queues) and arq (apart, with
# --no-deps: every arq release pins redis<6, which would downgrade redis-py),
# checks for redis-server and PostgreSQL as the tests do, then runs
# `python -m bench.<name>` with any further arguments, e.g.
#   scripts/bench.sh pipeline
#   scripts/bench.sh throughput --peers huey,dramatiq --rounds 1
# Names: pipeline, throughput, ratelimit, recovery, scale (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-}
case "$name" in
  pipeline|throughput|ratelimit|recovery|scale) shift ;;
  *) echo "usage: scripts/bench.sh pipeline|throughput|ratelimit|recovery|scale [options]" >&2; exit 2 ;;
esac
source scripts/setup.sh
ensure_python_env bench
if [ ! -f .venv/.installed-arq ]; then
  echo "== installing arq (--no-deps)"
  .venv/bin/python -m pip install -q --no-deps arq==0.28.0
  touch .venv/.installed-arq
fi
ensure_redis_server
ensure_postgres
exec .venv/bin/python -m "bench.$name" "$@"
