"""Metrics of both servers, scraped over HTTP and read with prometheus_client's own parser.

A scripted scenario moves every counter the dashboard shows (logins good and bad, a
refresh, a grace repeat, a reuse detection, a throttled burst, a rotation, an attack
token, an auth outage); each is asserted to have moved by exactly what happened.
Labels stay bounded: no user, token, kid or peer address is ever a label value.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from auth_server.session_policy import SessionPolicy
from auth_server.throttle import ThrottlePolicy
from helpers import (
    AUDIENCE,
    ISSUER,
    Clock,
    EventLoopThread,
    bearer,
    make_config,
    mint,
    start_harness,
    wait_until,
)
from interceptors import CacheSettings
from protos import resource_pb2
from resource_server.app import ResourceServerConfig, build_server, open_verifier
from resource_server.ops import start_metrics

ROOT = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample at ``url``, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_importing_interceptors_loads_no_metrics_or_tracing_library() -> None:
    code = (
        "import sys, interceptors\n"
        "bad = [m for m in sys.modules if m.startswith(('prometheus_client', 'opentelemetry'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


@pytest.fixture
def loop() -> Iterator[EventLoopThread]:
    lt = EventLoopThread()
    yield lt
    lt.close()


def test_two_servers_in_one_process_count_only_their_own_events(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    a = start_harness(loop, make_config(tmp_path / "a"))
    b = start_harness(loop, make_config(tmp_path / "b"))
    try:
        a.add_user("alice", "correct horse battery")
        a.login("alice", "correct horse battery")
        with pytest.raises(grpc.RpcError):
            a.login("alice", "wrong password")
        on_a, on_b = scrape(a.server.metrics_url), scrape(b.server.metrics_url)
        assert value(on_a, "ssot_auth_logins_total", outcome="succeeded") == 1
        assert value(on_a, "ssot_auth_logins_total", outcome="bad_credentials") == 1
        assert value(on_b, "ssot_auth_logins_total", outcome="succeeded") == 0
        assert value(on_b, "ssot_auth_logins_total", outcome="bad_credentials") == 0
    finally:
        for h in (a, b):
            h.channel.close()
            h.stop()


def test_scripted_scenario_moves_every_counter_as_it_should(
    loop: EventLoopThread, tmp_path: Path
) -> None:
    clock = Clock(time.time())
    config = make_config(
        tmp_path,
        sessions=SessionPolicy(refresh_grace=10),
        throttle=ThrottlePolicy(per_user_address=3),
        readiness_interval=0.1,
        metrics_address="127.0.0.1:0",
    )
    auth = start_harness(loop, config, now=clock)
    resource_config = ResourceServerConfig(
        grpc_address="127.0.0.1:0",
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=auth.jwks_url,
        # Every unknown kid may be fetched at once: the outage shows as a failed fetch.
        key_cache=CacheSettings(cooldown=0),
    )
    verifier = open_verifier(resource_config)
    endpoint = start_metrics(verifier, "127.0.0.1:0")
    server, port = build_server(resource_config, verifier, observer=endpoint.observer)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub_call = channel.unary_unary(
        "/ssot.resource.v1.ResourceService/GetProtectedResource",
        request_serializer=resource_pb2.GetProtectedResourceRequest.SerializeToString,
        response_deserializer=resource_pb2.GetProtectedResourceResponse.FromString,
    )
    auth_stopped = False

    def call(token: str) -> grpc.StatusCode:
        try:
            stub_call(
                resource_pb2.GetProtectedResourceRequest(), metadata=bearer(token), timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    try:
        user_id = auth.add_user("alice", "correct horse battery", ("read",))
        auth.add_user("bob", "battery staple horse", ("read",))
        # Logins: one good, two bad, then a burst the user+address layer throttles.
        good = auth.login("alice", "correct horse battery")
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                auth.login("alice", "wrong password")
        throttled = 0
        for _ in range(4):
            try:
                auth.login("alice", "wrong password")
            except grpc.RpcError as exc:
                throttled += exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert throttled >= 1
        # A refresh, its repeat within grace, then the same token after grace: reuse.
        auth.refresh(good.refresh_token)
        auth.refresh(good.refresh_token)
        clock.advance(11)
        with pytest.raises(grpc.RpcError):
            auth.refresh(good.refresh_token)
        clock.now = time.time()  # back in step with the resource server's clock
        # A rotation the readiness probe sees (the next key, not signing yet).
        auth.server.components.keys.rotate(activate_after=3600)

        # Alice's address is throttled for her for the window; Bob logs in.
        fresh = auth.login("bob", "battery staple horse").access_token
        assert call(fresh) == grpc.StatusCode.OK
        assert call(fresh) == grpc.StatusCode.OK  # checked again, now remembered
        assert call(fresh) == grpc.StatusCode.OK  # the verified-token cache answers
        attack = fresh.rsplit(".", 1)[0] + ".AAAA"
        assert call(attack) == grpc.StatusCode.UNAUTHENTICATED
        key = auth.signing_key()
        stranger = mint(key.private_key, kid="no-such-kid", algorithm=key.algorithm)
        assert call(stranger) == grpc.StatusCode.UNAUTHENTICATED  # fetched, not there
        assert call(stranger) == grpc.StatusCode.UNAUTHENTICATED  # remembered: no fetch

        assert wait_until(
            lambda: (
                value(scrape(auth.server.metrics_url), "ssot_auth_signing_keys", state="next") == 1
            )
        )
        on_auth = scrape(auth.server.metrics_url)
        # The auth service is stopped: an unknown kid now meets a failed fetch.
        auth.channel.close()
        auth.stop()
        auth_stopped = True
        other = mint(key.private_key, kid="another-kid", algorithm=key.algorithm)
        assert call(other) == grpc.StatusCode.UNAVAILABLE
        on_resource = scrape(f"http://127.0.0.1:{endpoint.port}/metrics")
    finally:
        channel.close()
        server.stop(0).wait()
        endpoint.close()
        verifier.close()
        if not auth_stopped:
            auth.channel.close()
            auth.stop()

    v = value
    assert v(on_auth, "ssot_auth_logins_total", outcome="succeeded") == 2
    assert v(on_auth, "ssot_auth_logins_total", outcome="bad_credentials") == 2 + 4 - throttled
    assert v(on_auth, "ssot_auth_logins_total", outcome="throttled") == throttled
    assert v(on_auth, "ssot_auth_logins_throttled_total", layer="user_address") == throttled
    assert v(on_auth, "ssot_auth_refreshes_total", outcome="rotated") == 1
    assert v(on_auth, "ssot_auth_refreshes_total", outcome="grace_repeat") == 1
    assert v(on_auth, "ssot_auth_refreshes_total", outcome="reuse_detected") == 1
    assert v(on_auth, "ssot_auth_sessions_revoked_total", reason="reuse") == 1
    assert (
        v(on_auth, "ssot_auth_tokens_issued_total", grant_type="password", algorithm="RS256") == 2
    )
    assert (
        v(on_auth, "ssot_auth_tokens_issued_total", grant_type="refresh_token", algorithm="RS256")
        == 2
    )
    login = "/ssot.auth.v1.AuthService/Login"
    assert v(on_auth, "ssot_auth_rpcs_total", method=login, code="OK") == 2
    assert (
        v(on_auth, "ssot_auth_rpcs_total", method=login, code="UNAUTHENTICATED")
        == 4 - throttled + 2
    )
    assert v(on_auth, "ssot_auth_rpcs_total", method=login, code="RESOURCE_EXHAUSTED") == throttled
    assert v(on_auth, "ssot_auth_rpc_seconds_count", method=login) == 8
    assert v(on_auth, "ssot_auth_signing_keys", state="current") == 1
    assert v(on_auth, "ssot_auth_next_key_change_seconds") > 0
    assert v(on_auth, "ssot_auth_signing_key_age_seconds") > 0
    # Every login that was not throttled ran argon2 once (users added by the test: not counted).
    assert v(on_auth, "ssot_auth_password_hash_seconds_count") == 8 - throttled
    assert v(on_auth, "ssot_auth_ready") == 1

    method = "/ssot.resource.v1.ResourceService/GetProtectedResource"
    assert v(on_resource, "ssot_verifier_verifications_total", method=method, result="ok") == 3
    assert (
        v(on_resource, "ssot_verifier_verifications_total", method=method, result="bad_signature")
        == 1
    )
    assert (
        v(on_resource, "ssot_verifier_verifications_total", method=method, result="unknown_key")
        == 2
    )
    assert (
        v(
            on_resource,
            "ssot_verifier_verifications_total",
            method=method,
            result="keys_unavailable",
        )
        == 1
    )
    assert v(on_resource, "ssot_verifier_verify_seconds_count") == 7
    assert v(on_resource, "ssot_verifier_token_cache_lookups_total", outcome="hit") == 1
    assert v(on_resource, "ssot_verifier_key_updates_total", source="fetch", outcome="error") >= 1
    assert v(on_resource, "ssot_verifier_key_updates_total", source="fetch", outcome="ok") >= 2
    assert v(on_resource, "ssot_verifier_unknown_kid_refetches_suppressed_total") >= 1
    assert v(on_resource, "ssot_verifier_key_set_loaded") == 1

    # Bounded labels: nothing that names a user, a token, a kid or a peer.
    forbidden = {
        user_id,
        "alice",
        "bob",
        fresh,
        attack,
        "no-such-kid",
        "another-kid",
        key.kid,
        "127.0.0.1",
    }
    for samples in (on_auth, on_resource):
        for _, labels in samples:
            for _, label_value in labels:
                assert not any(bad in label_value for bad in forbidden), label_value
