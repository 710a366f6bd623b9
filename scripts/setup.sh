# Shared set-up steps for scripts/test.sh and scripts/demo.sh (sourced, not run).

PYTHON=${PYTHON:-python3}

ensure_python_env() {
  # $1: extras to install, e.g. "dev" (empty for the runtime only)
  local extras=${1:-}
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PYTHON" -m venv .venv
  fi
  local stamp=.venv/.installed-${extras:-runtime}
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== installing campaign-engine${extras:+[$extras]} into .venv"
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
}

_apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "!! $1 is missing and this is not root: install it with your package manager ($*)" >&2
    return 1
  fi
  if [ -z "${_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null
    _APT_UPDATED=1
  fi
  echo "== apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 || _apt_install redis-server
}

ensure_postgres() {
  for d in ${PG_BIN_DIR:-} /usr/lib/postgresql/15/bin /usr/lib/postgresql/16/bin /usr/lib/postgresql/17/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      return 0
    fi
  done
  _apt_install postgresql-15 || _apt_install postgresql
}

ensure_chromium() {
  # The dashboard's browser tests drive the system Chromium through Playwright (never its own download).
  [ -x "${CHROMIUM_PATH:-/usr/bin/chromium}" ] || _apt_install chromium
}
