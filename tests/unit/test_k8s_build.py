"""``posegen k8s build`` with a ``config.yaml`` an operator edited: settings that no worker would run with, or a
ConfigMap the API server would refuse, stop the build with one line (exit 2) and leave the manifests as they were;
settings the workers take render their grace period."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.cli import main
from app.k8s import WORKER_FILE

ROOT = Path(__file__).resolve().parents[2]


def _deploy_with(tmp_path: Path, settings: str) -> Path:
    """A copy of deploy/k8s whose ConfigMap also holds ``settings`` (YAML lines under ``data:``)."""
    k8s = tmp_path / "k8s"
    shutil.copytree(ROOT / "deploy" / "k8s", k8s)
    config = k8s / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8").replace(
        "\ndata:\n", "\ndata:\n" + "".join(f"  {line}\n" for line in settings.splitlines()), 1), encoding="utf-8")
    return k8s


def _grace(k8s: Path) -> str:
    return next(line.split(":")[1].strip() for line in (k8s / WORKER_FILE).read_text(encoding="utf-8").splitlines()
                if "terminationGracePeriodSeconds:" in line)


@pytest.mark.parametrize(("settings", "words"), [
    ('FLUX_DEADLINE_SECONDS: "abc"', "FLUX_DEADLINE_SECONDS='abc' is not a number"),
    # An hour per pose at most: 1e12 rendered a grace period of 10^13 s and every job's alarm(2) overflowed;
    # 1e300 rendered a 301-digit integer the API server cannot hold.
    ('FLUX_DEADLINE_SECONDS: "1e12"', "FLUX_DEADLINE_SECONDS='1e12' must be at most 3600"),
    ('FLUX_DEADLINE_SECONDS: "1e300"', "FLUX_DEADLINE_SECONDS='1e300' must be at most 3600"),
    ("FLUX_DEADLINE_SECONDS: 600", "FLUX_DEADLINE_SECONDS: 600 is not a string"),
    ('POSEGEN_MAX_POSES: "1000"', "POSEGEN_MAX_POSES='1000' must be at most 100"),
])
def test_settings_no_worker_would_run_with_stop_the_build_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], settings: str, words: str) -> None:
    k8s = _deploy_with(tmp_path, settings)
    before = (k8s / WORKER_FILE).read_text(encoding="utf-8")
    assert main(["k8s", "build", "--rules", str(ROOT / "alerts" / "rules"), "--out", str(k8s)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and words in error, error
    assert (k8s / WORKER_FILE).read_text(encoding="utf-8") == before


def test_the_longest_attempt_the_settings_allow_renders_a_grace_period_the_cluster_takes(tmp_path: Path) -> None:
    """100 poses one at a time, an hour each: 100 x (3600 + 60) + 60 s, plus 30 s to leave."""
    k8s = _deploy_with(tmp_path, 'FLUX_DEADLINE_SECONDS: "3600"\nPOSEGEN_MAX_POSES: "100"')
    (k8s / "config.yaml").write_text((k8s / "config.yaml").read_text(encoding="utf-8").replace(
        'POSEGEN_POSE_CONCURRENCY: "8"', 'POSEGEN_POSE_CONCURRENCY: "1"'), encoding="utf-8")
    assert main(["k8s", "build", "--rules", str(ROOT / "alerts" / "rules"), "--out", str(k8s)]) == 0
    assert _grace(k8s) == str(100 * 3660 + 60 + 30)
