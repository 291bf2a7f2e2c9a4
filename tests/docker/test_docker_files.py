"""docker/: what can be checked without a container engine (none runs here).

Every YAML parses, compose refers to files that exist, the configs validate, probes and the
health check point at the ports the config uses, healthcheck.py and serve_model really work.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import yaml
from grpc_health.v1 import health_pb2

from sidecar._proto import inference_pb2 as pb
from sidecar.config import load_config
from sidecar.demo import build_infer_request
from sidecar.errors import ConfigError

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ROOT = DOCKER.parent
HEALTHCHECK = DOCKER / "healthcheck.py"
ROUTE = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples run with SHADOWCAR_ADMIN_TOKEN set (their admin listens on 0.0.0.0)."""
    monkeypatch.setenv("SHADOWCAR_ADMIN_TOKEN", "example-token")


def port_of(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


def yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


@pytest.mark.parametrize("name", ["compose.yaml", "shadowcar.yaml", "otel-collector.yaml",
                                  "k8s/sidecar.yaml"])
def test_every_yaml_parses(name: str) -> None:
    assert yaml_docs(DOCKER / name)


def test_compose_refers_to_files_that_exist() -> None:
    compose = yaml_docs(DOCKER / "compose.yaml")[0]
    services = compose["services"]
    assert {"sidecar", "model-primary", "model-shadow", "otel-collector", "jaeger"} <= set(
        services)
    for name, svc in services.items():
        build = svc.get("build")
        if build is not None:
            context = (DOCKER / build["context"]).resolve()
            assert context == ROOT, name
            assert (context / build["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DOCKER / source).is_file(), f"{name}: {source}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: {source}"
    # Everything the Dockerfile copies is in the build context.
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    # The model containers run the demo model server with a port the config's backends use.
    config = load_config(str(DOCKER / "shadowcar.yaml")).config
    targets = {b.target for b in config.backends}
    for name in ("model-primary", "model-shadow"):
        cmd = services[name]["command"]
        assert services[name]["entrypoint"][-1] == "sidecar.demo.serve_model"
        assert f"{name}:{cmd[cmd.index('--port') + 1]}" in targets


def test_dockerfile_is_multi_stage_non_root_with_a_grpc_health_check() -> None:
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    assert len(re.findall(r"^FROM .+ AS \w+", text, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("0", "root"))
    check = re.search(r"HEALTHCHECK .*?CMD (\[.*?\])", text, re.S)
    assert check and "healthcheck.py" in check.group(1)
    config = load_config(str(DOCKER / "shadowcar.yaml")).config
    target = re.search(r'"--target", "([^"]+)"', check.group(1))
    assert target and port_of(target.group(1)) == port_of(config.listen)
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()}
    assert {port_of(config.listen), port_of(config.admin.listen or "")} <= exposed


def test_docker_config_validates() -> None:
    loaded = load_config(str(DOCKER / "shadowcar.yaml"))
    assert loaded.config.telemetry.traces.exporter == "otlp"
    assert loaded.config.routes[0].codec == "oip"


def test_k8s_probes_point_at_the_admin_port_of_the_embedded_config(tmp_path: Path) -> None:
    docs = {d["kind"]: d for d in yaml_docs(DOCKER / "k8s" / "sidecar.yaml")}
    assert {"ConfigMap", "Deployment", "Service"} <= set(docs)
    config_file = tmp_path / "shadowcar.yaml"
    config_file.write_text(docs["ConfigMap"]["data"]["shadowcar.yaml"], encoding="utf-8")
    config = load_config(str(config_file)).config
    admin = config.admin.listen
    assert admin is not None and admin.startswith("0.0.0.0:")  # the kubelet is not loopback
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "shadowcar"]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_of(admin)}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port_of(admin)}
    ports = {p["containerPort"] for p in sidecar["ports"]}
    assert {port_of(config.listen), port_of(admin)} <= ports
    assert sidecar["resources"]["requests"] and sidecar["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    grace = config.shutdown.grace_s + config.shutdown.sink_timeout_s
    assert pod["terminationGracePeriodSeconds"] > grace
    (model,) = [c for c in pod["containers"] if c["name"] == "model"]
    primary = next(b for b in config.backends if b.name == config.routes[0].primary)
    assert primary.target == "127.0.0.1:" + model["args"][model["args"].index("--port") + 1]
    mount = next(m for m in sidecar["volumeMounts"] if m["name"] == "config")
    assert sidecar["args"][-1] == f"{mount['mountPath']}/shadowcar.yaml"


def test_no_example_runs_token_less_on_all_interfaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.5: every shipped config with an admin listener off loopback is refused
    without a token, and compose and Kubernetes cannot start it without one."""
    k8s = {d["kind"]: d for d in yaml_docs(DOCKER / "k8s" / "sidecar.yaml")}
    embedded = tmp_path / "k8s.yaml"
    embedded.write_text(k8s["ConfigMap"]["data"]["shadowcar.yaml"], encoding="utf-8")
    monkeypatch.delenv("SHADOWCAR_ADMIN_TOKEN")
    for config in (DOCKER / "shadowcar.yaml", embedded):
        data = yaml_docs(config)[0]
        assert not data["admin"].get("allow_unauthenticated") and "token" not in data["admin"]
        with pytest.raises(ConfigError) as info:
            load_config(str(config))
        assert [p for p, _ in info.value.problems] == ["admin.listen"]
    compose = yaml_docs(DOCKER / "compose.yaml")[0]
    token = compose["services"]["sidecar"]["environment"]["SHADOWCAR_ADMIN_TOKEN"]
    assert re.fullmatch(r"\$\{SHADOWCAR_ADMIN_TOKEN:\?.+\}", token)  # compose stops if unset
    for published in compose["services"]["sidecar"]["ports"]:
        assert published.startswith("127.0.0.1:")
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    (sidecar,) = [c for c in pod["containers"] if c["name"] == "shadowcar"]
    (env,) = [e for e in sidecar["env"] if e["name"] == "SHADOWCAR_ADMIN_TOKEN"]
    assert env["valueFrom"]["secretKeyRef"]["optional"] is False


async def run_healthcheck(target: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HEALTHCHECK), "--target", target, "--timeout", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def wait_status(sidecar: Any, wanted: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.port}") as ch:
        check = ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        for _ in range(200):
            if (await check(health_pb2.HealthCheckRequest(), timeout=2)).status == wanted:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"health never reached {wanted}")


@pytest.mark.subprocess
async def test_healthcheck_exits_0_only_when_serving(echo: Any, start_sidecar: Any) -> None:
    backend = await echo()
    serving = await start_sidecar({"p": backend.target}, [{"match": "*", "primary": "p"}])
    await wait_status(serving, health_pb2.HealthCheckResponse.SERVING)
    code, out = await run_healthcheck(f"127.0.0.1:{serving.port}")
    assert code == 0 and "SERVING" in out
    await serving.aclose()
    code, out = await run_healthcheck(f"127.0.0.1:{serving.port}")  # now a dead port
    assert code == 2 and "did not answer" in out


@pytest.mark.subprocess
async def test_healthcheck_fails_while_the_primary_is_unreachable(
    start_sidecar: Any, tmp_path: Path
) -> None:
    waiting = await start_sidecar({"p": "127.0.0.1:1"}, [{"match": "*", "primary": "p"}],
                                  db_path=tmp_path / "w.duckdb")
    code, out = await run_healthcheck(f"127.0.0.1:{waiting.port}")
    assert code == 1 and "NOT_SERVING" in out


@pytest.mark.subprocess
async def test_serve_model_starts_answers_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar.demo.serve_model", "--model", "retrained", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT),
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        match = re.match(r"serving demo version 2 on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        async with grpc.aio.insecure_channel(f"127.0.0.1:{match.group(1)}") as ch:
            infer = ch.unary_unary(ROUTE)
            body = build_infer_request("demo", np.ones(8))
            reply = pb.ModelInferResponse.FromString(await infer(body, timeout=5))
        assert reply.model_version == "2" and list(reply.outputs[0].shape) == [1, 2]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
