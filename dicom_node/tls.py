"""TLS settings for the SCP (and a matching client context for the SCU), built into ``ssl.SSLContext``."""

from __future__ import annotations

import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.errors import ConfigError


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key; ``ca_file`` verifies client certificates when they are required."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{name} {str(path)!r} is not a readable file")
        if self.require_client_cert and self.ca_file is None:
            raise ConfigError("require_client_cert is true but ca_file is not set: nothing to verify client "
                              "certificates against (set ca_file, or require_client_cert: false)")
        if _readable(self.cert_file, self.key_file):  # load them once now, so a bad one is named here
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(certfile=str(self.cert_file),
                                                                         keyfile=str(self.key_file))
            except ssl.SSLError as exc:
                raise ConfigError(f"cert_file {str(self.cert_file)!r} and key_file {str(self.key_file)!r} are not a "
                                  f"PEM certificate and its private key: {exc.reason or exc}") from None
        if self.ca_file is not None:
            check_ca_file(self.ca_file)

    def server_context(self, deferred_handshake_timeout_s: float | None = None) -> ssl.SSLContext:
        """A TLS 1.2+ server context; with ``deferred_handshake_timeout_s`` a ``DeferredHandshake`` one (for a
        listener that wraps sockets in its accept loop, as pynetdicom's does)."""
        if deferred_handshake_timeout_s is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        else:
            context = DeferredHandshake(ssl.PROTOCOL_TLS_SERVER)
            context.handshake_timeout_s = deferred_handshake_timeout_s
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certfile=str(self.cert_file), keyfile=str(self.key_file))
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        context.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_NONE
        return context


class DeferredHandshake(ssl.SSLContext):
    """A server context whose sockets do their TLS handshake on first use, in the association's thread.

    pynetdicom wraps each accepted socket in its accept loop; with the handshake done there, one
    client that connects and sends nothing (a port scanner, a load balancer's health check) would
    hold the loop, and every other association, for as long as it liked. Deferred, the handshake
    runs when the association first reads, under ``handshake_timeout_s``.
    """

    handshake_timeout_s: float = 30.0

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        sock.settimeout(self.handshake_timeout_s)
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def check_ca_file(ca_file: Path) -> None:
    """Raise ConfigError unless ``ca_file`` is a file of PEM CA certificates; its content is checked only when this
    user may read it (an operator's ``radfusion status`` need not read the service's key material)."""
    if not Path(ca_file).is_file():
        raise ConfigError(f"ca_file {str(ca_file)!r} is not a readable file of PEM CA certificates")
    if not _readable(ca_file):
        return
    try:
        ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"ca_file {str(ca_file)!r} is not a readable file of PEM CA certificates: "
                          f"{exc.reason or exc}") from None


def _readable(*paths: Path) -> bool:
    """Whether this process may read every one of ``paths``."""
    return all(os.access(path, os.R_OK) for path in paths)


def client_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ client context that verifies the server against ``ca_file`` (and can present a cert)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file) if key_file else None)
    return context
