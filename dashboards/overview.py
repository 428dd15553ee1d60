"""The "Pose Generator — Overview" Grafana dashboard, written with grafanalib.

The first row is the seed's five panels; the rows below answer the on-call questions that follow
("is money leaking?", "are workers alive?", "how many workers are needed?", "is the provider plan the
limit?", "is work stuck or retried?", "which release runs?", "which stage is slow?", "is the API
failing?"). A "Deploys" annotation marks every new version of every job. Every
panel reads the Prometheus data source chosen in the ``datasource`` variable, and every threshold
mirrors an alert in ``alerts/rules/pose-generator.rules.yml`` or a level of the seed's threshold
tables (whose colours are built from :mod:`app.domain.thresholds`, the alerts' levels held to it by a
test), so the colours on screen and the pages agree.
"""

from __future__ import annotations

from grafanalib.core import BarChart, Dashboard, GaugePanel, Panel, Stat, Target, Time

from app.domain.thresholds import AVG_TIME_PER_POSE, QUEUE_DEPTH, REFUND_RATE, SUCCESS_RATE, ThresholdTable
from dashboards.panels import (
    DATASOURCE,
    GREEN,
    ORANGE,
    PROCESS_SELECTOR,
    RED,
    Steps,
    posegen_dashboard,
    steps,
    target,
    timeseries,
)


def table_steps(table: ThresholdTable) -> Steps:
    """The colours of one of the seed's threshold tables (:mod:`app.domain.thresholds`): green while good,
    orange from its good level, red from its critical level."""
    if table.higher_is_better:
        return steps(RED, (table.critical, ORANGE), (table.good, GREEN))
    return steps(GREEN, (table.good, ORANGE), (table.critical, RED))


def quantiles(metric: str, by: str = "", levels: tuple[int, ...] = (50, 95)) -> list[Target]:
    """Quantiles (percent) of a histogram across all instances over five minutes, optionally per label.

    ``metric`` may end in a selector (``name{job=~"$job"}``), which then applies to its buckets and count.
    Only where something was observed in the window: histogram_quantile of all-zero buckets is NaN."""
    labels = f"le, {by}" if by else "le"
    series = f" {{{{{by}}}}}" if by else ""
    name, _, selector = metric.partition("{")
    buckets = f"{name}_bucket{{{selector}" if selector else f"{name}_bucket"
    count = f"{name}_count{{{selector}" if selector else f"{name}_count"
    observed = f"and on ({by}) (sum by ({by}) (rate({count}[5m])) > 0)"
    return [
        target(
            f"histogram_quantile({q / 100}, sum by ({labels}) (rate({buckets}[5m])) {observed})",
            f"p{q}{series}",
            chr(ord("A") + index),
        )
        for index, q in enumerate(levels)
    ]


def seed_panels() -> list[tuple[int, Panel]]:
    """The seed's five panels, with the fixes its queries need to stay correct when idle."""
    generation_rate = timeseries(
        "Generation Rate",
        "Generations finishing per minute, by terminal status (the seed's rate(pose_generations_total[5m])). "
        "queued/processing are current counts, not counters, so they are left out of the rate.",
        [
            target(
                '60 * sum by (status) (rate(pose_generations_total{status=~"completed|failed"}[5m]))',
                "{{status}}",
            )
        ],
        "opm",
        steps(GREEN),
    )
    success_rate = GaugePanel(
        title="Success Rate",
        description="Completed over finished generations in the last hour. >95% good, 90-95% warning, "
        "<90% critical (alerts SuccessRateDegraded, HighFailureRate). Empty when nothing finished.",
        dataSource=DATASOURCE,
        targets=[
            target(
                '100 * sum(rate(pose_generations_total{status="completed"}[1h]))'
                ' / (sum(rate(pose_generations_total{status=~"completed|failed"}[1h])) > 0)',
                "success rate",
            )
        ],
        format="percent",
        min=0,
        max=100,
        decimals=1,
        thresholds=table_steps(SUCCESS_RATE),
        extraJson={"options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}},
    )
    queue_depth = timeseries(
        "Queue Depth",
        "Jobs waiting or running. <100 healthy, 100-500 busy, >500 overloaded: scale workers "
        "(alerts QueueDepthHigh, QueueOverloaded).",
        [target("pose_queue_depth", "waiting + active")],
        "short",
        table_steps(QUEUE_DEPTH),
    )
    average_duration = timeseries(
        "Average Duration",
        "Mean time of a finished generation and of one pose, over five minutes. Per pose: <30 s good, "
        "30-60 s slow (check FLUX latency), >60 s critical (alerts SlowGeneration, PoseTimeHigh/Critical).",
        [
            target(
                "sum(rate(pose_generation_duration_seconds_sum[5m]))"
                " / (sum(rate(pose_generation_duration_seconds_count[5m])) > 0)",
                "per generation",
            ),
            target(
                "sum(rate(pose_pose_duration_seconds_sum[5m]))"
                " / (sum(rate(pose_pose_duration_seconds_count[5m])) > 0)",
                "per pose",
                "B",
            ),
        ],
        "s",
        table_steps(AVG_TIME_PER_POSE),
    )
    errors_by_type = BarChart(
        title="Error Rate by Type",
        description="Failures recorded since the start, by seed error type. "
        "Details: GET /api/apps/pose-generator/metrics/errors.",
        dataSource=DATASOURCE,
        targets=[target("sum by (error_type) (pose_errors_total)", "{{error_type}}", instant=True)],
        thresholdSteps=steps(GREEN),
        transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        extraJson={"fieldConfig": {"defaults": {"unit": "short"}}, "options": {"xField": "error_type"}},
    )
    errors_over_time = timeseries(
        "Errors per Minute by Type",
        "Where the Error Rate by Type bars come from, over time.",
        [target("60 * sum by (error_type) (rate(pose_errors_total[5m]))", "{{error_type}}")],
        "opm",
        steps(GREEN),
    )
    return [
        (8, generation_rate),
        (4, success_rate),
        (6, queue_depth),
        (6, average_duration),
        (12, errors_by_type),
        (12, errors_over_time),
    ]


def credit_panels() -> list[tuple[int, Panel]]:
    return [
        (
            8,
            timeseries(
                "Credits Spent per Hour",
                "Credits charged for new generations over the last hour.",
                [target("sum(increase(pose_credits_spent_total[1h]))", "spent")],
                "short",
                steps(GREEN),
            ),
        ),
        (
            8,
            timeseries(
                "Credits Refunded per Hour",
                "Credits given back for failed poses over the last hour; >1000 pages (CreditRefundSpike).",
                [target("sum(increase(pose_credits_refunded_total[1h]))", "refunded")],
                "short",
                steps(GREEN, (1000, RED)),
            ),
        ),
        (
            8,
            timeseries(
                "Refund Rate",
                "Credits refunded over credits spent in the last hour. <5% good, 5-10% warning, "
                ">10% critical (alerts RefundRateHigh, RefundRateCritical). Empty when nothing was spent.",
                [
                    target(
                        "100 * sum(rate(pose_credits_refunded_total[1h]))"
                        " / (sum(rate(pose_credits_spent_total[1h])) > 0)",
                        "refund rate",
                    )
                ],
                "percent",
                table_steps(REFUND_RATE),
            ),
        ),
    ]


def worker_panels() -> list[tuple[int, Panel]]:
    exporter_up = Stat(
        title="Exporter Sources",
        description="Whether the exporter could read each source at the last scrape (ExporterSourceDown).",
        dataSource=DATASOURCE,
        targets=[target("min by (source) (pose_exporter_up)", "{{source}}")],
        format="bool_yes_no",
        colorMode="background",
        graphMode="none",
        reduceCalc="lastNotNull",
        thresholds=steps(RED, (1, GREEN)),
    )
    fault_drill = Stat(
        # A fixed id, far past the others: added later, it moves no panel's automatic id (alert
        # dashboard_url links open panels by id).
        id=1000,
        title="Fault Drill",
        description="Whether any worker injects failures on purpose (POSEGEN_FAULTS): failures then are a drill.",
        dataSource=DATASOURCE,
        targets=[target("max(pose_fault_drill_active)", "fault drill")],
        format="bool_on_off",
        colorMode="background",
        graphMode="none",
        reduceCalc="lastNotNull",
        thresholds=steps(GREEN, (1, ORANGE)),
    )
    return [
        (
            8,
            timeseries(
                "Workers by State",
                "RQ workers of the pose-generation queue whose heartbeat is fresh (a killed worker leaves within "
                "a minute). None at all pages (WorkerDowntime).",
                [target("sum by (state) (pose_workers)", "{{state}}")],
                "short",
                steps(RED, (1, GREEN)),
                stacked=True,
            ),
        ),
        (
            8,
            timeseries(
                "Queue Jobs by State",
                "Job attempts in RQ's registries of the pose-generation queue (one job per generation attempt; "
                "active counts live executions only, failed only attempts no later attempt replaced). "
                "waiting >500 is QueueBacklog.",
                [target("sum by (state) (pose_queue_jobs)", "{{state}}")],
                "short",
                table_steps(QUEUE_DEPTH),
            ),
        ),
        (
            8,
            timeseries(
                "Oldest Waiting Job",
                "Age of the job that has waited longest; ten minutes means workers are not taking work.",
                [target("max(pose_queue_oldest_waiting_job_age_seconds)", "oldest waiting")],
                "s",
                steps(GREEN, (600, RED)),
            ),
        ),
        (
            8,
            timeseries(
                "Time Since Last Finished Generation",
                "Over ten minutes while jobs wait is WorkerDowntime; on an idle system it is fine.",
                [target("time() - max(pose_last_finished_generation_timestamp_seconds)", "since last")],
                "s",
                steps(GREEN, (600, ORANGE)),
            ),
        ),
        (4, exporter_up),
        (4, fault_drill),
        (
            8,
            timeseries(
                "Exporter Scrape Duration",
                "Time the exporter spends reading each source at scrape time.",
                [target("max by (source) (pose_exporter_scrape_duration_seconds)", "{{source}}")],
                "s",
                steps(GREEN, (1, ORANGE), (5, RED)),
            ),
        ),
    ]


def latency_panels() -> list[tuple[int, Panel]]:
    def panel(title: str, description: str, targets: list[Target], levels: Steps) -> tuple[int, Panel]:
        return 8, timeseries(title, description, targets, "s", levels)

    return [
        panel(
            "FLUX / Provider Call",
            "One image provider call per pose, submit to ready. Usually the slowest stage.",
            quantiles("pose_provider_call_duration_seconds"),
            steps(GREEN, (30, ORANGE), (60, RED)),
        ),
        panel(
            "Image Upload",
            "Storing one generated image (local disk or Supabase Storage).",
            quantiles("pose_upload_duration_seconds"),
            steps(GREEN, (5, ORANGE), (15, RED)),
        ),
        panel(
            "Queue Wait",
            "From enqueue to a worker starting the pose: grows when workers are too few.",
            quantiles("pose_queue_wait_duration_seconds"),
            steps(GREEN, (60, ORANGE), (600, RED)),
        ),
        panel(
            "Pose Total",
            "Whole time of one pose: the seed's per-pose table, <30 s good, 30-60 s slow, >60 s critical.",
            quantiles("pose_pose_duration_seconds"),
            table_steps(AVG_TIME_PER_POSE),
        ),
        panel(
            "Generation Total",
            "Finished generations, enqueue to last pose (buckets 10, 30, 60, 120, 300 s).",
            quantiles("pose_generation_duration_seconds"),
            steps(GREEN, (60, ORANGE), (300, RED)),
        ),
        panel(
            "Worker Operations (p95)",
            "The performance tracker's measured operations in the workers (ControlNet render, provider call, "
            "upload, pose total, queue wait).",
            quantiles(f"pose_operation_duration_seconds{{{PROCESS_SELECTOR}}}", by="operation", levels=(95,)),
            steps(GREEN, (30, ORANGE), (60, RED)),
        ),
    ]


def api_panels() -> list[tuple[int, Panel]]:
    return [
        (
            8,
            timeseries(
                "API Request Rate",
                "Requests per second by status code.",
                [target("sum by (status_code) (rate(pose_http_requests_total[5m]))", "{{status_code}}")],
                "reqps",
                steps(GREEN),
            ),
        ),
        (
            8,
            timeseries(
                "API p95 Latency by Route",
                "95th percentile of request duration per route.",
                [
                    target(
                        "histogram_quantile(0.95,"
                        " sum by (le, route) (rate(pose_http_request_duration_seconds_bucket[5m]))"
                        " and on (route) (sum by (route) (rate(pose_http_request_duration_seconds_count[5m])) > 0))",
                        "{{route}}",
                    )
                ],
                "s",
                steps(GREEN, (0.5, ORANGE), (1, RED)),
            ),
        ),
        (
            8,
            timeseries(
                "API 5xx Ratio",
                "Share of requests answered 5xx; >5% for ten minutes is ApiServerErrors. "
                "0 with traffic and no 5xx, empty without traffic.",
                [
                    # No 5xx series exists until the first 5xx: count that as 0, or a healthy API shows no data.
                    target(
                        '(sum(rate(pose_http_requests_total{status_code=~"5.."}[5m])) or on () vector(0))'
                        " / (sum(rate(pose_http_requests_total[5m])) > 0)",
                        "5xx",
                    )
                ],
                "percentunit",
                steps(GREEN, (0.01, ORANGE), (0.05, RED)),
            ),
        ),
        (
            8,
            timeseries(
                "API Requests per Database Call",
                "Concurrent polls of a generation share one query, concurrent creates one transaction: "
                "requests served per database call, by kind. About 1 at low traffic, higher under load; "
                "a creep towards the batch limits (256 reads, 32 creates) means the database is the bottleneck.",
                [
                    target(
                        "sum by (kind) (rate(pose_api_batch_size_sum[5m]))"
                        " / (sum by (kind) (rate(pose_api_batch_size_count[5m])) > 0)",
                        "{{kind}}",
                    )
                ],
                "short",
                steps(GREEN),
            ),
        ),
    ]


def guarded_quantiles(metric: str, levels: tuple[int, ...] = (50, 95)) -> list[Target]:
    """Like :func:`quantiles`, but empty (not NaN) while nothing was observed in the window."""
    observed = f"sum(rate({metric}_count[5m])) > 0"
    return [
        target(
            f"histogram_quantile({q / 100}, sum by (le) (rate({metric}_bucket[5m]))) and on () ({observed})",
            f"p{q}",
            chr(ord("A") + index),
        )
        for index, q in enumerate(levels)
    ]


def provider_panels() -> list[tuple[int, Panel]]:
    """USE of the provider slots, the one resource that limits throughput (alert ProviderSaturated)."""
    return [
        (
            6,
            timeseries(
                "Provider Slots: In Use vs Cap",
                "In-flight provider calls across all workers (the limiter's state in Redis, read at scrape time) "
                "against the cap POSEGEN_PROVIDER_CONCURRENCY. Flat at the cap while the queue grows is "
                "ProviderSaturated: more workers will not help.",
                [
                    target("sum(pose_provider_slots_in_use)", "in use"),
                    target("max(pose_provider_slots_limit)", "cap", "B"),
                ],
                "short",
                steps(GREEN),
            ),
        ),
        (
            6,
            timeseries(
                "Slot Wait",
                "How long poses waited for a provider slot (saturation). Near zero unless the slots are full.",
                [
                    *guarded_quantiles("pose_provider_slot_wait_seconds", (95,)),
                    target(
                        "sum(rate(pose_provider_slot_wait_seconds_sum[5m]))"
                        " / (sum(rate(pose_provider_slot_wait_seconds_count[5m])) > 0)",
                        "mean",
                        "B",
                    ),
                ],
                "s",
                steps(GREEN, (10, ORANGE), (60, RED)),
            ),
        ),
        (
            6,
            timeseries(
                "Provider Task Time",
                "The provider's own time per task, submit to ready (FLUX), without our retries and download. "
                "Slower tasks at the same cap mean proportionally fewer poses per second.",
                guarded_quantiles("pose_provider_task_duration_seconds"),
                "s",
                steps(GREEN, (30, ORANGE), (60, RED)),
            ),
        ),
        (
            6,
            timeseries(
                "Provider 429s and Retries",
                "Per minute: 429 answers by call step (our cap is above the plan's), and retried calls by "
                "reason (errors: the provider is struggling). Each retry holds a slot while it backs off.",
                [
                    target("60 * sum by (step) (rate(pose_provider_rate_limited_total[5m]))", "429 {{step}}"),
                    target("60 * sum by (reason) (rate(pose_provider_retries_total[5m]))", "retry {{reason}}", "B"),
                ],
                "opm",
                steps(GREEN),
            ),
        ),
    ]


def stuck_work_panels() -> list[tuple[int, Panel]]:
    """Retries and stuck work (alert GenerationStuck)."""
    return [
        (
            8,
            timeseries(
                "Oldest Running Generation",
                "How long the longest-running generation attempt has run (like sidekiq's max processing time), "
                "against the most any attempt can take (deadline x poses / pose concurrency + slack). Past the "
                "limit is GenerationStuck: a frozen or hung worker.",
                [
                    target("max(pose_generation_oldest_running_age_seconds)", "oldest running"),
                    target("max(pose_generation_time_limit_seconds)", "limit", "B"),
                ],
                "s",
                steps(GREEN),
            ),
        ),
        (
            8,
            timeseries(
                "Re-queues and Failed Jobs",
                "Per hour: abandoned attempts the reaper re-queued (lease_expired: the worker died or froze; "
                "job_lost: the job vanished from Redis), generations failed after their last attempt, and RQ "
                "jobs that failed (work_horse_died: killed or out of memory).",
                [
                    target("3600 * sum by (reason) (rate(pose_generation_requeues_total[15m]))",
                           "re-queued {{reason}}"),
                    target("3600 * sum by (reason) (rate(pose_generation_attempts_exhausted_total[15m]))",
                           "attempts exhausted {{reason}}", "B"),
                    target("3600 * sum by (reason) (rate(pose_job_failures_total[15m]))", "job failed {{reason}}",
                           "C"),
                ],
                "short",
                steps(GREEN),
            ),
        ),
        (
            8,
            timeseries(
                "Versions Running",
                "Processes per job, version and revision (pose_build_info). Two versions of one job at once "
                "is a rollout in progress, or one that stopped half way.",
                [target(f"count by (job, version, revision) (pose_build_info{{{PROCESS_SELECTOR}}})",
                        "{{job}} {{version}} {{revision}}")],
                "short",
                steps(GREEN),
                stacked=True,
            ),
        ),
    ]


def capacity_panels() -> list[tuple[int, Panel]]:
    """Little's law next to the queue: how many workers the arrivals need, and how long the backlog lasts."""
    arrivals = 'sum(rate(pose_generations_total{status="created"}[15m]))'
    finished = 'sum(rate(pose_generations_total{status=~"completed|failed"}[15m]))'
    busy = 'avg_over_time(sum(pose_workers{state="busy"})[15m:])'
    return [
        (
            12,
            timeseries(
                "Workers Needed (Little's law)",
                "Arrival rate x mean worker time per generation / generations per worker (one at a time). The "
                "worker time per generation is busy workers / generations finished per second, both over 15 "
                "minutes. Above the running workers, the queue grows until workers are added (or, with "
                "ProviderSaturated, until the provider plan grows).",
                [
                    target(f"{arrivals} * {busy} / ({finished} > 0)", "needed"),
                    target("sum(pose_workers)", "running", "B"),
                ],
                "short",
                steps(GREEN),
            ),
        ),
        (
            12,
            timeseries(
                "Time to Drain the Backlog",
                "Waiting jobs / generations finished per second over 15 minutes: how long the backlog lasts at "
                "the current throughput if nothing new arrived (with arrivals it takes longer). 0 when nothing "
                "waits; empty when nothing finishes.",
                [target(f'sum(pose_queue_jobs{{state="waiting"}}) / ({finished} > 0)', "time to drain")],
                "s",
                steps(GREEN, (600, ORANGE), (3600, RED)),
            ),
        ),
    ]


def canary_panels() -> list[tuple[int, Panel]]:
    """The canary (``posegen canary``, alert CanaryFailing): its runs by outcome and how old its last success is."""
    return [
        (
            12,
            timeseries(
                "Canary Runs",
                "Runs of the canary's one-pose generation per hour, by outcome, and failed ones by reason "
                "(api_unreachable, api_error, generation_failed, not_terminal). Two failed runs in a row is "
                "CanaryFailing, at any user traffic.",
                [
                    target('3600 * sum by (outcome) (rate(pose_canary_runs_total{job="posegen-canary"}[15m]))',
                           "{{outcome}}"),
                    target('3600 * sum by (reason) (rate(pose_canary_failures_total{job="posegen-canary"}[15m]))',
                           "failed: {{reason}}", "B"),
                ],
                "short",
                steps(GREEN),
            ),
        ),
        (
            12,
            timeseries(
                "Canary: Time Since Last Success",
                "Seconds since the canary's latest successful run ended (at most interval + timeout while it is "
                "healthy). Over 15 minutes is CanaryFailing; a canary that stopped being scraped shows no line.",
                [target('time() - max(pose_canary_last_success_timestamp_seconds{job="posegen-canary"})',
                        "since last success")],
                "s",
                steps(GREEN, (600, ORANGE), (900, RED)),
            ),
        ),
    ]


def failover_panels() -> list[tuple[int, Panel]]:
    """A failover as on-call sees it (docs/operating.md "Failover"): which Redis master and PostgreSQL server the
    exporter reads (one line per address: a failover ends one line and starts another), and how many times each
    source's server changed. Each exporter replica reports its own view, so replicas are reduced with ``max``."""
    servers = ('max by (source, address) (label_replace(pose_redis_server_info{job="posegen-exporter"}, "source", '
               '"redis", "", "") or label_replace(pose_database_server_info{job="posegen-exporter"}, "source", '
               '"postgres", "", ""))')
    return [
        (
            12,
            timeseries(
                "Failover: Servers in Use",
                "The Redis master (found through Sentinel when REDIS_SENTINELS is set) and the PostgreSQL server "
                "(a multi-host DATABASE_URL's read-write one) the exporter reads, one line per address: a failover "
                "ends one line and starts another. A gap is a source the exporter could not read "
                "(ExporterSourceDown after 2 minutes).",
                [target(servers, "{{source}} {{address}}")],
                "short",
                steps(GREEN),
            ),
        ),
        (
            12,
            timeseries(
                "Failover: Server Changes per Hour",
                "Times the server of a source changed in the last hour (a Sentinel promotion, a standby promoted), "
                "and 1 while the PostgreSQL server read is a standby still in recovery (no writes: /health is 503).",
                [
                    target('max by (source) (increase(pose_exporter_server_changes_total{job="posegen-exporter"}[1h]))',
                           "changes: {{source}}"),
                    target('max(pose_database_in_recovery{job="posegen-exporter"})', "database in recovery", "B"),
                ],
                "short",
                steps(GREEN, (1, ORANGE)),
            ),
        ),
    ]


def operator_action_annotation() -> dict[str, object]:
    """A Prometheus-query annotation marking every operator action (retry, dry run, pause, resume), from
    ``pose_operator_actions_total``: one mark per action while its count went up."""
    return {
        "name": "Operator actions",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": "purple",
        "expr": "sum by (action) (increase(pose_operator_actions_total[2m])) > 0",
        "step": "1m",
        "titleFormat": "Operator: {{action}}",
        "textFormat": "{{action}} (see GET /admin/audit or posegen ops audit)",
        "tagKeys": "action",
        "useValueForTime": False,
    }


def overview_dashboard() -> Dashboard:
    return posegen_dashboard(
        title="Pose Generator — Overview",
        uid="posegen-overview",
        description="Generation health, queue, workers, credits, per-stage latency and the API.",
        tags=["posegen", "pose-generator"],
        refresh="30s",
        time=Time("now-6h", "now"),
        annotations=(operator_action_annotation(),),
        rows=[
            ("Overview", seed_panels()),
            ("Credits", credit_panels()),
            ("Workers and Queue", worker_panels()),
            ("Capacity", capacity_panels()),
            ("Provider", provider_panels()),
            ("Retries, Stuck Work and Releases", stuck_work_panels()),
            ("Per-stage Latency", latency_panels()),
            ("API", api_panels()),
            ("Canary", canary_panels()),
            ("Failover", failover_panels()),
        ],
    )
