"""The deployment users copy: compose.yaml is valid Compose and sets only variables the
server reads; the README's configuration table lists exactly what the server reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml

from chat_server.config import Settings
from chat_server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]


class SpyEnv(Mapping[str, str]):
    """An empty environment that remembers every variable asked for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        raise KeyError(key)

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        self.asked.add(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def variables_read() -> set[str]:
    spy = SpyEnv()
    Settings.from_env(spy)
    return spy.asked


def test_the_server_reads_its_documented_variables() -> None:
    read = variables_read()
    assert {"DATABASE_URL", "REDIS_URL", "GEMINI_API_KEY", "JWT_SECRET", "PORT"} <= read
    readme = (ROOT / "README.md").read_text()
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, re.M))
    assert table == read, f"README table drifted: missing {read - table}, extra {table - read}"


def test_compose_file_is_valid_compose() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(ROOT / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_two_replicas_behind_a_balancer_with_health_checks() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    replicas = [s for name, s in services.items() if name.startswith("server-")]
    assert len(replicas) == 2
    read = variables_read()
    for service in replicas:
        env = service["environment"]
        assert set(env) <= read, f"compose sets variables the server ignores: {set(env) - read}"
        assert env["REDIS_URL"].startswith("redis://")
        assert env["DATABASE_URL"].startswith("postgresql://")
        assert "healthcheck" in service
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert set(services["migrate"]["environment"]) <= read
    assert services["migrate"]["command"][-1] == "migrate"
    for name in ("postgres", "redis", "lb"):
        assert "healthcheck" in services[name], name
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header Upgrade $http_upgrade" in nginx
    for service_name in (n for n in services if n.startswith("server-")):
        assert f"server {service_name}:8000" in nginx


def test_dockerfile_runs_as_non_root_from_a_slim_image_without_build_tools() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    final_stage = dockerfile.split("\nFROM ")[-1]
    assert final_stage.startswith("python:3.11-slim")
    assert re.search(r"\nUSER [1-9][0-9]*(:[1-9][0-9]*)?\n", final_stage), "a numeric non-root user"
    assert not re.search(r"apt-get install|gcc|build-essential", final_stage)
    assert "HEALTHCHECK" in final_stage


def test_dockerfile_installs_the_locked_dependencies_before_the_source() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    sync = dockerfile.index("uv sync --frozen --no-dev")
    assert dockerfile.index("COPY pyproject.toml uv.lock") < sync
    assert sync < dockerfile.index("COPY chat_server")
    assert "pip install" not in dockerfile.replace("pip install --no-cache-dir uv==", "")
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_uv is not None
    assert f"uv=={makefile_uv.group(1)}" in dockerfile, "one uv version for make and the image"


def test_compose_builds_the_image_once() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    builds = [name for name, service in services.items() if "build" in service]
    assert builds == ["migrate"]
    image = services["migrate"]["image"]
    for name in (n for n in services if n.startswith("server-")):
        assert services[name]["image"] == image
        assert services[name]["pull_policy"] == "never"


def test_the_dashboard_and_prometheus_scrape_what_the_server_exports() -> None:
    """Every metric the Grafana dashboard queries is one the server defines, and
    Prometheus in compose.yaml scrapes both replicas."""

    exported = {m.name for m in Metrics("x").registry.collect()}
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queried = {
        name.removesuffix("_bucket")
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(chat_[a-z_]+)", target["expr"])
    }
    # prometheus-client reports counters without their _total suffix
    assert {n.removesuffix("_total") for n in queried} <= exported, queried
    assert len(queried) >= 15
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert {t.split(":")[0] for t in targets} == {n for n in services if n.startswith("server-")}
    assert "prometheus" in services
