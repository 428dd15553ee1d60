"""What on-call asks first, as annotations every alert carries: what changed and who is hit.

Rendered by Prometheus at each evaluation (``{{ with query "..." }}``, as ``top_error_type``), so the
notification sent when the alert fires carries the figures of that moment. ``posegen alerts build``
(:func:`alerts.links.relink`) writes them into every alert of every rule file, after ``dashboard_url``;
Alertmanager's receivers (``alerts/alertmanager.yml``) put them in the page's ``custom_details`` and in the
chat text, next to the environment (the alerts' ``cluster``/``namespace`` labels when present).

``versions``        every (version, revision) running and on how many processes: ``pose_build_info``
                    (app/observability/build_info.py), e.g. ``0.9.0 (abc1234): 4 running``
``last_deploy``     the newest (version, revision) and how long ago it started: the earliest
                    ``process_start_time_seconds`` of the processes running it (the workers and the exporter
                    export it; a restart of every such process counts as a deploy)
``users_affected``  the blast radius: distinct users with a generation that failed in the last hour,
                    ``pose_users_with_failed_generations`` (exporter/collectors.py, from PostgreSQL)

Each renders a fixed text (``unknown``...) when its series is missing, never an empty string.
"""

from __future__ import annotations

from collections.abc import Sequence

# Alerts that get no context: the dead-man's switch heartbeat is no incident.
NO_CONTEXT = frozenset({"Watchdog"})

def _query(promql: str, group_labels: Sequence[str]) -> str:
    """A template's ``query`` argument (a Go raw string: selectors keep their double quotes): ``promql`` whose
    ``{ENV}`` becomes matchers on the alert's own environment labels (``cluster="<its cluster>", ...`` via
    ``$labels``), so a page names its own environment's versions and users, not another's in the same Prometheus;
    without environment labels, the query as it is."""
    if not group_labels:
        return "`" + promql.replace(",{ENV}", "").replace("{ENV}", "") + "`"
    promql = promql.replace("%", "%%")
    matchers = ", ".join(f"{label}=%q" for label in group_labels)
    values = " ".join(f"$labels.{label}" for label in tuple(group_labels) * promql.count("{ENV}"))
    return f"(printf `{promql.replace('{ENV}', matchers)}` {values})"


def _ours(name: str, selectors: Sequence[str]) -> str:
    """``name`` of our jobs only (``alerts/platform.yml``'s selectors, each job's matchers), in the alert's
    environment: ``(name{job="a",{ENV}} or name{job="b",{ENV}})``; any job's when no selector is given."""
    if not selectors:
        return f"{name}{{{{ENV}}}}"
    return "(" + " or ".join(f"{name}{{{selector},{{ENV}}}}" for selector in selectors) + ")"


def templates(group_labels: Sequence[str] = (), selectors: Sequence[str] = (),
              exporter: str = "") -> dict[str, str]:
    """The annotation templates by name, scoped to the alert's environment (``group_labels``, the environment
    labels of ``alerts/platform.yml``) and to our jobs (``selectors``: every job's matchers; ``exporter``: the
    exporter's, for the blast radius), so another team's ``pose_build_info`` in a shared Prometheus is not ours."""
    build_info = _ours("pose_build_info", selectors)
    versions = _query(f"count by (version, revision) ({build_info})", group_labels)
    last_deploy = _query("bottomk(1, time() - min by (version, revision) ("
                         f"{_ours('process_start_time_seconds', selectors)}"
                         f" * on (job, instance) group_left (version, revision) {build_info}))", group_labels)
    users = _query(f"max({_ours('pose_users_with_failed_generations', [exporter] if exporter else [])})",
                   group_labels)
    return {
        "versions": (
            f'{{{{ range $i, $s := query {versions} | sortByLabel "version" }}}}'
            '{{ if $i }}, {{ end }}{{ $s.Labels.version }} ({{ $s.Labels.revision }}): {{ $s.Value }} running'
            '{{ else }}unknown (no pose_build_info){{ end }}'),
        "last_deploy": (
            f'{{{{ with query {last_deploy} }}}}'
            '{{ . | first | label "version" }} ({{ . | first | label "revision" }}) started'
            ' {{ . | first | value | humanizeDuration }} ago'
            '{{ else }}unknown (no process_start_time_seconds){{ end }}'),
        "users_affected": (
            f'{{{{ with query {users} }}}}{{{{ . | first | value | humanize }}}} users with a'
            ' failed generation in the last hour{{ else }}unknown (no pose_users_with_failed_generations){{ end }}'),
    }


ANNOTATIONS: dict[str, str] = templates()
# What each renders with none of its series in Prometheus (promtool tests that feed none of them).
UNKNOWN: dict[str, str] = {
    "versions": "unknown (no pose_build_info)",
    "last_deploy": "unknown (no process_start_time_seconds)",
    "users_affected": "unknown (no pose_users_with_failed_generations)",
}


def lines(alert: str, indent: str, group_labels: Sequence[str] = (), selectors: Sequence[str] = (),
          exporter: str = "") -> list[str]:
    """The annotation lines (YAML, single-quoted, at ``indent``) of ``alert``, scoped to its environment
    (``group_labels``); none for :data:`NO_CONTEXT`."""
    if alert in NO_CONTEXT:
        return []
    return [f"{indent}{name}: '{template.replace(chr(39), chr(39) * 2)}'"
            for name, template in templates(group_labels, selectors, exporter).items()]


def is_context_line(line: str) -> bool:
    """Whether ``line`` is one of the annotation lines :func:`lines` writes (so a rebuild replaces it)."""
    stripped = line.lstrip()
    return any(stripped.startswith(f"{name}: '") for name in ANNOTATIONS)
