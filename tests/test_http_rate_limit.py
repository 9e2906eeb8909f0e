"""Per-address token buckets on the HTTP endpoints: 429 + Retry-After; no address slows another."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from auth_server.cli import build_parser
from auth_server.commands.serve import server_config
from auth_server.ratelimit import RateLimit, RateLimiter, RateLimits, client_key, route_group
from helpers import AuthHarness, Clock, EventLoopThread, make_config, start_harness

JWKS = "/.well-known/jwks.json"
DISCOVERY = "/.well-known/openid-configuration"


def _limits(rate: float = 1.0, burst: int = 5, max_addresses: int = 100) -> RateLimits:
    return RateLimits(
        groups={
            "documents": RateLimit(rate=rate, burst=burst),
            "token": RateLimit(rate=rate, burst=burst),
        },
        max_addresses=max_addresses,
    )


# -- the buckets ---------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_says_when_to_retry() -> None:
    clock = Clock(100.0)
    limiter = RateLimiter(_limits(rate=2.0, burst=3), clock=clock)

    assert [limiter.check("documents", "a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("documents", "a") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.check("documents", "a") == 0.0  # refilled one request's worth
    assert limiter.check("documents", "a") > 0
    clock.advance(60)
    assert [limiter.check("documents", "a") for _ in range(3)] == [0.0, 0.0, 0.0]  # capped at burst


def test_addresses_and_route_groups_have_their_own_buckets() -> None:
    limiter = RateLimiter(_limits(rate=1.0, burst=1), clock=Clock())

    assert limiter.check("documents", "a") == 0.0
    assert limiter.check("documents", "a") > 0
    assert limiter.check("documents", "b") == 0.0
    assert limiter.check("token", "a") == 0.0


def test_a_zero_rate_turns_the_limit_off() -> None:
    limits = RateLimits(
        groups={"documents": RateLimit(rate=0, burst=1), "token": RateLimit(rate=1, burst=1)}
    )
    limiter = RateLimiter(limits, clock=Clock())

    assert all(limiter.check("documents", "a") == 0.0 for _ in range(100))
    assert len(limiter) == 0


def test_memory_stays_bounded_and_a_flooder_stays_limited_among_many_addresses() -> None:
    clock = Clock()
    limiter = RateLimiter(_limits(rate=1.0, burst=2, max_addresses=50), clock=clock)
    limiter.check("documents", "flooder")
    limiter.check("documents", "flooder")

    for i in range(10_000):  # an attacker with many addresses
        limiter.check("documents", f"10.0.{i // 256}.{i % 256}")
        if i % 20 == 0:
            # The flooder keeps flooding: its bucket stays the most recent, never evicted.
            assert limiter.check("documents", "flooder") > 0
        assert len(limiter) <= 50


@pytest.mark.parametrize(
    ("address", "key"),
    [
        pytest.param("127.0.0.2", "127.0.0.2", id="ipv4"),
        pytest.param("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64", id="ipv6-by-64"),
        pytest.param("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64", id="same-64"),
        pytest.param("::ffff:192.0.2.7", "192.0.2.7", id="ipv4-mapped"),
        pytest.param(None, "unknown", id="no-peer"),
    ],
)
def test_clients_are_counted_by_ipv4_address_or_ipv6_64(address: str | None, key: str) -> None:
    assert client_key(address) == key


@pytest.mark.parametrize(
    ("path", "group"),
    [
        (JWKS, "documents"),
        (DISCOVERY, "documents"),
        ("/.well-known/oauth-authorization-server", "documents"),
        ("/oauth2/token", "token"),
        ("/oauth2/introspect", "token"),
        ("/metrics", None),
    ],
)
def test_routes_are_limited_by_group_prefix(path: str, group: str | None) -> None:
    assert route_group(path) == group


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit(rate=-1, burst=1)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(rate=1, burst=0)
    with pytest.raises(ValueError, match="addresses"):
        RateLimits(max_addresses=0)


# -- flags ---------------------------------------------------------------------------------


def test_the_flags_and_their_variables_set_the_limits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSOT_HTTP_RATE_BURST", "7")
    monkeypatch.setenv("SSOT_HTTP_TOKEN_RATE_LIMIT", "0")
    monkeypatch.setenv("SSOT_KEY_PASSPHRASE", "a passphrase of 16+ characters")
    argv = ["serve", "--issuer", "http://127.0.0.1", "--audience", "a", "--data-dir", str(tmp_path)]
    argv += ["--http-rate-limit", "2.5"]
    argv += ["--http-rate-limit-addresses", "99"]
    ns = build_parser().parse_args(argv)

    limits = server_config(ns, issuer="http://127.0.0.1", audience="a").http_rate_limits

    assert limits.groups["documents"] == RateLimit(rate=2.5, burst=7)
    assert not limits.groups["token"].enabled
    assert limits.max_addresses == 99


# -- a real server -------------------------------------------------------------------------


@pytest.fixture
def limited(loop_thread: EventLoopThread, tmp_path: Path) -> Iterator[AuthHarness]:
    harness = start_harness(
        loop_thread, make_config(tmp_path, http_rate_limits=_limits(rate=0.5, burst=5))
    )
    yield harness
    harness.stop()


def _get(port: int, path: str, source: str) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_a_flood_gets_429_with_retry_after_and_another_address_is_not_slowed(
    limited: AuthHarness,
) -> None:
    port = limited.server.http_port
    statuses = [_get(port, JWKS, "127.0.0.1").status for _ in range(5)]
    assert statuses == [200] * 5  # the burst

    refused = _get(port, JWKS, "127.0.0.1")
    assert refused.status == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 2  # one request per 2 s
    assert refused.headers["Cache-Control"] == "no-store"
    assert _get(port, DISCOVERY, "127.0.0.1").status == 429  # one bucket per route group

    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            _get(port, JWKS, "127.0.0.1")

    flooders = [threading.Thread(target=flood, daemon=True) for _ in range(3)]
    for thread in flooders:
        thread.start()
    try:
        honest = []
        for _ in range(5):
            started = time.monotonic()
            response = _get(port, JWKS, "127.0.0.2")
            honest.append((response.status, time.monotonic() - started))
    finally:
        stop.set()
        for thread in flooders:
            thread.join()
    assert [status for status, _ in honest] == [200] * 5
    assert max(elapsed for _, elapsed in honest) < 1.0


def test_the_429_body_is_json_and_says_nothing_else(limited: AuthHarness) -> None:
    port = limited.server.http_port
    for _ in range(5):
        _get(port, DISCOVERY, "127.0.0.1")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", DISCOVERY)
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()

    assert response.status == 429
    assert body == {"error": "rate_limited", "error_description": "too many requests"}
    assert "Server" not in response.headers


def test_the_429_on_oauth_endpoints_carries_an_rfc_6749_code(
    loop_thread: EventLoopThread, tmp_path: Path
) -> None:
    harness = start_harness(
        loop_thread, make_config(tmp_path, http_rate_limits=_limits(rate=0.5, burst=2))
    )
    try:
        port = harness.server.http_port
        answers = []
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST",
                "/oauth2/token",
                body="grant_type=client_credentials",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            response = conn.getresponse()
            answers.append((response.status, response.headers, json.loads(response.read())))
            conn.close()
    finally:
        harness.stop()
    assert all(status != 429 for status, _, _ in answers[:2])  # the burst: the real answer
    status, headers, body = answers[2]
    assert status == 429
    assert body == {"error": "temporarily_unavailable", "error_description": "too many requests"}
    assert 1 <= int(headers["Retry-After"]) <= 2
    assert headers["Cache-Control"] == "no-store"
