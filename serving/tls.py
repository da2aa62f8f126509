"""TLS settings of the clients: gRPC channel credentials and the https context of REST (no TensorFlow).

One `TlsOptions` for both transports: a CA bundle (PEM; default: the system's trust store), and for
mutual TLS a client certificate chain and its key (PEM). gRPC uses `grpc.ssl_channel_credentials`, REST
an `ssl.SSLContext` (certificate and host name verified; no way to turn verification off).
"""

from __future__ import annotations

import dataclasses

from keras_hourglass.errors import ArgumentError, InputError


@dataclasses.dataclass(frozen=True)
class TlsOptions:
    """TLS settings.

    Attributes:
        enabled: use TLS (gRPC: a secure channel; REST: implied by an https:// URL).
        ca_cert: CA bundle (PEM) to verify the server with; None: the system's.
        client_cert: client certificate chain (PEM) for mutual TLS.
        client_key: its private key (PEM).
        server_name: gRPC only: the name to verify in the server's certificate instead of the host
            (`grpc.ssl_target_name_override`).
    """

    enabled: bool = False
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None

    def __post_init__(self):
        if (self.client_cert is None) != (self.client_key is None):
            raise ArgumentError("client_cert" if self.client_key else "client_key",
                                "mutual TLS needs both client_cert= and client_key=")
        if not self.enabled and (self.ca_cert or self.client_cert or self.server_name):
            object.__setattr__(self, "enabled", True)  # any TLS setting means TLS


def read_pem(path: str, argument: str) -> bytes:
    """Returns: the bytes of a PEM file.

    Raises:
        InputError: unreadable, or not PEM (names the file and, as ``argument=``, the argument).
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(1 << 20)
    except OSError as err:
        raise InputError(path, f"{argument}=: cannot read ({err.strerror or type(err).__name__})") from None
    if b"-----BEGIN " not in data:
        raise InputError(path, f"{argument}=: not a PEM file")
    return data


def grpc_credentials(options: TlsOptions):
    """Returns: `grpc.ssl_channel_credentials` for `options`."""
    import grpc

    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(options.ca_cert, "ca_cert") if options.ca_cert else None,
        private_key=read_pem(options.client_key, "client_key") if options.client_key else None,
        certificate_chain=read_pem(options.client_cert, "client_cert") if options.client_cert else None,
    )


def ssl_context(options: TlsOptions):
    """Returns: an `ssl.SSLContext` verifying the server against `ca_cert` (or the system's CAs).

    Raises:
        InputError: a CA bundle, certificate or key that cannot be loaded.
    """
    import ssl

    if options.server_name:
        raise ArgumentError("server_name", "is for grpc= only (REST verifies the URL's host)")
    try:
        context = ssl.create_default_context(cafile=options.ca_cert)
    except (OSError, ssl.SSLError) as err:
        raise InputError(options.ca_cert or "ca_cert", f"ca_cert=: cannot load the CA bundle ({_reason(err)})") from None
    if options.client_cert:
        for path, argument in ((options.client_cert, "client_cert"), (options.client_key, "client_key")):
            read_pem(path, argument)
        try:
            context.load_cert_chain(options.client_cert, options.client_key)
        except (OSError, ssl.SSLError) as err:
            raise InputError(options.client_cert, f"client_cert=: cannot load it with client_key= "
                                                  f"({_reason(err)})") from None
    return context


def _reason(err: Exception) -> str:
    return (getattr(err, "reason", None) or getattr(err, "strerror", None) or type(err).__name__)


def is_tls_failure(text: str) -> bool:
    """Whether a transport error message is a TLS failure (not retried: it will not heal)."""
    lowered = text.lower()
    return any(word in lowered for word in ("certificate", "ssl", "handshake", "tls"))


__all__ = ["TlsOptions", "grpc_credentials", "is_tls_failure", "read_pem", "ssl_context"]
