"""TLS and mTLS on the listener, TLS towards backends, HTTPS admin; redaction before
recording; secrets never in /v1/config or errors."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl

import aiohttp
import duckdb
import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sidecar._proto import inference_pb2 as pb
from sidecar.app import Sidecar
from sidecar.config import parse_config
from sidecar.demo.models import make_demo_models, start_model_server
from sidecar.errors import ConfigError
from tests.conftest import sidecar_config

METHOD = "/inference.GRPCInferenceService/ModelInfer"


def _cert(name: str, issuer=None, issuer_key=None, ca: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return cert, key


def _pem(cert, key) -> tuple[bytes, bytes]:
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


@pytest.fixture
def pki(tmp_path):
    ca, ca_key = _cert("test-ca", ca=True)
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for name in ("server", "client", "backend"):
        cert, key = _cert(name, ca, ca_key)
        files[f"{name}.pem"], files[f"{name}.key"] = _pem(cert, key)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path, files


async def test_mtls_listener_tls_backend_https_admin(echo, pki) -> None:
    d, files = pki
    # A TLS backend: the echo handler behind TLS.
    from sidecar.backends.echo_server import _Handler, _State

    backend = grpc.aio.server()
    backend.add_generic_rpc_handlers([_Handler(_State())])
    bport = backend.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(files["backend.key"], files["backend.pem"])]))
    await backend.start()
    data = sidecar_config(d / "tls.duckdb", {"p": f"127.0.0.1:{bport}"},
                          [{"match": "*", "primary": "p"}])
    data["tls"] = {"cert": str(d / "server.pem"), "key": str(d / "server.key"),
                   "client_ca": str(d / "ca.pem")}
    data["backends"][0]["tls"] = {"ca": str(d / "ca.pem"), "server_name": "localhost"}
    data["admin"] = {"listen": "127.0.0.1:0", "token": "hunter2",
                     "tls": {"cert": str(d / "server.pem"), "key": str(d / "server.key")}}
    sc = Sidecar(parse_config(data))
    await sc.start()
    try:
        good = grpc.ssl_channel_credentials(files["ca.pem"], files["client.key"],
                                            files["client.pem"])
        async with grpc.aio.secure_channel(f"127.0.0.1:{sc.port}", good) as ch:
            assert await ch.unary_unary("/a.B/C")(b"secret-free") == b"secret-free"
        no_client_cert = grpc.ssl_channel_credentials(files["ca.pem"])
        async with grpc.aio.secure_channel(f"127.0.0.1:{sc.port}", no_client_cert) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary("/a.B/C")(b"x", timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await ch.unary_unary("/a.B/C")(b"x", timeout=5)
        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{sc.admin.port}/v1/config",
                                ssl=ctx) as resp:
                text = await resp.text()
                assert resp.status == 200
        assert "hunter2" not in text  # the token is masked
        assert json.loads(text)["config"]["admin"]["token"] == "**********"
    finally:
        await sc.aclose()
        await backend.stop(0)


def test_unreadable_tls_file_names_the_field(tmp_path) -> None:
    data = sidecar_config(tmp_path / "x.duckdb", {"p": "127.0.0.1:1"},
                          [{"match": "*", "primary": "p"}])
    data["tls"] = {"cert": "missing.pem", "key": "missing.key"}
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path)
    assert [p for p, _ in info.value.problems] == ["tls.cert", "tls.key"]


@pytest.mark.parametrize("mode", ["hash", "drop"])
async def test_redaction_before_recording(tmp_path, monkeypatch, start_sidecar,
                                          channel_to, mode) -> None:
    monkeypatch.setenv("SHADOWCAR_REDACTION_KEY", "k3y")
    model, _ = make_demo_models()
    server = await start_model_server(model)
    db = tmp_path / "red.duckdb"
    try:
        sc = await start_sidecar(
            {"p": server.target},
            [{"match": METHOD, "primary": "p", "codec": "oip",
              "unit": {"metadata": "x-user-id"},
              "canary": None,
              # an experiment records the unit of every exposed request
              "experiment": {"name": "e", "variants": [
                  {"name": "only", "backend": "p", "weight": 100}]},
              "redact": {"inputs": ["email"], "unit": True, "mode": mode}}],
            storage={"path": str(db), "flush_interval_ms": 20, "record_bytes": True},
        )
        req = pb.ModelInferRequest(model_name="demo")
        feats = req.inputs.add(name="features", datatype="FP32", shape=[1, 8])
        feats.contents.fp32_contents.extend(np.ones(8).tolist())
        email = req.inputs.add(name="email", datatype="BYTES", shape=[1])
        email.contents.bytes_contents.append(b"alice@example.com")
        stub = channel_to(sc.port).unary_unary(METHOD)
        try:
            await stub(req.SerializeToString(), metadata=(("x-user-id", "user-7"),))
        except grpc.aio.AioRpcError:
            pass  # the demo model refuses the extra input; recording is what matters here
        await sc.aclose()
    finally:
        await server.aclose()
    con = duckdb.connect(str(db), read_only=True)
    row = con.execute("SELECT inputs, request_bytes, unit_id FROM requests").fetchall()[0]
    con.close()
    inputs = {t["name"]: t for t in row[0]}
    assert row[1] is None  # no raw bytes for a redacted route
    assert inputs["features"]["data"] == [1.0] * 8

    def keyed(text: str) -> str:
        return hmac.new(b"k3y", text.encode(), hashlib.sha256).hexdigest()[:32]

    if mode == "drop":
        assert "email" not in inputs and row[2] is None
    else:
        assert inputs["email"]["text"] == [keyed("alice@example.com")]
        assert row[2] == keyed("user-7")  # the unit id is hashed with the same key


def test_hash_redaction_needs_its_key(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("SHADOWCAR_REDACTION_KEY", raising=False)
    data = sidecar_config(tmp_path / "x.duckdb", {"p": "127.0.0.1:1"},
                          [{"match": "*", "primary": "p", "redact": {"inputs": ["x"]}}])
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems[0][0] == "routes[0].redact.key_env"
    assert "k3y" not in str(info.value)
