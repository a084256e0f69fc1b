"""TLS to an ``https`` (or ``wss``) upstream: whom to trust, and which certificate to show.

By default an upstream's certificate is checked against the system's trust store, host name
included, as any HTTPS client does. Services behind a gateway often carry certificates from an
internal CA instead, and some require the gateway to prove itself with a client certificate
(mutual TLS). Per upstream:

- ``ca_file``: a PEM file of the CA certificate(s) to trust *instead of* the system store (as
  nginx's ``proxy_ssl_trusted_certificate``, Envoy's ``trusted_ca``): the upstream's certificate
  must chain to one of them, and its name must match the upstream URL's host.
- ``client_cert`` and ``client_key``: the PEM certificate (chain) and private key the gateway
  presents when the upstream asks for one (nginx's ``proxy_ssl_certificate`` /
  ``proxy_ssl_certificate_key``). The key must not be encrypted: the gateway starts unattended.

There is no switch that turns verification off: an upstream with a self-signed certificate is
trusted by naming that certificate as its ``ca_file``.

The files are read when the configuration is loaded, so a missing file, a PEM that does not
parse, or a key that does not match its certificate stops ``gatekeeper serve`` and
``check-config`` with the key path and the reason, before any port is bound.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

#: The settings of an upstream's table that name TLS files.
TLS_FILE_KEYS: Final = ("ca_file", "client_cert", "client_key")


class TLSFileError(ValueError):
    """A TLS file that cannot be used; ``key`` is the setting that names it."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """Trust and client identity for one upstream (see the module docstring). All None: the
    system's trust store and no client certificate."""

    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    #: Built from the files at construction; one context serves every connection to the upstream.
    context: ssl.SSLContext = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "context", self._build())

    @property
    def default(self) -> bool:
        """Whether these are the defaults (the system's trust store, no client certificate)."""
        return self.ca_file is None and self.client_cert is None and self.client_key is None

    def _build(self) -> ssl.SSLContext:
        if (self.client_cert is None) != (self.client_key is None):
            missing = "client_key" if self.client_key is None else "client_cert"
            raise TLSFileError(missing, "client_cert and client_key are given together")
        if self.ca_file is None:
            context = ssl.create_default_context()
        else:
            _readable("ca_file", self.ca_file)
            try:
                context = ssl.create_default_context(cafile=self.ca_file)
            except ssl.SSLError as exc:
                raise TLSFileError("ca_file", f"no PEM certificate could be read ({exc.reason})") from None
        if self.client_cert is not None and self.client_key is not None:
            _readable("client_cert", self.client_cert)
            _readable("client_key", self.client_key)
            try:
                # A password callback that fails: an encrypted key is refused, never prompted for.
                context.load_cert_chain(self.client_cert, self.client_key, password=_no_password)
            except (ssl.SSLError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or "unreadable"
                raise TLSFileError(
                    "client_key",
                    f"the certificate and key cannot be used together ({reason}; an encrypted key is "
                    "not supported)",
                ) from None
        return context


def _no_password() -> str:
    raise ValueError("encrypted key")


def _readable(key: str, path: str) -> None:
    if not Path(path).is_file():
        raise TLSFileError(key, f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise TLSFileError(key, f"{path}: not readable")
