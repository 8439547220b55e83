"""How both the worker and the client reach a server: addresses, TLS and token."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import grpc
import grpc.aio

# Long enough for the largest payload the server takes by default (256 KiB) several times over.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings. Certificates are PEM, given as bytes or as a path to read."""

    ca_cert: Union[bytes, Path, str, None] = None
    """The CA that signed the server's certificate; the system roots when None."""
    client_cert: Union[bytes, Path, str, None] = None
    """A client certificate, for a server that requires mTLS."""
    client_key: Union[bytes, Path, str, None] = None
    server_name: Optional[str] = None
    """Overrides the name checked against the server's certificate."""

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca_cert),
            private_key=_pem(self.client_key),
            certificate_chain=_pem(self.client_cert),
        )


def _pem(value: Union[bytes, Path, str, None]) -> Optional[bytes]:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


TlsOption = Union[TlsConfig, bool, None]


def target_of(server: str, tls: TlsOption) -> tuple[str, Optional[TlsConfig]]:
    """Splits `http://host:port`, `https://host:port` or `host:port` into a gRPC target and TLS settings.

    `https://` implies TLS with the system roots unless `tls` says otherwise; `tls=False` with an
    `https://` address is a contradiction and is refused.
    """
    if server.startswith("https://"):
        if tls is False:
            raise ValueError(f"{server!r} is an https:// address but tls=False")
        target, config = server[len("https://") :], tls if isinstance(tls, TlsConfig) else TlsConfig()
    elif server.startswith("http://"):
        if tls:
            raise ValueError(f"{server!r} is an http:// address but TLS was asked for; use https://")
        target, config = server[len("http://") :], None
    else:
        target = server
        config = tls if isinstance(tls, TlsConfig) else (TlsConfig() if tls else None)
    target = target.rstrip("/")
    if not target or "/" in target:
        raise ValueError(f"not a server address: {server!r} (expected host:port, http://host:port or https://host:port)")
    return target, config


Servers = Union[str, Sequence[str]]
"""One server address, several comma-separated in a string, or a sequence of them."""


def servers_of(servers: Servers, tls: TlsOption) -> list[str]:
    """The addresses in `servers`, in order, each checked as `target_of` checks it.

    A string is split on commas (`"http://a:50051,http://b:50051"`); a sequence gives one address
    an item (an item may hold several, comma-separated, too). Whitespace around an address is
    ignored; a blank entry (`"a:1,,b:2"`, a trailing comma, an empty string) is refused, as is no
    address at all.
    """
    items = [servers] if isinstance(servers, str) else list(servers)
    addresses: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"a server address is a string, not {type(item).__name__}: {item!r}")
        for entry in item.split(","):
            address = entry.strip()
            if not address:
                raise ValueError(
                    f"blank entry in the server addresses {servers!r} (expected host:port, http://host:port "
                    "or https://host:port, several separated by commas)"
                )
            target_of(address, tls)
            addresses.append(address)
    if not addresses:
        raise ValueError("no server address given")
    return addresses


def aio_channel(server: str, tls: TlsOption, options: list[tuple[str, int | str]] | None = None) -> grpc.aio.Channel:
    target, config = target_of(server, tls)
    opts: list[tuple[str, int | str]] = [
        ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ] + list(options or [])
    if config is None:
        return grpc.aio.insecure_channel(target, options=opts)
    if config.server_name:
        opts.append(("grpc.ssl_target_name_override", config.server_name))
    return grpc.aio.secure_channel(target, config.credentials(), options=opts)


def auth_metadata(token: Optional[str]) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []
