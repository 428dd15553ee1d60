"""``posegen ops``: the operators' verbs (failed, retry, pause, resume, audit) against a running API.

Each verb is one call of an ``/admin`` endpoint with an ADMIN token (``--token``, else
``POSEGEN_OPS_TOKEN``); nothing here touches the database or Redis directly, so the CLI does exactly
what the endpoints do, and every action lands in the audit log under the token's subject. ``retry``
without ``--dry-run`` follows its batch with a progress bar and ends with a summary.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app import API_PREFIX
from app.settings import Settings

_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# What each scope of a pause holds back; `posegen ops pause` names one, there is no default.
PAUSE_SCOPES = {"intake": "POST /generations answers 503 with Retry-After",
                "workers": "drain: running jobs finish, no new one starts",
                "all": "both"}


class OpsError(Exception):
    """The API could not be reached or refused the request; the message says which and why."""


def moment(text: str) -> str:
    """An ISO-8601 time, or ``30m``/``2h``/``1d`` ago, as ISO-8601 (argparse type)."""
    relative = _RELATIVE.match(text.strip())
    if relative:
        ago = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        return (datetime.now(UTC) - ago).isoformat()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an ISO-8601 time nor like 30m, 2h, 1d") from None


class OpsClient:
    def __init__(self, api: str, token: str, timeout: float = 30.0) -> None:
        self._base = f"{api.rstrip('/')}{API_PREFIX}"
        self._http = httpx.Client(base_url=self._base, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise OpsError(f"cannot reach {self._base}{path}: {exc}") from None
        if answer.status_code >= 400:
            try:
                detail = answer.json().get("detail", answer.text)
            except ValueError:
                detail = answer.text
            raise OpsError(f"{method} {path} answered {answer.status_code}: {str(detail)[:500]}")
        return answer.json()

    def close(self) -> None:
        self._http.close()


def _filter(args: argparse.Namespace) -> dict[str, Any]:
    wanted = {"status": args.status, "errorType": args.error_type, "userId": args.user,
              "createdFrom": args.since, "createdTo": args.until,
              "finishedFrom": args.finished_since, "finishedTo": args.finished_until,
              "hasFailedPoses": args.has_failed_poses}
    return {key: value for key, value in wanted.items() if value is not None}


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def cmd_failed(client: OpsClient, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {**_filter(args), "limit": min(args.limit, 200)}
    shown: list[dict[str, Any]] = []
    while len(shown) < args.limit:
        page = client.call("GET", "/admin/generations", params=params)
        shown += page["generations"]
        if not page["nextCursor"]:
            break
        params["cursor"] = page["nextCursor"]
    rows = [[g["generationId"], g["userId"], g["status"], g["errorType"] or "-",
             f"{sum(a['posesFailed'] for a in g['attempts'][-1:])}/{g['posesCount']}",
             f"{g['creditsCharged']}/{g['creditsRefunded']}", str(len(g["attempts"])), g["createdAt"]]
            for g in shown[: args.limit]]
    print(_table(rows, ["GENERATION", "USER", "STATUS", "ERROR", "FAILED", "CHARGED/REFUNDED", "RUNS", "CREATED"]))
    print(f"{len(rows)} generation(s)")
    return 0


def _describe(counts: dict[str, Any]) -> str:
    paid = "charged" if counts["charge"] else "on the house"
    text = (f"{counts['generations']} generation(s), {counts['poses']} pose(s), {counts['users']} user(s), "
            f"{counts['credits']} credits {paid}")
    for refused in counts.get("refusedUsers", []):
        text += (f"\n  refused {refused['userId']}: needs {refused['required']} credits, "
                 f"balance {refused['balance']}")
    return text


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def cmd_retry(client: OpsClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"charge": args.charge, "dryRun": args.dry_run}
    if args.generation:
        body["generationId"] = args.generation
    else:
        body["filter"] = _filter(args)
    if args.dry_run:
        answer = client.call("POST", "/admin/retries", json=body)
        print(f"dry run (audit {answer['audit']['id']}): would retry {_describe(answer['counts'])}")
        return 0
    key = args.idempotency_key or f"ops-{uuid.uuid4().hex}"
    answer = client.call("POST", "/admin/retries", json=body, headers={"Idempotency-Key": key})
    audit_id = answer["audit"]["id"]
    replayed = " (replayed: this key already ran)" if answer["replayed"] else ""
    print(f"retry (audit {audit_id}, Idempotency-Key {key}){replayed}: {_describe(answer['counts'])}")
    if not answer["counts"]["generations"]:
        return 0
    progress = _follow(client, audit_id, args.wait, sys.stdout.isatty())
    print(f"summary: {progress['completed']} completed, {progress['failed']} failed, "
          f"{progress['queued'] + progress['processing']} still running, {progress['superseded']} retried again "
          f"since, of {progress['total']}")
    return 0 if progress["queued"] + progress["processing"] == 0 else 1


def _follow(client: OpsClient, audit_id: int, wait: float, tty: bool) -> dict[str, int]:
    deadline = time.monotonic() + wait
    last = ""
    while True:
        progress: dict[str, int] = client.call("GET", f"/admin/retries/{audit_id}")
        done = progress["completed"] + progress["failed"] + progress["superseded"]
        line = (f"{_bar(done, progress['total'])} {done}/{progress['total']} finished "
                f"({progress['completed']} completed, {progress['failed']} failed, "
                f"{progress['processing']} processing, {progress['queued']} queued)")
        if tty:
            print("\r" + line, end="", flush=True)
        elif line != last:
            print(line, flush=True)
        last = line
        if done == progress["total"] or time.monotonic() > deadline:
            if tty:
                print()
            return progress
        time.sleep(0.5)


def cmd_pause(client: OpsClient, args: argparse.Namespace) -> int:
    state = client.call("POST", "/admin/pause", json={"scope": args.scope, "reason": args.reason,
                                                      "retryAfterSeconds": args.retry_after})
    _print_pause(state)
    return 0


def cmd_resume(client: OpsClient, args: argparse.Namespace) -> int:
    _print_pause(client.call("POST", "/admin/resume", json={"scope": args.scope}))
    return 0


def _print_pause(state: dict[str, Any]) -> None:
    intake = state["intake"]
    if intake["paused"]:
        print(f"intake: PAUSED by {intake['pausedBy']} ({intake['reason'] or 'no reason given'}), "
              f"clients told to retry after {intake['retryAfterSeconds']} s")
    else:
        print("intake: open")
    workers = ", ".join(f"{n} {s}" for s, n in sorted(state["workers"].items())) or "none registered"
    print(f"workers: {'PAUSED (draining)' if state['workersPaused'] else 'running'}; {workers}")
    for entry in state["audit"]:
        print(f"audited: #{entry['id']} {entry['action']} by {entry['actor']}")


def cmd_audit(client: OpsClient, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.action:
        params["action"] = args.action
    entries = client.call("GET", "/admin/audit", params=params)["entries"]
    rows = [[str(e["id"]), e["at"], e["actor"], e["action"],
             " ".join(f"{k}={v}" for k, v in e["target"].items()) or "-",
             " ".join(f"{k}={v}" for k, v in e["counts"].items() if k != "refusedUsers") or "-"]
            for e in entries]
    print(_table(rows, ["ID", "AT", "ACTOR", "ACTION", "TARGET", "COUNTS"]))
    return 0


VERBS = {"failed": cmd_failed, "retry": cmd_retry, "pause": cmd_pause, "resume": cmd_resume, "audit": cmd_audit}


def add_ops_parser(sub: Any) -> argparse.ArgumentParser:
    """``posegen ops VERB``: registered by :func:`app.cli.build_parser`."""
    ops = sub.add_parser("ops", help="Operators' actions against a running API (ADMIN token).",
                         description="Find failed generations, retry them, pause/resume intake and workers, "
                                     "read the audit log — through the API's /admin endpoints.")
    ops.add_argument("--api", default=None, help="the API's base URL (default POSEGEN_API_URL or 127.0.0.1:8000)")
    ops.add_argument("--token", default=None, help="an ADMIN JWT (default POSEGEN_OPS_TOKEN)")
    verbs = ops.add_subparsers(dest="verb", required=True)

    def with_filter(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--status", choices=("queued", "processing", "completed", "failed"), default=None)
        parser.add_argument("--has-failed-poses", action="store_true", default=None,
                            help="finished generations with at least one failed pose: failed, or completed with "
                                 "some poses failed (--status failed alone leaves the completed ones out)")
        parser.add_argument("--error-type", default=None, help="e.g. FLUX_API_ERROR")
        parser.add_argument("--user", default=None, help="a user id")
        parser.add_argument("--since", type=moment, default=None, help="created at or after (ISO time, or 2h)")
        parser.add_argument("--until", type=moment, default=None, help="created before")
        parser.add_argument("--finished-since", type=moment, default=None)
        parser.add_argument("--finished-until", type=moment, default=None)

    failed = verbs.add_parser("failed", help="List generations with failed poses (failed, or completed with some "
                                             "poses failed), newest first.")
    with_filter(failed)
    failed.set_defaults(has_failed_poses=True)
    failed.add_argument("--limit", type=int, default=50)
    retry = verbs.add_parser("retry", help="Retry failed poses: --dry-run first, then without it.")
    with_filter(retry)
    retry.add_argument("--generation", default=None, help="one generation id instead of a filter")
    paid = retry.add_mutually_exclusive_group(required=True)
    paid.add_argument("--charge", dest="charge", action="store_true", help="charge users like a new generation")
    paid.add_argument("--on-the-house", dest="charge", action="store_false", help="do not charge users again")
    retry.add_argument("--dry-run", action="store_true", help="only count what would be retried")
    retry.add_argument("--idempotency-key", default=None, help="repeat a retry safely (default: a new key)")
    retry.add_argument("--wait", type=float, default=600, help="seconds to follow the batch (default 600)")
    pause = verbs.add_parser("pause", help="Pause intake (503 + Retry-After) and/or drain workers: --scope is "
                                           "required.")
    pause.add_argument("--scope", choices=tuple(PAUSE_SCOPES), default=None,
                       help="; ".join(f"{scope}: {what}" for scope, what in PAUSE_SCOPES.items()))
    pause.add_argument("--reason", default="")
    pause.add_argument("--retry-after", type=int, default=300, help="seconds clients are told to wait")
    resume = verbs.add_parser("resume", help="Resume intake and/or workers.")
    resume.add_argument("--scope", choices=("intake", "workers", "all"), default="all")
    audit = verbs.add_parser("audit", help="The audit log, newest first.")
    audit.add_argument("--limit", type=int, default=20)
    audit.add_argument("--action", default=None,
                       choices=("retry_dry_run", "retry", "pause_intake", "resume_intake", "pause_workers",
                                "resume_workers"))
    return ops


def run_ops(args: argparse.Namespace, settings: Settings) -> int:
    if args.verb == "pause" and args.scope is None:
        scopes = ", ".join(f"{scope} ({what})" for scope, what in PAUSE_SCOPES.items())
        print(f"error: posegen ops pause needs --scope, one of: {scopes}", file=sys.stderr)
        return 2
    token = args.token or settings.ops_token
    if not token:
        print("error: an ADMIN token is needed: --token or POSEGEN_OPS_TOKEN (posegen token --role ADMIN)",
              file=sys.stderr)
        return 2
    client = OpsClient(args.api or settings.ops_api_url, token)
    try:
        return VERBS[args.verb](client, args)
    except OpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
