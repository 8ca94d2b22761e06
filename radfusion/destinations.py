"""DICOM destinations as the SCU needs them: the remote node and, for TLS, the client context."""

from __future__ import annotations

import ssl

from dicom_node.contracts import RemoteNode
from dicom_node.tls import client_context
from radfusion.settings import DestinationSettings, Settings


def remote_node(dest: DestinationSettings) -> RemoteNode:
    """The node record of a configured destination."""
    return RemoteNode(dest.name, dest.ae_title, dest.host, dest.port, dest.tls)


def tls_context(settings: Settings, dest: DestinationSettings) -> ssl.SSLContext | None:
    """For a TLS destination: verify it against dicom.tls.ca_file and present our certificate if we have one."""
    if not dest.tls:
        return None
    tls = settings.dicom.tls
    assert tls.ca_file is not None  # checked at start-up (Settings._check_references)
    return client_context(tls.ca_file, tls.cert_file, tls.key_file)
