"""The hand-written reference tables of the README and docs/ say what the code declares.

Each table mixes prose with facts of the code; the facts are checked here against the module that declares them,
so a changed default, window, command, route, alert or tier fails until the page says it too: the README's make
variables (Makefile, ``posegen dev``) and its index of docs/, docs/api.md's routes (the app's OpenAPI document, every
optional route on) and its limits per caller and per connection
(settings, ``app/api/allowances.py``, ``app/api/connection_bounds.py``), docs/operating.md's processes (``posegen``'s
parser) and operator actions (the admin routes, ``posegen ops``), docs/observability.md's alerts
(``alerts/rules``) and SLO tiers (``alerts/slos.yml``), and the benchmark programs docs/performance.md names.
The settings, metrics and security tables have their own tests (see tests/unit/test_docs.py).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from alerts.slo_spec import load_spec, minutes
from app.api import allowances, connection_bounds, read_leases
from app.api.app import create_app
from app.cli import build_parser
from app.devstack import DEFAULT_CANARY_METRICS_PORT, DEFAULT_EXPORTER_PORT, DEFAULT_WORKER_METRICS_PORT
from app.ops_cli import PAUSE_SCOPES
from app.settings import API_SERVER, CALLER_LIMITS, Settings, declarations

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
ROUTE_PREFIX = "/api/apps/pose-generator"


def table(page: Path, header: str) -> list[list[str]]:
    """The body rows of the Markdown table of ``page`` whose header row starts with ``header``, as cells
    (``\\|`` inside a cell kept as ``|``). Fails when the page has no such table."""
    lines = page.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"| {header}")), None)
    assert start is not None, f"{page.relative_to(ROOT)}: no table headed '{header}'"
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
        rows.append([cell.strip().replace("\\|", "|") for cell in cells])
    return rows


def code_spans(text: str) -> list[str]:
    """The `code` spans of a cell, in order."""
    return re.findall(r"`([^`]+)`", text)


def setting_defaults(area: str) -> dict[str, Any]:
    """{variable: default} of the settings declared under ``area`` (each field's own variable)."""
    return {declaration.variables[0].name: default for declaration, default in declarations()
            if declaration.area == area}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parsers of ``parser`` by name."""
    found = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return dict(found.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options of ``parser`` by each of their strings (``--port``: its action)."""
    return {string: action for action in parser._actions for string in action.option_strings}


def test_the_readme_lists_every_make_variable_of_make_dev_with_its_default() -> None:
    flags = dict(re.findall(r"\$\(if \$\((\w+)\),(--[\w-]+) \$\(\1\)\)", (ROOT / "Makefile").read_text()))
    assert len(flags) >= 5, flags
    rows = {code_spans(row[0])[0]: row[1] for row in table(ROOT / "README.md", "variable | default | what")}
    assert set(rows) == set(flags), "the README's Quick start must list exactly the make variables of `make dev`"
    dev = options(subcommands(build_parser())["dev"])
    free_port_defaults = {"--exporter-port": DEFAULT_EXPORTER_PORT,
                          "--worker-metrics-port": DEFAULT_WORKER_METRICS_PORT,
                          "--canary-metrics-port": DEFAULT_CANARY_METRICS_PORT}
    for variable, flag in flags.items():
        default = dev[flag].default if dev[flag].default is not None else free_port_defaults[flag]
        assert rows[variable].split(",")[0] == str(default), f"README: {variable}'s default is {default}"


def test_the_readme_index_links_every_page_of_docs() -> None:
    linked = {re.search(r"\]\(docs/([\w-]+\.md)\)", row[0]).group(1)  # type: ignore[union-attr]
              for row in table(ROOT / "README.md", "document | what is in it")}
    assert linked == {page.name for page in DOCS.glob("*.md")}


def test_the_limits_per_caller_are_the_settings_defaults_and_the_allowances_window() -> None:
    defaults = setting_defaults(CALLER_LIMITS)
    rows = table(DOCS / "api.md", "what | allowance | window")
    shown = {}
    for row in rows:
        match = re.fullmatch(r"`(\w+)` \(([\d,]+)\)", row[1])
        assert match, f"docs/api.md: an allowance is a setting and its default: {row[1]}"
        shown[match[1]] = int(match[2].replace(",", ""))
        assert re.findall(r"(\d+) s\b", row[2]) in ([], [str(allowances.WINDOW_SECONDS)]), row[2]
    assert shown == defaults, "docs/api.md's Limits per caller must show every per-caller setting's default"
    assert sum(f"{allowances.WINDOW_SECONDS} s" in row[2] for row in rows) == len(rows) - 1  # the cap has none
    text = (DOCS / "api.md").read_text()
    create_limit = defaults["POSEGEN_RATE_LIMIT_PER_MINUTE"]
    assert f"`RateLimit-Policy: {create_limit}; w={allowances.WINDOW_SECONDS}`" in text
    lease = round(read_leases.LEASE_SHARE * defaults["POSEGEN_READ_LIMIT_PER_MINUTE"])
    assert f"{read_leases.LEASE_SHARE:.0%}".replace("%", " %") + f" of a caller's allowance at a time ({lease} reads" \
        in " ".join(text.split())


def test_what_one_connection_may_cost_is_the_settings_and_the_servers_bounds() -> None:
    defaults = {name: default for name, default in setting_defaults(API_SERVER).items()
                if name.startswith("POSEGEN_API_")}
    units = {"KiB": 1024, "s": 1, "": 1}
    shown, backlog = {}, None
    for row in table(DOCS / "api.md", "bound | default (setting)"):
        match = re.fullmatch(r"([\d,]+) ?(KiB|s|) \((?:`(\w+)`|(.*))\)", row[1])
        assert match, f"docs/api.md: a bound is a number and its setting: {row[1]}"
        value = int(match[1].replace(",", "")) * units[match[2]]
        if match[3]:
            shown[match[3]] = value
        else:
            backlog = value
    assert shown == defaults, "docs/api.md's connection bounds must show every POSEGEN_API_* setting's default"
    assert backlog == connection_bounds.LISTEN_BACKLOG
    text = " ".join((DOCS / "api.md").read_text().split())
    assert f"under the bound plus {connection_bounds.FEED_BYTES // 1024} KiB" in text
    assert f"read and dropped for up to {connection_bounds.LINGER_SECONDS:g} s" in text


def test_the_processes_table_names_every_command_with_its_options_and_defaults() -> None:
    commands = subcommands(build_parser())
    rows = table(DOCS / "operating.md", "process | command | job")
    named: set[str] = set()
    for row in rows:
        for span in code_spans(row[1]):
            words = span.removeprefix("posegen ").split()
            name, rest = words[0], " ".join(words[1:])
            assert name in commands, f"docs/operating.md: no command `posegen {name}`"
            command = commands[name]
            action = re.match(r"[a-z]+", rest)
            if action:
                choices = options_positional(command)
                assert action[0] in choices, f"docs/operating.md: `posegen {name}` has no action {action[0]}"
                named.add(f"{name} {action[0]}")
            else:
                named.add(name)
            for flag, value in re.findall(r"\[(--[\w-]+)(?: (\w+))?\]", rest):
                assert flag in options(command), f"docs/operating.md: `posegen {name}` has no {flag}"
                if value.isdigit():
                    assert int(value) == _shown_default(options(command)[flag]), f"`posegen {name} {flag}`"
    every = {f"{name} {choice}".strip() for name, command in commands.items()
             for choice in options_positional(command) or [""]}
    assert named == every, f"docs/operating.md's Processes table lacks {every - named}, names {named - every}"


def options_positional(command: argparse.ArgumentParser) -> list[str]:
    """The choices of a command's ``action`` positional (``build``, ``backtest``), or none."""
    return [choice for action in command._actions if action.dest == "action" and not action.option_strings
            for choice in action.choices or ()]


def _shown_default(action: argparse.Action) -> Any:
    """An option's default; for one that defaults to a setting, the setting's default (named in its help)."""
    if action.default is not None:
        return action.default
    variable = re.search(r"\b(POSEGEN_\w+)", action.help or "")
    assert variable, f"{action.option_strings}: no default and no setting named in its help"
    return next(default for declaration, default in declarations() if declaration.variables[0].name == variable[1])


def test_the_api_tables_list_every_route() -> None:
    """docs/api.md's Routes tables list every route the app serves, and only those."""
    section = (DOCS / "api.md").read_text().split("\n## Routes", 1)[1].split("\n## ", 1)[0]

    def normalise(path: str) -> str:
        return re.sub(r"\{[^}]+\}", "{}", re.split(r"[?\[]", path)[0])

    documented = {(method, normalise(path))
                  for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`]*)`", section)}
    # Every route, the optional ones too (FLUX webhooks), as the app built from such settings serves them.
    everything = Settings.from_env({"FLUX_WEBHOOKS": "true", "POSEGEN_PUBLIC_BASE_URL": "https://api.example.com"})
    schema = create_app(everything).openapi_schema.to_schema()
    served = {(method.upper(), normalise(path.removeprefix(ROUTE_PREFIX)))
              for path, operations in schema["paths"].items() if path.startswith(ROUTE_PREFIX)
              for method in operations}
    assert documented == served, f"not in docs/api.md: {served - documented}; not served: {documented - served}"


def test_the_operator_actions_table_names_the_admin_routes_and_the_ops_verbs() -> None:
    rows = table(DOCS / "operating.md", "method and path | `posegen ops`")
    documented = set()
    for row in rows:
        for methods, path in re.findall(r"`((?:GET|POST)(?:/(?:GET|POST))*) (/admin[^` ]*)", row[0]):
            documented |= {(method, re.sub(r"\{[^}]+\}", "{}", path.split("?")[0])) for method in methods.split("/")}
    schema = create_app(Settings.from_env({})).openapi_schema.to_schema()
    served = {(method.upper(), re.sub(r"\{[^}]+\}", "{}", path.removeprefix(ROUTE_PREFIX)))
              for path, operations in schema["paths"].items() if path.startswith(f"{ROUTE_PREFIX}/admin")
              for method in operations}
    assert documented == served, f"docs/operating.md lacks {served - documented}, names {documented - served}"
    verbs = subcommands(subcommands(build_parser())["ops"])
    named = set()
    for row in rows:
        for span in code_spans(row[1]):
            verb = span.split()[0]
            if not re.fullmatch(r"[a-z]+", verb):
                continue  # a request's value, e.g. `hasFailedPoses=true`
            assert verb in verbs, f"docs/operating.md: no `posegen ops {verb}`"
            named.add(verb)
            for flag in re.findall(r"--[\w-]+", span):
                assert flag in options(verbs[verb]), f"docs/operating.md: `posegen ops {verb}` has no {flag}"
            for choices in re.findall(r"--scope (\S+)", span):
                assert choices.split("|") == list(PAUSE_SCOPES), span
    assert named == set(verbs), f"docs/operating.md's Operator actions lack `posegen ops` {set(verbs) - named}"


def _rule_alerts() -> dict[str, dict[str, Any]]:
    """Every alert of alerts/rules by name (an SLO's tiers by their ``burn_window`` label: name@1h)."""
    alerts = {}
    for path in sorted((ROOT / "alerts" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    window = rule["labels"].get("burn_window")
                    alerts[f"{rule['alert']}@{window}" if window else rule["alert"]] = rule
    return alerts


def test_the_alerts_table_lists_every_alert_with_its_severity_and_for() -> None:
    rules = {name: rule for name, rule in _rule_alerts().items() if "@" not in name}
    listed = set()
    for row in table(DOCS / "observability.md", "alert | severity | fires when"):
        names = code_spans(row[0])
        severities = [s.strip() for s in row[1].split(",")]
        if len(severities) == 1:
            severities *= len(names)
        assert len(severities) == len(names), row[:2]
        for name, severity in zip(names, severities, strict=True):
            assert name in rules, f"docs/observability.md: no alert {name} in alerts/rules"
            assert rules[name]["labels"]["severity"] == severity, f"{name}: severity {rules[name]['labels']}"
            listed.add(name)
        stated = re.findall(r"\((\d+) min\)", row[2]) if len(names) > 1 else []
        if len(stated) != len(names):
            stated = re.findall(r"for (\d+) min", row[2])[-1:] * len(names)
        waiting = [name for name in names if "for" in rules[name]]
        assert len(stated) == len(names) or not waiting, f"docs/observability.md: state how long {waiting} wait"
        for name, wait in zip(names, stated, strict=False):
            assert f"{wait}m" == rules[name]["for"], f"docs/observability.md: {name} waits {rules[name]['for']}"
    assert listed == set(rules), f"docs/observability.md's alerts table lacks {set(rules) - listed}"


def test_the_slo_table_shows_each_tier_of_the_spec() -> None:
    spec = load_spec()
    [header] = [line for line in (DOCS / "observability.md").read_text().splitlines()
                if line.startswith("| alert (one per SLO")]
    assert code_spans(header.split("|")[1]) == [slo.alert for slo in spec.slos]
    rows = table(DOCS / "observability.md", "alert (one per SLO")
    assert len(rows) == len(spec.tiers)
    rules = _rule_alerts()
    for row, tier in zip(rows, spec.tiers, strict=True):
        assert row[0] == f"tier `{tier.name}`, `burn_window={tier.long}`", row[0]
        assert row[1] == tier.severity
        long, short = (_spoken(window) for window in (tier.long, tier.short))
        burn = f"{tier.burn_rate(spec.window):g}x ({tier.budget_share:.0%}"
        assert row[2].startswith(f"the last {long} **and** {short} burn > {burn}"), row[2]
        assert row[2].endswith(f"for {_spoken(tier.for_)}"), row[2]
        for slo in spec.slos:
            assert rules[f"{slo.alert}@{tier.long}"]["labels"]["severity"] == tier.severity
    assert rows[0][3].startswith(f"fewer than {spec.min_events} events or {spec.min_bad_events} bad ones")
    objectives = [f"{slo.objective:.1%}".replace(".0%", "%") for slo in spec.slos]
    section = (DOCS / "observability.md").read_text().split("## SLOs and error budgets", 1)[1]
    assert re.findall(r"\", (\d+(?:\.\d)?%)", section)[:len(objectives)] == objectives
    assert f"over {minutes(spec.window) // 1440} days" in section


def _spoken(window: str) -> str:
    """A spec duration as the docs say it: ``1h`` -> ``1 h``, ``5m`` -> ``5 min``, ``3d`` -> ``3 days``."""
    number, unit = window[:-1], window[-1]
    return f"{number} {dict(m='min', h='h', d='days')[unit]}"


def test_every_benchmark_the_performance_log_names_is_a_program_of_bench() -> None:
    rows = table(DOCS / "performance.md", "benchmark (command)")
    programs = [re.findall(r"python -m bench\.(\w+)", row[0]) for row in rows]
    assert sum(bool(found) for found in programs) >= len(rows) - 1, "a benchmark row without its command"
    missing = {name for found in programs for name in found if not (ROOT / "bench" / f"{name}.py").exists()}
    assert not missing, f"docs/performance.md names benchmarks that bench/ lacks: {missing}"
