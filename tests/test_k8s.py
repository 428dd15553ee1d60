"""deploy/k8s: the kustomization renders, its objects validate, and its generated parts match their sources."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from app.cli import API_GRACEFUL_SHUTDOWN_SECONDS
from app.domain.processing import generation_time_limit_seconds
from app.k8s import DASHBOARDS_FILE, PROMETHEUS_RULE_FILE, WORKER_FILE, build_manifests, worker_grace_period_seconds
from app.queue import JOB_TIMEOUT_SECONDS
from app.settings import Settings
from dashboards import build_dashboards, render
from tests.support.alerts import ROOT, require_tool

pytestmark = pytest.mark.tools

K8S = ROOT / "deploy" / "k8s"
CRDS = {"ScaledObject", "ServiceMonitor", "PodMonitor", "PrometheusRule"}
JOBS = {"posegen-api", "posegen-worker", "posegen-exporter"}  # the job names alerts/rules select on
KUBERNETES_VERSION = "1.30.0"


@cache
def rendered() -> tuple[dict[str, Any], ...]:
    kubectl = require_tool("kubectl", "kubectl")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered() if doc["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    return next(doc for doc in objects(kind) if doc["metadata"]["name"] == name)


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def test_kustomization_renders_every_piece() -> None:
    kinds = sorted(doc["kind"] for doc in rendered())
    assert kinds == sorted(["Namespace", "ConfigMap", "ConfigMap", "Secret", "Secret", "Secret", "Secret", "Secret",
                            "Secret", "Secret", "NetworkPolicy", "NetworkPolicy", "Job",
                            "PodDisruptionBudget", "PodDisruptionBudget", "PodDisruptionBudget",
                            "Deployment", "Deployment", "Deployment", "Deployment", "Service", "Service",
                            "Service", "HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor", "ServiceMonitor",
                            "ServiceMonitor",
                            "PodMonitor", "PrometheusRule"])
    assert {doc["metadata"].get("namespace") for doc in rendered() if doc["kind"] != "Namespace"} == {"posegen"}
    assert {s["metadata"]["name"] for s in objects("Secret")} >= {"posegen-jwt", "posegen-flux", "posegen-supabase"}


def test_core_objects_validate_against_the_kubernetes_schemas() -> None:
    core = [doc for doc in rendered() if doc["kind"] not in CRDS]
    assert len(core) == 24
    errors = []
    for doc in core:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


OBSERVED = {"posegen-api", "posegen-worker"}  # the processes that report to Sentry and Datadog


def _env_refs(container: dict[str, Any]) -> set[str]:
    return {ref.get("secretRef", ref.get("configMapRef"))["name"] for ref in container["envFrom"]}


def test_every_process_has_probes_requests_and_its_settings() -> None:
    for deployment in objects("Deployment"):
        name = deployment["metadata"]["name"]
        for container in containers(deployment):
            assert {"livenessProbe", "readinessProbe"} <= container.keys(), name
            assert container["resources"]["requests"].keys() >= {"cpu", "memory"}
            refs = _env_refs(container)
            if name == "posegen-canary":
                # A client of the API: its settings and the key to mint tokens, none of the stores' secrets.
                assert refs == {"posegen-config", "posegen-jwt"}
                continue
            assert refs == {"posegen-config", "posegen-database", "posegen-redis", "posegen-jwt",
                            "posegen-flux", "posegen-supabase"} | (
                {"posegen-observability"} if name in OBSERVED else set()), name
    api = containers(one("Deployment", "posegen-api"))[0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/api/apps/pose-generator/health"
    assert api["livenessProbe"]["httpGet"]["path"] == "/api/apps/pose-generator/health/live"
    worker = one("Deployment", "posegen-worker")
    assert containers(worker)[0]["args"][:3] == ["worker", "--processes", "4"]
    hpa = one("HorizontalPodAutoscaler", "posegen-api")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "posegen-api"


def test_liveness_never_depends_on_postgresql_or_redis() -> None:
    """A dependency outage must not restart every pod: liveness reads endpoints that answer without them (the
    API's /health/live; the worker's and exporter's /metrics, which report a source that is down rather than
    fail, tests/test_lifecycle.py and tests/test_exporter.py), while the API's readiness is /health."""
    live = {d["metadata"]["name"]: containers(d)[0]["livenessProbe"]["httpGet"]["path"] for d in objects("Deployment")}
    assert live == {"posegen-api": "/api/apps/pose-generator/health/live", "posegen-worker": "/metrics",
                    "posegen-exporter": "/metrics", "posegen-canary": "/metrics"}
    for deployment in objects("Deployment"):
        probe = containers(deployment)[0]["livenessProbe"]
        # Several misses in a row, each allowed its timeout, before a restart.
        assert probe["failureThreshold"] >= 3 and probe["timeoutSeconds"] >= 3, deployment["metadata"]["name"]


def _pod_spec(name: str) -> dict[str, Any]:
    return one("Deployment", name)["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def test_the_workers_grace_period_covers_the_longest_attempt_its_settings_allow() -> None:
    """A scale-down or rollout must not SIGKILL an attempt in its last round (the reaper would re-run it and pay
    FLUX again): the grace period is at least the attempt limit the exporter reports
    (pose_generation_time_limit_seconds) under the ConfigMap's settings, and RQ's job timeout is no shorter."""
    config = one("ConfigMap", "posegen-config")["data"]
    limit = generation_time_limit_seconds(*Settings.attempt_shape(config))
    assert limit == 780  # 10 poses at concurrency 8: two rounds of (300 + 60) s, plus 60 s
    grace = _pod_spec("posegen-worker")["terminationGracePeriodSeconds"]
    assert grace == worker_grace_period_seconds(config) and limit < grace <= limit + 60
    assert JOB_TIMEOUT_SECONDS >= limit
    # Cluster Autoscaler caps a scale-down's grace at 600 s (--max-graceful-termination-sec), below the limit:
    # the worker's pods keep it from scaling their node down under them.
    annotations = one("Deployment", "posegen-worker")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    # Rendered, not hand-kept: other settings give another grace period.
    assert worker_grace_period_seconds({**config, "POSEGEN_POSE_CONCURRENCY": "4"}) == 3 * 360 + 60 + 30
    assert worker_grace_period_seconds({**config, "FLUX_DEADLINE_SECONDS": "120"}) == 2 * 180 + 60 + 30


def test_the_api_drains_within_its_grace_period() -> None:
    """SIGTERM: POSEGEN_SHUTDOWN_DELAY_SECONDS of serving on (tests/test_lifecycle.py drives it), then up to
    API_GRACEFUL_SHUTDOWN_SECONDS for in-flight requests, all before the kubelet's SIGKILL."""
    config = one("ConfigMap", "posegen-config")["data"]
    delay = float(config["POSEGEN_SHUTDOWN_DELAY_SECONDS"])
    assert Settings.from_env({"POSEGEN_SHUTDOWN_DELAY_SECONDS": config["POSEGEN_SHUTDOWN_DELAY_SECONDS"]}
                             ).shutdown_delay_seconds == delay
    api = _pod_spec("posegen-api")
    # The endpoint removal takes seconds to reach every proxy; readiness fails within periodSeconds x threshold.
    readiness = api["containers"][0]["readinessProbe"]
    assert delay >= 10 and delay >= readiness["periodSeconds"] * readiness["failureThreshold"]
    assert api["terminationGracePeriodSeconds"] >= delay + API_GRACEFUL_SHUTDOWN_SECONDS + 5
    # One server process per pod: the delay applies (posegen api refuses it with --workers N).
    assert "--workers" not in api["containers"][0]["args"]
    assert "lifecycle" not in api["containers"][0], "the delay is the process's own: no preStop on top of it"


def test_disruption_budgets_cover_every_deployment() -> None:
    budgets = {b["metadata"]["name"]: b["spec"] for b in objects("PodDisruptionBudget")}
    # The canary is one pod doing no user's work: evicting it costs a run, which its alert tolerates.
    assert set(budgets) == {d["metadata"]["name"] for d in objects("Deployment")} - {"posegen-canary"}
    for name, spec in budgets.items():
        labels = one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        others = [d["metadata"]["name"] for d in objects("Deployment") if d["metadata"]["name"] != name
                  and spec["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert not others, f"{name}'s budget also selects {others}"
    assert budgets["posegen-api"]["maxUnavailable"] == 1
    assert budgets["posegen-api"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # an outage must not block drains
    assert budgets["posegen-worker"]["maxUnavailable"] == 1
    assert budgets["posegen-exporter"]["minAvailable"] == 1


def test_the_exporter_runs_two_replicas_apart_and_rolls_one_at_a_time() -> None:
    exporter = one("Deployment", "posegen-exporter")["spec"]
    assert exporter["replicas"] == 2
    assert exporter["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    (term,) = exporter["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == exporter["selector"]["matchLabels"]


def test_sentry_and_datadog_settings_come_from_a_secret() -> None:
    secret = one("Secret", "posegen-observability")["stringData"]
    assert set(secret) == {"SENTRY_DSN", "SENTRY_TRACES_SAMPLE_RATE", "DD_TRACE_ENABLED"}
    # Every name is one the settings read, and the shipped (off) values are accepted as they are.
    assert set(secret) <= set(Settings.variables())
    off = Settings.from_env(secret)
    assert off.sentry_dsn == "" and off.trace_enabled is False
    assert not {name for name in one("ConfigMap", "posegen-config")["data"] if name.startswith(("SENTRY_", "DD_"))}
    for name in OBSERVED:
        (container,) = containers(one("Deployment", name))
        assert "posegen-observability" in _env_refs(container)
        agent = {e["name"]: e for e in container["env"]}["DD_AGENT_HOST"]
        assert agent["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"


def test_keda_scales_the_workers_on_the_exporters_queue_depth() -> None:
    scaled = one("ScaledObject", "posegen-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert one("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    # Two exporter replicas report the same depth: counted once, and still answered while one is down.
    assert trigger["metadata"]["query"] == 'sum(max without (instance, pod) (pose_queue_depth{job="posegen-exporter"}))'
    assert float(trigger["metadata"]["threshold"]) > 0 and trigger["metadata"]["serverAddress"].startswith("http")


def _pod_labels_and_ports() -> list[tuple[dict[str, str], dict[str, int]]]:
    return [(d["spec"]["template"]["metadata"]["labels"],
             {p["name"]: p["containerPort"] for c in containers(d) for p in c.get("ports", [])})
            for d in objects("Deployment")]


def test_every_scrape_target_has_a_monitor_with_the_rules_job_name() -> None:
    scraped: dict[str, str] = {}
    for monitor in objects("ServiceMonitor"):
        spec = monitor["spec"]
        service = next(s for s in objects("Service")
                       if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items())
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        scraped[service["metadata"]["labels"][spec["jobLabel"]]] = endpoint["path"]
    for monitor in objects("PodMonitor"):
        spec = monitor["spec"]
        labels, ports = next((labels, ports) for labels, ports in _pod_labels_and_ports()
                             if spec["selector"]["matchLabels"].items() <= labels.items())
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["port"] in ports
        scraped[labels[spec["jobLabel"]]] = endpoint["path"]
    assert scraped == {"posegen-api": "/api/apps/pose-generator/metrics-prometheus",
                       "posegen-exporter": "/metrics", "posegen-worker": "/metrics", "posegen-canary": "/metrics"}
    # The same job names the compose stack's Prometheus uses, so the rules read the same series in both.
    compose = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert JOBS <= {job["job_name"] for job in compose["scrape_configs"]}


def test_prometheus_rule_holds_exactly_the_rules_of_alerts() -> None:
    (rule,) = objects("PrometheusRule")
    expected = [group for path in sorted((ROOT / "alerts" / "rules").glob("*.yml"))
                for group in yaml.safe_load(path.read_text())["groups"]]
    assert rule["spec"]["groups"] == expected
    assert sum(len(g["rules"]) for g in rule["spec"]["groups"]) == sum(len(g["rules"]) for g in expected) > 0


def test_prometheus_rule_is_valid_for_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    (rule,) = objects("PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_dashboards_configmap_is_the_built_dashboards_for_grafanas_sidecar() -> None:
    configmap = one("ConfigMap", "posegen-grafana-dashboards")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {name: render(board) for name, board in build_dashboards().items()}


def test_generated_manifests_are_not_stale() -> None:
    built = build_manifests(ROOT / "alerts" / "rules", K8S)
    assert WORKER_FILE in built
    for name, text in built.items():
        assert (K8S / name).read_text(encoding="utf-8") == text, f"deploy/k8s/{name} is stale: run `posegen k8s build`"
    assert {PROMETHEUS_RULE_FILE, DASHBOARDS_FILE} <= {p.name for p in K8S.iterdir()}


APP_PODS = {"posegen-api", "posegen-worker", "posegen-exporter", "posegen-migrate"}


def test_only_the_applications_pods_reach_redis_and_postgresql_and_redis_needs_a_password() -> None:
    """Redis is a trust boundary (a job written into it is work for the workers): its URL, password included,
    comes from a Secret, and NetworkPolicies admit only the application's pods to Redis and PostgreSQL."""
    pods = {doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
            for doc in [*objects("Deployment"), *objects("Job")]}
    assert pods == APP_PODS | {"posegen-canary"}  # the canary reaches the API only
    policies = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: p for p in objects("NetworkPolicy")}
    assert set(policies) == {"redis", "postgresql"}
    for store, port in (("redis", 6379), ("postgresql", 5432)):
        policy = policies[store]["spec"]
        assert policy["policyTypes"] == ["Ingress"] and len(policy["ingress"]) == 1
        rule = policy["ingress"][0]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        [source] = rule["from"]
        assert set(source) == {"podSelector"}, "no namespace-wide or IP-block sources"
        [expression] = source["podSelector"]["matchExpressions"]
        assert expression["key"] == "app.kubernetes.io/name" and set(expression["values"]) == APP_PODS
    redis_url = one("Secret", "posegen-redis")["stringData"]["REDIS_URL"]
    assert redis_url.startswith("redis://:") and "@" in redis_url, "a password in the URL"
    assert "REDIS_URL" not in one("ConfigMap", "posegen-config")["data"]


def test_compose_runs_redis_with_a_required_password() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]
    assert redis["command"][:2] == ["redis-server", "--requirepass"]
    assert redis["command"][2].startswith("${REDIS_PASSWORD:?") and "ports" not in redis
    assert compose["services"]["api"]["environment"]["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")


def _user(url: str) -> str:
    """The user of a PostgreSQL URL, whose password may be a compose ``${VARIABLE:?message}``."""
    found = re.match(r"postgres(?:ql)?://([^:@/]+)[:@]", url)
    assert found, url
    return found[1]


def test_the_migrate_job_alone_connects_as_the_owner_and_the_pods_as_the_application_role() -> None:
    """The application's pods never hold the owner's credentials: those are in a Secret of their own, which only
    the migrate Job mounts; the pods' DATABASE_URL names the role the Job grants (POSEGEN_APP_DB_ROLE)."""
    (job,) = objects("Job")
    (migrate,) = containers(job)
    job_refs = {ref.get("secretRef", ref.get("configMapRef"))["name"] for ref in migrate["envFrom"]}
    assert "posegen-database-owner" in job_refs and "posegen-database" not in job_refs
    for deployment in objects("Deployment"):
        for container in containers(deployment):
            refs = {ref.get("secretRef", ref.get("configMapRef"))["name"] for ref in container["envFrom"]}
            assert "posegen-database-owner" not in refs, deployment["metadata"]["name"]
    app_url = one("Secret", "posegen-database")["stringData"]["DATABASE_URL"]
    owner_secret = one("Secret", "posegen-database-owner")["stringData"]
    assert set(owner_secret) == {"POSEGEN_MIGRATION_DATABASE_URL"}
    role = one("ConfigMap", "posegen-config")["data"]["POSEGEN_APP_DB_ROLE"]
    assert _user(app_url) == role != _user(owner_secret["POSEGEN_MIGRATION_DATABASE_URL"])
    assert urlsplit(app_url).path == urlsplit(owner_secret["POSEGEN_MIGRATION_DATABASE_URL"]).path


def test_compose_runs_the_processes_as_the_application_role_and_migrates_as_the_owner() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    services = compose["services"]
    owner = services["postgres"]["environment"]["POSTGRES_USER"]
    migrate = services["migrate"]["environment"]
    role = migrate["POSEGEN_APP_DB_ROLE"]
    assert _user(migrate["POSEGEN_MIGRATION_DATABASE_URL"]) == owner != role
    for name in ("api", "worker", "exporter"):
        environment = services[name]["environment"]
        assert _user(environment["DATABASE_URL"]) == role, name
        assert "POSEGEN_MIGRATION_DATABASE_URL" not in environment, name
    assert ":${POSEGEN_APP_DB_PASSWORD:?" in services["api"]["environment"]["DATABASE_URL"]
    # The role exists before migrate grants it: created by postgres-roles, with the script it mounts.
    roles = services["postgres-roles"]
    assert services["migrate"]["depends_on"] == {"postgres-roles": {"condition": "service_completed_successfully"}}
    assert roles["environment"]["POSEGEN_APP_DB_ROLE"] == role and roles["environment"]["PGUSER"] == owner
    (mount,) = roles["volumes"]
    script = mount.split(":")[0]
    assert roles["entrypoint"][-1] == mount.split(":")[1]
    assert (ROOT / "deploy" / script).is_file()
    assert "NOSUPERUSER NOCREATEDB NOCREATEROLE" in (ROOT / "deploy" / script).read_text()


def test_the_canary_runs_once_against_the_apis_service_and_starts_with_its_settings() -> None:
    """One canary pod, scraped as the job CanaryFailing selects, calling the API's Service on its port; with the
    manifest's environment (posegen-config, a JWT secret, its overrides) its settings load in production."""
    canary = one("Deployment", "posegen-canary")
    assert canary["spec"]["replicas"] == 1 and canary["spec"]["strategy"]["type"] == "Recreate"
    (container,) = containers(canary)
    assert container["args"][0] == "canary"
    env = {item["name"]: item["value"] for item in container["env"]}
    api_url = urlsplit(env["POSEGEN_API_URL"])
    service = one("Service", api_url.hostname)
    assert api_url.port in {port["port"] for port in service["spec"]["ports"]}
    config = one("ConfigMap", "posegen-config")["data"]
    settings = Settings.from_env({**config, "JWT_SECRET": "a-production-secret-of-at-least-32-bytes-0123", **env})
    assert settings.is_production and settings.ops_api_url == env["POSEGEN_API_URL"]
    assert str(settings.canary_metrics_port) == container["args"][container["args"].index("--metrics-port") + 1]


def test_kedas_query_counts_the_depth_once_and_survives_an_exporter_replica_down(tmp_path: Path) -> None:
    """Evaluated by promtool over two exporter replicas reporting depth 7: 7 (not 14) while both are scraped, and
    still 7 once one replica's series is stale (its pod down), so KEDA keeps its replica count."""
    promtool = require_tool("promtool", "prometheus")
    (trigger,) = one("ScaledObject", "posegen-worker")["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    labels = 'job="posegen-exporter", namespace="posegen", service="posegen-exporter", endpoint="metrics"'
    tests = {"rule_files": [], "evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": [
            {"series": f'pose_queue_depth{{{labels}, instance="10.0.0.1:9108", pod="posegen-exporter-a"}}',
             "values": "7x20"},
            {"series": f'pose_queue_depth{{{labels}, instance="10.0.0.2:9108", pod="posegen-exporter-b"}}',
             "values": "7x4 stale"},
        ],
        "promql_expr_test": [{"expr": query, "eval_time": t, "exp_samples": [{"labels": "{}", "value": 7}]}
                             for t in ("30s", "2m", "4m")],
    }]}
    path = tmp_path / "keda_query_test.yml"
    path.write_text(yaml.safe_dump(tests))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    # The check can fail: the former query, a plain sum(), counts both replicas.
    tests["tests"][0]["promql_expr_test"][0]["expr"] = 'sum(pose_queue_depth{job="posegen-exporter"})'
    path.write_text(yaml.safe_dump(tests))
    run = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "got: {} 1.4E+01" in run.stdout + run.stderr, run.stdout + run.stderr


def test_the_config_carries_the_sentinel_settings_empty_and_they_take_effect_once_filled() -> None:
    """The ConfigMap lists REDIS_SENTINELS and REDIS_SENTINEL_MASTER (empty: REDIS_URL's host is the one Redis);
    filled in, the same ConfigMap makes the processes find the master through the sentinels."""
    config = one("ConfigMap", "posegen-config")["data"]
    assert config["REDIS_SENTINELS"] == "" and config["REDIS_SENTINEL_MASTER"] == ""
    secrets = {"JWT_SECRET": "a-production-secret-of-at-least-32-bytes-0123", "POSEGEN_PROVIDER": "local",
               "STORAGE_BACKEND": "local"}
    assert Settings.from_env({**config, **secrets}).redis_sentinel is None
    filled = {**config, **secrets, "REDIS_SENTINELS": "sentinel-0:26379,sentinel-1:26379,sentinel-2:26379",
              "REDIS_SENTINEL_MASTER": "posegen"}
    sentinel = Settings.from_env(filled).redis_sentinel
    assert sentinel is not None and sentinel.master == "posegen" and len(sentinel.sentinels) == 3
