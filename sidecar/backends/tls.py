"""gRPC credentials from the TLS material a config names (read once at load)."""

from __future__ import annotations

import ssl

import grpc

from sidecar.config import LoadedConfig

__all__ = ["admin_ssl_context", "backend_credentials", "server_credentials"]


def server_credentials(loaded: LoadedConfig) -> grpc.ServerCredentials | None:
    """Credentials for the gRPC listener; mTLS when ``tls.client_ca`` is set."""
    tls = loaded.config.tls
    if tls is None:
        return None
    f = loaded.files
    client_ca = f.get("tls.client_ca")
    return grpc.ssl_server_credentials(
        [(f["tls.key"], f["tls.cert"])],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def backend_credentials(
    loaded: LoadedConfig, name: str
) -> tuple[grpc.ChannelCredentials | None, list[tuple[str, str]]]:
    """Channel credentials and options for backend ``name`` (None: plaintext)."""
    for i, backend in enumerate(loaded.config.backends):
        if backend.name != name or backend.tls is None:
            continue
        f = loaded.files
        where = f"backends[{i}].tls"
        creds = grpc.ssl_channel_credentials(
            root_certificates=f.get(f"{where}.ca"),
            private_key=f.get(f"{where}.key"),
            certificate_chain=f.get(f"{where}.cert"),
        )
        options = []
        if backend.tls.server_name:
            options.append(("grpc.ssl_target_name_override", backend.tls.server_name))
        return creds, options
    return None, []


def admin_ssl_context(loaded: LoadedConfig, workdir: str) -> ssl.SSLContext | None:
    """An SSL context for the admin API, from the PEM files the config named."""
    tls = loaded.config.admin.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert if tls.cert.startswith("/") else f"{workdir}/{tls.cert}",
                        tls.key if tls.key.startswith("/") else f"{workdir}/{tls.key}")
    return ctx
