"""One loopback check (``interceptors.tls.is_loopback_host``); every place that asks agrees."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from auth_server.config import AuthServerConfig
from interceptors import AuthServiceSource, HttpJwksSource
from interceptors.tls import is_loopback_address, is_loopback_host

CASES = [
    pytest.param("127.0.0.1", True, id="ipv4-loopback"),
    pytest.param("127.8.9.1", True, id="anywhere-in-127/8"),
    pytest.param("localhost", True, id="localhost"),
    pytest.param("LOCALHOST", True, id="localhost-in-capitals"),
    pytest.param("::1", True, id="ipv6-loopback"),
    pytest.param("[::1]", True, id="ipv6-loopback-bracketed"),
    pytest.param("0:0:0:0:0:0:0:1", True, id="ipv6-loopback-long-form"),
    pytest.param("::ffff:127.0.0.1", True, id="ipv4-mapped-loopback"),
    pytest.param("0.0.0.0", False, id="every-ipv4-interface"),
    pytest.param("::", False, id="every-ipv6-interface"),
    pytest.param("::ffff:10.0.0.1", False, id="ipv4-mapped-private"),
    pytest.param("10.0.0.1", False, id="private-address"),
    pytest.param("192.0.2.7", False, id="public-address"),
    pytest.param("example.com", False, id="name"),
    pytest.param("127.example.com", False, id="name-starting-with-127"),
    pytest.param("localhost.example.com", False, id="name-starting-with-localhost"),
    pytest.param("", False, id="empty"),
]


def _in_url(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@pytest.mark.parametrize(("host", "loopback"), CASES)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(("host", "loopback"), CASES)
def test_a_listen_address_is_loopback_when_its_host_is(host: str, loopback: bool) -> None:
    assert is_loopback_address(f"{_in_url(host)}:50051") is loopback


@pytest.mark.parametrize(("host", "loopback"), CASES)
def test_plain_http_key_urls_are_accepted_only_on_loopback(host: str, loopback: bool) -> None:
    url = f"http://{_in_url(host)}:8080/.well-known/jwks.json"
    if loopback:
        HttpJwksSource(url)
    else:
        with pytest.raises(ValueError):
            HttpJwksSource(url)


@pytest.mark.parametrize(("host", "loopback"), CASES)
def test_a_plain_http_issuer_is_accepted_only_on_loopback(
    host: str, loopback: bool, tmp_path: Path
) -> None:
    def config() -> AuthServerConfig:
        return AuthServerConfig(
            data_dir=tmp_path,
            issuer=f"http://{_in_url(host)}:8080",
            audience="orders",
            key_passphrase=b"passphrase-0123456789",
        )

    if loopback:
        config()
    else:
        with pytest.raises(ValueError):
            config()


@pytest.mark.parametrize(("host", "loopback"), [c for c in CASES if c.values[0]])
def test_plaintext_grpc_keys_warn_unless_the_target_is_loopback(
    host: str, loopback: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="interceptors")
    AuthServiceSource(f"{_in_url(host)}:50051").close()

    warned = any("plaintext" in r.getMessage() for r in caplog.records)
    assert warned is not loopback
