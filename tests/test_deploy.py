"""deploy/: the compose file, systemd units, Dockerfile, lock, AWS policy and template, parsed for real.

`docker compose config` is not available here, so the compose file is loaded as YAML and checked at the
level of its schema; systemd units are read with configparser and, where this machine's
`systemd-analyze verify` works, verified by systemd itself.
"""

from __future__ import annotations

import ast
import configparser
import json
import re
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dispatcher.core.settings import Settings

from .services import free_port, missing

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = {"worker": "worker", "events": "events", "dashboard": "dashboard"}
SECRETISH = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|ACCESS_KEY|PRIVATE", re.IGNORECASE)


# compose.yaml ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command", [])
    return value.split() if isinstance(value, str) else [str(v) for v in value]


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"redis", "postgres", "worker", "events", "dashboard"}
    assert set(compose["volumes"]) >= {"redis-data", "postgres-data"}


def test_redis_persists_with_aof_and_never_evicts_queued_work(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    args = command(redis)
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_every_service_has_a_healthcheck_and_a_restart_policy(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        assert service.get("restart") in ("always", "unless-stopped"), name


def test_dispatcher_services_run_the_image_entrypoint_with_the_right_command(compose: dict[str, Any]) -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["dispatcher"]' in dockerfile
    assert "dispatcher-healthcheck" in dockerfile
    services = compose["services"]
    for name, verb in UNITS.items():
        assert command(services[name])[0] == verb, name
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert services[name]["env_file"] == ["dispatcher.env"]
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions == {"redis": "service_healthy", "postgres": "service_healthy"}
        assert services[name]["environment"]["DISPATCHER_REDIS_URL"].startswith("redis://redis:")
        assert services[name]["healthcheck"]["test"][1] == "dispatcher-healthcheck"


def test_workers_are_many_and_drain_before_they_are_killed(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    replicas = str(worker["deploy"]["replicas"])
    default = re.fullmatch(r"\$\{DISPATCHER_WORKERS:-(\d+)\}", replicas)
    assert default is not None and int(default.group(1)) >= 2
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    # The pool waits up to 60 s for in-flight sends after SIGTERM; compose must not kill it sooner.
    assert grace is not None and int(grace.group(1)) > 60
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"


def test_no_secret_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        items = environment.items() if isinstance(environment, dict) else (e.partition("=")[::2] for e in environment)
        for key, value in items:
            value = str(value)
            if SECRETISH.search(key):
                assert key.endswith("_FILE") and value.startswith("/run/secrets/"), f"{name}: {key} inline"
            assert not re.search(r"://[^/@\s]*:[^/@\s]+@", value), f"{name}: credentials in {key}"
    assert all("file" in s for s in compose["secrets"].values())
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert "dispatcher.env" in ignored and "secrets/" in ignored


def test_the_dashboard_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_dispatcher_containers_are_locked_down(compose: dict[str, Any]) -> None:
    for name in UNITS:
        service = compose["services"][name]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]


# Dockerfile and lock -----------------------------------------------------------------------------


def test_dockerfile_is_slim_non_root_and_installs_the_lock() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert bases and all(b.startswith("python:3.11-slim") for b in bases)
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs and all("-c requirements.lock" in line for line in installs)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :].count("!requirements.lock") == 1


def lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), f"not an exact pin: {line}"
        pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_every_dependency_within_its_declared_range() -> None:
    import tomllib

    pins = lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for spec in declared:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock (run deploy/make-lock.sh)"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {spec}"
    assert "dispatcher" not in pins


def runtime_and_test_only() -> tuple[set[str], set[str]]:
    """Distribution names the package needs at run time, and those only its test extra brings."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    test = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["test"]}
    return runtime, test - runtime


def test_the_image_installs_the_runtime_dependencies_only() -> None:
    # Given the Dockerfile's pip commands
    text = (DEPLOY / "Dockerfile").read_text()
    installs = [line for line in text.replace("\\\n", " ").splitlines() if "pip install" in line]
    # Then they install the project's `dependencies` list and the project itself, never an extra
    assert installs
    assert "['project']['dependencies']" in text
    assert all("[test]" not in line and ".[" not in line and "optional-dependencies" not in line for line in installs)


def test_nothing_the_image_runs_needs_a_test_only_package() -> None:
    runtime, test_only = runtime_and_test_only()
    # Given what goes into the image or onto a host: the health check script, compose file, units, env example
    runtime_files = [
        DEPLOY / "Dockerfile",
        DEPLOY / "healthcheck.py",
        DEPLOY / "compose.yaml",
        DEPLOY / "dispatcher.env.example",
        *sorted((DEPLOY / "systemd").glob("*.service")),
    ]
    # Then none names a test-only package or the test extra
    for path in runtime_files:
        text = path.read_text(encoding="utf-8").lower()
        assert "[test]" not in text, path.name
        for name in test_only:
            assert not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), f"{path.name} names {name}"
    # and every module the health check imports is the standard library, dispatcher, or a runtime dependency
    tree = ast.parse((DEPLOY / "healthcheck.py").read_text(encoding="utf-8"))
    modules = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    modules |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    owners = packages_distributions()
    for module in sorted(modules - set(sys.stdlib_module_names) - {"__future__", "dispatcher"}):
        distributions = {canonicalize_name(d) for d in owners.get(module, [])}
        assert distributions & runtime, f"healthcheck.py imports {module}, which no runtime dependency provides"


# systemd units -----------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    # systemd repeats keys (SystemCallFilter=); a strict parser would refuse that.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "systemd" / f"dispatcher-{name}.service", encoding="utf-8")
    return parser


@pytest.mark.parametrize("name", list(UNITS))
def test_systemd_unit_restarts_runs_as_a_user_and_reads_the_env_file(name: str) -> None:
    parsed = unit(name)
    service = parsed["Service"]
    assert service["Restart"] == "always"
    assert service["User"] not in ("", "root", "0")
    assert service["EnvironmentFile"] == "/etc/dispatcher/dispatcher.env"
    executable, verb, *_ = service["ExecStart"].split()
    assert executable == "/opt/dispatcher/bin/dispatcher" and verb == UNITS[name]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "KillSignal": "SIGTERM",
    }.items():
        assert service[key] == value, f"{name}: {key}"
    assert parsed["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in parsed["Unit"]["After"]


def test_the_worker_unit_waits_for_in_flight_sends() -> None:
    assert int(unit("worker")["Service"]["TimeoutStopSec"]) > 60


def systemd_analyze() -> str:
    # scripts/test installs it (Debian package `systemd`) where it may; under CI=true its absence fails.
    binary = shutil.which("systemd-analyze")
    if binary is None:
        missing("systemd-analyze", "not installed on this machine (Debian package: systemd)")
    assert binary is not None
    try:
        probe = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing("systemd-analyze", f"does not run here: {type(exc).__name__}")
        raise
    if probe.returncode != 0:
        missing("systemd-analyze", f"does not run here: {probe.stderr.strip()[:200]}")
    return binary


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path, dispatcher_cmd: list[str]) -> None:
    binary = systemd_analyze()
    # verify checks that ExecStart's program exists: point it at this checkout's installed command.
    exe = Path(dispatcher_cmd[0])
    if not exe.is_file():
        missing("the dispatcher console script", "nothing to stand in for /opt/dispatcher/bin/dispatcher")
    paths = []
    for name in UNITS:
        text = (DEPLOY / "systemd" / f"dispatcher-{name}.service").read_text()
        path = tmp_path / f"dispatcher-{name}.service"
        path.write_text(text.replace("/opt/dispatcher/bin/dispatcher", str(exe)))
        paths.append(str(path))
    result = subprocess.run([binary, "verify", *paths], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    output = result.stdout + result.stderr
    if result.returncode != 0 and "Failed to" in output and "dispatcher-" not in output:
        missing("systemd-analyze verify", f"cannot run here: {output.strip()[:200]}")
    assert result.returncode == 0, output
    # verify only warns about unknown keys and bad values; here any warning about our units is a failure.
    assert "dispatcher-" not in output, output


# AWS ---------------------------------------------------------------------------------------------


class CloudFormationLoader(yaml.SafeLoader):
    """Reads CloudFormation's short-form tags (!Ref, !Sub, !GetAtt) as their long forms."""


def _intrinsic(loader: CloudFormationLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    text = (DEPLOY / "aws" / "dispatcher.cfn.yaml").read_text(encoding="utf-8")
    return yaml.load(text, Loader=CloudFormationLoader)  # a SafeLoader subclass


def actions(statement: dict[str, Any]) -> list[str]:
    value = statement["Action"]
    return [value] if isinstance(value, str) else list(value)


def iam_policy() -> dict[str, Any]:
    return json.loads((DEPLOY / "aws" / "iam-policy.json").read_text())


def test_iam_policy_is_least_privilege() -> None:
    policy = iam_policy()
    assert policy["Version"] == "2012-10-17"
    granted = set()
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement
        for action in actions(statement):
            assert "*" not in action, f"wildcard action {action}"
            granted.add(action)
        assert ("Resource" in statement) != ("NotResource" in statement)
        if statement.get("Resource") == "*":
            assert actions(statement) == ["ses:GetAccount"]  # account-level read: no narrower resource exists
    assert granted == {
        "ses:SendEmail",
        "ses:SendRawEmail",
        "ses:GetEmailIdentity",
        "ses:GetAccount",
        "sns:Publish",
        "sms-voice:SendTextMessage",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    }
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    send = by_sid["SendEmailAsTheAnnouncedSenderOnly"]
    assert send["Condition"]["StringEquals"]["ses:FromAddress"] == "regionpay_compensation_ml@giftpad.jp"
    assert all(":identity/" in r or ":configuration-set/" in r for r in send["Resource"])
    assert by_sid["SmsToPhoneNumbersNotTopics"]["NotResource"] == "arn:aws:sns:*:*:*"
    assert by_sid["ReadFeedbackQueue"]["Resource"].endswith(":dispatcher-feedback")


def test_the_template_grants_exactly_what_the_policy_file_does(template: dict[str, Any]) -> None:
    in_template = template["Resources"]["DispatcherPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert {s["Sid"]: sorted(actions(s)) for s in in_template} == {
        s["Sid"]: sorted(actions(s)) for s in iam_policy()["Statement"]
    }


def test_the_template_wires_ses_and_sms_events_to_the_feedback_queue(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    types = {name: r["Type"] for name, r in resources.items()}
    assert types["EmailIdentity"] == "AWS::SES::EmailIdentity"
    assert resources["EmailIdentity"]["Properties"]["DkimAttributes"]["SigningEnabled"] is True
    email_events = resources["EmailEvents"]["Properties"]["EventDestination"]
    assert set(email_events["MatchingEventTypes"]) >= {"send", "delivery", "bounce", "complaint", "reject"}
    assert email_events["SnsDestination"]["TopicARN"] == {"Ref": "FeedbackTopic"}
    sms = resources["SmsConfigurationSetResource"]
    assert sms["Type"] == "AWS::SMSVOICE::ConfigurationSet"
    assert sms["Properties"]["EventDestinations"][0]["SnsDestination"]["TopicArn"] == {"Ref": "FeedbackTopic"}
    subscription = resources["FeedbackSubscription"]["Properties"]
    assert subscription["Protocol"] == "sqs"
    assert subscription["Endpoint"] == {"Fn::GetAtt": "FeedbackQueue.Arn"}
    assert "RedrivePolicy" in resources["FeedbackQueue"]["Properties"]


def test_cfn_lint_accepts_the_template() -> None:
    try:
        from cfnlint import api
    except ImportError:
        missing("cfn-lint", "not installed (it is in the test extra: pip install -e '.[test]')")
        raise
    matches = api.lint_file(DEPLOY / "aws" / "dispatcher.cfn.yaml", config=api.ManualArgs(regions=["ap-northeast-1"]))
    assert [str(m) for m in matches] == []


# Environment file and health checks --------------------------------------------------------------


def test_the_env_example_names_only_real_settings_and_holds_no_secret() -> None:
    fields = {f"DISPATCHER_{name.upper()}" for name in Settings.model_fields}
    seen = set()
    for line in (DEPLOY / "dispatcher.env.example").read_text().splitlines():
        match = re.match(r"^#?\s*(DISPATCHER_[A-Z0-9_]+)=(.*)$", line)
        if not match:
            continue
        key, value = match.groups()
        assert key in fields, f"{key} is not a setting"
        seen.add(key)
        if SECRETISH.search(key) or ("://" in value and "@" in value):
            assert "CHANGE-ME" in value or value == "", f"{key} looks like a real secret"
    assert {
        "DISPATCHER_DATABASE_URL",
        "DISPATCHER_SMS_GATEWAY_TOKEN",
        "DISPATCHER_SMS_GATEWAY_SECRET",
        "DISPATCHER_FEEDBACK_QUEUE_URL",
        "DISPATCHER_SNS_TOPIC_ARNS",
        "DISPATCHER_DASHBOARD_TOKEN",
        "DISPATCHER_SMTP_URL",
    } <= seen


@pytest.fixture
def dashboard_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The real dashboard (dispatcher's app under uvicorn) over a SQLite ledger, on a free loopback port."""
    from dispatcher.core.settings import load_settings
    from dispatcher.dashboard import create_app
    from dispatcher.runtime import Runtime

    from .dashboard_support import serving

    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("DISPATCHER_DASHBOARD_TOKEN", secrets.token_hex(24))
    rt = Runtime(load_settings())
    with serving(create_app(rt, None)) as url:
        yield url


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), *args], capture_output=True, text=True, timeout=30
    )


@pytest.fixture(scope="module")
def health_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dispatcher_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_http_asks_the_real_dashboard(
    dashboard_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the dashboard's own health route, which answers 200 only while its ledger answers
    # When the container health check asks it, and asks a route that needs credentials
    healthy = healthcheck("http", f"{dashboard_url}/healthz")
    protected = healthcheck("http", f"{dashboard_url}/api/campaigns")
    # Then the first is healthy; the second (401) is not, and says so without the URL
    assert healthy.returncode == 0, healthy.stderr
    assert protected.returncode == 1 and "unhealthy" in protected.stderr
    assert dashboard_url not in protected.stderr
    assert healthcheck("nonsense").returncode == 2


def test_healthcheck_http_fails_when_the_dashboard_cannot_reach_its_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatcher.core.settings import load_settings
    from dispatcher.dashboard import create_app
    from dispatcher.runtime import Runtime

    from .dashboard_support import serving

    # Given a real dashboard whose PostgreSQL ledger is down (nothing listens on its port)
    monkeypatch.setenv(
        "DISPATCHER_DATABASE_URL",
        f"postgresql+psycopg://dispatcher@127.0.0.1:{free_port()}/dispatcher?connect_timeout=2",
    )
    monkeypatch.setenv("DISPATCHER_DASHBOARD_TOKEN", secrets.token_hex(24))
    with serving(create_app(Runtime(load_settings()), None)) as url:
        # When the health check asks its health route (which answers 503)
        result = healthcheck("http", f"{url}/healthz")
    # Then the container is reported unhealthy
    assert result.returncode == 1 and "unhealthy" in result.stderr


def test_healthcheck_finds_the_worker_pool_process(health_module: Any, tmp_path: Path) -> None:
    # No process table at all: no pool. (The machine's own /proc may hold other test runs' pools.)
    assert health_module.pool_running(tmp_path) is False
    pool = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "-m", "dramatiq", "dispatcher.sending.actors"]
    )
    try:
        # Until the child has exec'd, its /proc cmdline is still pytest's: wait for the exec, not a fixed time.
        for _ in range(200):
            if health_module.pool_running():
                break
            time.sleep(0.05)
        assert health_module.pool_running() is True
    finally:
        pool.kill()
        pool.wait()


def test_healthcheck_asks_redis(health_module: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from .services import free_port

    assert health_module.redis_answers() is True
    monkeypatch.setenv("DISPATCHER_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert health_module.redis_answers() is False
    monkeypatch.delenv("DISPATCHER_REDIS_URL")
    assert health_module.redis_answers() is False


def test_healthcheck_asks_the_ledger(health_module: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from .services import free_port

    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    assert health_module.ledger_answers() is True
    monkeypatch.setenv(
        "DISPATCHER_DATABASE_URL",
        f"postgresql+psycopg://dispatcher@127.0.0.1:{free_port()}/dispatcher?connect_timeout=2",
    )
    assert health_module.ledger_answers() is False
