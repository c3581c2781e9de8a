"""The TLS context a client uses to check a NATS server (and to present its own certificate).

A bad file is reported here, naming the variable that points at it, before any connection
is attempted: ``ssl`` alone says ``[X509] PEM lib`` and nothing about which file.
"""

from __future__ import annotations

import ssl

from .errors import ConfigurationError


def client_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Verify the server against ``ca`` (the system's CAs when None), host name checked;
    with ``cert`` and ``key``, present that client certificate (mutual TLS)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"PERDURE_TLS_CA: {ca!r} holds no usable CA certificate ({exc})"
            ) from None
    if cert is not None:
        try:
            context.load_cert_chain(certfile=cert, keyfile=key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigurationError(
                f"PERDURE_TLS_CERT/PERDURE_TLS_KEY: {cert!r} and {key!r} are not a certificate "
                f"and its key ({exc})"
            ) from None
    return context
