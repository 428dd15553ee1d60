"""The generated files of ``alerts/``: what ``posegen alerts build`` and ``posegen slo build`` write.

``posegen alerts build`` renders every rule template (``alerts/templates``) and the SLO rules with the platform
config, links them (:mod:`alerts.links`) and writes them into ``alerts/rules`` (or a deployment's copy into
``--out``), refreshing Alertmanager's ``group_by``. ``posegen slo build`` writes the SLO rules
(:mod:`alerts.slo`) and the promtool tests that prove them (:mod:`alerts.slo_scenarios`).
"""

from __future__ import annotations

from pathlib import Path

from alerts.links import relink
from alerts.platform import ALERTMANAGER, RULES_DIR, Platform, alertmanager_config, render_rules
from alerts.platform import load as load_platform
from alerts.slo import RULES_OUT, build_rules, render
from alerts.slo_scenarios import build_tests
from alerts.slo_spec import SPEC, load_spec


def write_rule_files(out_dir: Path | None, runbook_base: str | None = None, grafana: str | None = None,
                     platform: Platform | None = None) -> list[Path]:
    """Render every rule template of ``alerts/templates`` and the SLO rules of ``alerts/slos.yml`` with
    ``platform`` (default: ``alerts/platform.yml``), link them (bases default to the config's ``links``) and
    write them into ``out_dir`` (default: ``alerts/rules``, and then Alertmanager's ``group_by`` is refreshed
    from the config too). Returns the written paths.

    Raises :class:`alerts.platform.PlatformError` for a bad config or template."""
    platform = platform or load_platform()
    runbook_base = runbook_base or platform.runbook_base
    grafana = grafana or platform.grafana_url

    def linked(text: str) -> str:
        return relink(text, runbook_base, grafana, platform.group_labels, platform)

    written = []
    for name, text in render_rules(platform).items():
        target = (out_dir or RULES_DIR) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(linked(text), encoding="utf-8")
        written.append(target)
    # A rule file with no template (e.g. one added by hand) is relinked as it is, so the set stays whole.
    templated = {path.name for path in written}
    for path in sorted(RULES_DIR.glob("*.yml")):
        if path.name not in templated and path.name != RULES_OUT.name:
            target = (out_dir or RULES_DIR) / path.name
            target.write_text(linked(path.read_text(encoding="utf-8")), encoding="utf-8")
            written.append(target)
    # The SLO rules (`posegen slo build`) too, so a deployment's copy is the whole set.
    target = (out_dir or RULES_DIR) / RULES_OUT.name
    target.write_text(linked(render(build_rules(load_spec(), platform))), encoding="utf-8")
    written.append(target)
    if out_dir is None:
        ALERTMANAGER.write_text(alertmanager_config(platform, ALERTMANAGER.read_text(encoding="utf-8")),
                                encoding="utf-8")
        written.append(ALERTMANAGER)
    return written


def slo_files(spec_path: Path = SPEC, platform: Platform | None = None) -> dict[Path, str]:
    """The files ``posegen slo build`` generates and their text, keyed by their path in the repository. The
    promtool scenarios are generated for the committed config only (their series carry its job names); with
    another ``platform`` only the rules are built.

    Raises :class:`alerts.slo_spec.SpecError` for a bad spec."""
    spec = load_spec(spec_path)
    platform = platform or load_platform()
    rules = relink(render(build_rules(spec, platform)), platform.runbook_base, platform.grafana_url,
                   platform.group_labels, platform)
    if platform != load_platform():
        return {RULES_OUT: rules}
    return {RULES_OUT: rules, **{path: render(doc) for path, doc in build_tests(spec).items()}}


def write_slo_files(out_dir: Path | None = None, platform: Platform | None = None) -> list[Path]:
    """Write the generated SLO rules and tests (into their places, or all into ``out_dir``); returns the paths."""
    written = []
    for path, text in slo_files(platform=platform).items():
        target = path if out_dir is None else out_dir / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written
