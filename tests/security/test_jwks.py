"""The key set side: kid floods, and hostile JWKS answers that must never replace good keys.

The resource servers here fetch keys over HTTP from a JWKS site we control, on an
injected clock (no background thread), so each case can age the cached set past its
refresh point and make the next request fetch again. Whatever the site then answers
(too big, malformed, too slow, redirected, or a set with symmetric, private,
duplicate-kid or weak keys) must be refused, and the last good set must stay in force.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import grpc
import jwt
import pytest

from helpers import AUDIENCE, ISSUER, AuthHarness, Clock, EventLoopThread, wait_until
from interceptors import CacheSettings, HttpJwksSource, KeyCache, TokenPolicy
from security.kit import (
    ATTACKER,
    FACES,
    HONEST_USER,
    PASSWORD,
    REQUEST,
    Issuer,
    Target,
    b64u,
    bearer,
    compact,
    issuer_from_auth,
    serve_verifier,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
COOLDOWN = 30.0
MAX_AGE = 300  # the auth service's default Cache-Control max-age
REFRESH_AFTER = MAX_AGE * 0.8 + 1  # past the cache's refresh point, before expiry
FETCH_TIMEOUT = 0.5


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before the status line
    trickle: float = 0.0  # between body bytes; no Content-Length


class JwksSite(http.server.ThreadingHTTPServer):
    """A JWKS endpoint whose answer the test chooses; a second path counts stray visits."""

    daemon_threads = True

    def __init__(self, good: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.good = good
        self.answer = Answer(body=good)
        self.elsewhere_hits = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/jwks.json"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: JwksSite
    protocol_version: ClassVar[str] = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path != "/jwks.json":
            self.server.elsewhere_hits += 1
        answer = self.server.answer if self.path == "/jwks.json" else Answer(body=b"{}")
        try:
            time.sleep(answer.delay)
            self.send_response(answer.status)
            headers = {"Cache-Control": f"max-age={MAX_AGE}", **answer.headers}
            if not answer.trickle and "Content-Length" not in headers:
                headers["Content-Length"] = str(len(answer.body))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if answer.trickle:
                for index in range(len(answer.body)):
                    self.wfile.write(answer.body[index : index + 1])
                    self.wfile.flush()
                    time.sleep(answer.trickle)
            else:
                self.wfile.write(answer.body)
        except OSError:
            pass  # the verifier hung up on us, as it should

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class JwksTarget:
    target: Target
    site: JwksSite
    clock: Clock

    def fresh_token(self) -> str:
        """A valid token the verifier has not cached, so checking it needs the key set."""
        return self.target.issuer.token(sub="user-honest", username=HONEST_USER)

    def wait_for_fetches(self, count: int) -> None:
        fetched = wait_until(lambda: self.target.keys.stats.fetches >= count, timeout=10)
        assert fetched, "the fetch never finished"


@contextlib.contextmanager
def jwks_target(
    loop_thread: EventLoopThread, auth: AuthHarness, *, aio: bool, fetch_timeout: float
) -> Iterator[JwksTarget]:
    """A resource server whose key cache fetches from a JwksSite, on an injected clock."""
    issuer = issuer_from_auth(auth)
    site = JwksSite(issuer.jwks_body)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    clock = Clock(1_000_000.0)
    keys = KeyCache(
        HttpJwksSource(site.url),
        CacheSettings(cooldown=COOLDOWN, fetch_timeout=fetch_timeout),
        now=clock,
        background=False,
    )
    policy = TokenPolicy(issuer=ISSUER, audience=AUDIENCE)
    try:
        with serve_verifier(loop_thread, keys, policy, aio=aio) as channel:
            target = Target(
                issuer=issuer,
                keys=keys,
                channel=channel,
                aio=aio,
                honest_token=auth.login(HONEST_USER, PASSWORD).access_token,
                honest_name=HONEST_USER,
            )
            target.assert_serving()
            yield JwksTarget(target=target, site=site, clock=clock)
    finally:
        keys.close()
        site.shutdown()
        site.server_close()


@pytest.fixture(scope="module", params=FACES)
def jwks(
    request: pytest.FixtureRequest, loop_thread: EventLoopThread, auth_rs256: AuthHarness
) -> Iterator[JwksTarget]:
    """For hostile answers: a short fetch timeout, so slow answers cost little test time."""
    with jwks_target(
        loop_thread, auth_rs256, aio=request.param, fetch_timeout=FETCH_TIMEOUT
    ) as target:
        yield target


@pytest.fixture(scope="module", params=FACES)
def flooded(
    request: pytest.FixtureRequest, loop_thread: EventLoopThread, auth_rs256: AuthHarness
) -> Iterator[JwksTarget]:
    """For floods: the default fetch timeout, so a fetch under load is never cut short."""
    with jwks_target(loop_thread, auth_rs256, aio=request.param, fetch_timeout=3.0) as target:
        yield target


# -- an unknown-kid flood -------------------------------------------------------------------


def _random_kid_tokens(issuer: Issuer, count: int) -> list[str]:
    """Tokens naming kids nobody has; the signature is never reached, so it is random."""
    claims = issuer.claims()
    return [
        compact(issuer.header(kid=uuid.uuid4().hex), claims, os.urandom(256)) for _ in range(count)
    ]


def _flood(target: Target, tokens: list[str], in_flight: int = 64) -> set[grpc.StatusCode]:
    """Send every token, ``in_flight`` calls at a time (a client within the stream limit)."""
    codes = set()
    call_rpc = target.stub.GetProtectedResource.future
    for start in range(0, len(tokens), in_flight):
        calls = [
            call_rpc(REQUEST, metadata=bearer(token), timeout=30)
            for token in tokens[start : start + in_flight]
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call.result()
            codes.add(info.value.code())  # type: ignore[attr-defined]
    return codes


@pytest.mark.slow
@pytest.mark.parametrize(
    ("outage", "count", "expected"),
    [
        pytest.param(False, 10_000, {UNAUTHENTICATED}, id="source-up"),
        # Once a fetch has failed, an unknown kid may be a new key: UNAVAILABLE (retryable).
        pytest.param(True, 2_000, {UNAUTHENTICATED, UNAVAILABLE}, id="source-down"),
    ],
)
def test_an_unknown_kid_flood_costs_at_most_one_fetch_per_cooldown(
    flooded: JwksTarget, outage: bool, count: int, expected: set[grpc.StatusCode]
) -> None:
    jwks = flooded
    t = jwks.target
    jwks.site.answer = Answer(status=500, body=b"down") if outage else Answer(body=jwks.site.good)
    before = t.keys.stats.fetches
    batches, step = 10, 10.0  # the flood spans 100 s of the cache's clock
    codes: set[grpc.StatusCode] = set()
    for _ in range(batches):
        codes |= _flood(t, _random_kid_tokens(t.issuer, count // batches))
        jwks.clock.advance(step)
    assert codes <= expected
    if outage:
        assert UNAVAILABLE in codes
    windows = int(batches * step // COOLDOWN) + 1
    assert t.keys.stats.fetches - before <= windows
    jwks.site.answer = Answer(body=jwks.site.good)
    jwks.clock.advance(COOLDOWN)
    t.assert_serving()
    assert t.call(bearer(jwks.fresh_token())).user.username == HONEST_USER


# -- hostile answers --------------------------------------------------------------------------


def _jwk(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name("RS256")
    jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
    jwk.update({"kid": kid, "alg": "RS256", "use": "sig", **extra})
    return jwk


def _keys(*entries: Any) -> bytes:
    return json.dumps({"keys": list(entries)}).encode()


def _real(issuer: Issuer, **changes: Any) -> dict[str, Any]:
    return {**issuer.jwk, **changes}


def _private_jwk() -> dict[str, Any]:
    jwk = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(ATTACKER.rsa))
    jwk.update({"kid": "attacker", "alg": "RS256", "use": "sig"})
    return jwk


HOSTILE: list[Any] = [
    pytest.param(lambda i: Answer(body=b" " * (1024 * 1024)), id="huge-with-length"),
    pytest.param(
        lambda i: Answer(
            body=b"[" + b" " * (300 * 1024) + b"]", trickle=0.0, headers={"Connection": "close"}
        ),
        id="huge",
    ),
    pytest.param(lambda i: Answer(body=b"<html>not json</html>"), id="not-json"),
    pytest.param(lambda i: Answer(body=b"[]"), id="json-array"),
    pytest.param(lambda i: Answer(body=b'{"keys":{}}'), id="keys-not-a-list"),
    pytest.param(lambda i: Answer(body=_keys()), id="no-keys"),
    pytest.param(
        lambda i: Answer(body=b'{"keys":' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        id="deeply-nested",
    ),
    pytest.param(
        lambda i: Answer(body=_keys(*(_real(i, kid=f"k{n}") for n in range(101)))),
        id="too-many-keys",
    ),
    pytest.param(
        lambda i: Answer(body=i.jwks_body, delay=FETCH_TIMEOUT * 3), id="slower-than-the-timeout"
    ),
    pytest.param(lambda i: Answer(body=i.jwks_body, trickle=0.05), id="trickling-past-the-timeout"),
    pytest.param(lambda i: Answer(status=500, body=b"oops"), id="http-500"),
    pytest.param(lambda i: Answer(status=404, body=b""), id="http-404"),
    pytest.param(lambda i: Answer(status=302, headers={"Location": "/elsewhere"}), id="redirect"),
    pytest.param(
        lambda i: Answer(
            body=_keys(_real(i), {"kty": "oct", "kid": "attacker", "k": b64u(b"secret")})
        ),
        id="symmetric-key",
    ),
    pytest.param(lambda i: Answer(body=_keys(_real(i), _private_jwk())), id="private-key"),
    pytest.param(
        lambda i: Answer(body=_keys(_real(i, d=b64u(b"leak")))), id="private-member-on-the-real-key"
    ),
    pytest.param(lambda i: Answer(body=_keys(_real(i), _real(i))), id="duplicate-kid"),
    pytest.param(
        lambda i: Answer(body=_keys(_real(i), _jwk(ATTACKER.rsa, i.kid))),
        id="duplicate-kid-other-key",
    ),
    pytest.param(
        lambda i: Answer(body=_keys(_real(i), _jwk(ATTACKER.rsa_1024, "attacker"))),
        id="weak-rsa-1024",
    ),
    pytest.param(lambda i: Answer(body=_keys(_real(i, use="enc"))), id="only-an-encryption-key"),
    pytest.param(
        lambda i: Answer(body=_keys(_real(i, key_ops=["encrypt"]))), id="only-encrypt-key-ops"
    ),
    pytest.param(
        lambda i: Answer(
            body=_keys(
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "kid": "attacker",
                    "x": b64u(b"\x01" * 32),
                    "y": b64u(b"\x02" * 32),
                }
            )
        ),
        id="only-an-off-curve-ec-key",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_jwks_answer_is_refused_and_the_last_good_set_stays(
    jwks: JwksTarget, hostile: Callable[[Issuer], Answer]
) -> None:
    t, site, clock = jwks.target, jwks.site, jwks.clock
    # Start from a freshly loaded good set.
    site.answer = Answer(body=site.good)
    clock.advance(REFRESH_AFTER)
    assert t.call(bearer(jwks.fresh_token())).user.username == HONEST_USER
    good = t.keys.key_set
    assert good is not None and t.issuer.kid in good
    before = t.keys.stats

    site.answer = hostile(t.issuer)
    clock.advance(REFRESH_AFTER)
    # This request makes the cache fetch again (and waits at most the fetch timeout).
    started = time.monotonic()
    assert t.call(bearer(jwks.fresh_token())).user.username == HONEST_USER
    assert time.monotonic() - started < FETCH_TIMEOUT + 2
    jwks.wait_for_fetches(before.fetches + 1)

    after = t.keys.stats
    assert after.fetches == before.fetches + 1
    assert after.fetch_failures == before.fetch_failures + 1
    assert t.keys.key_set is good
    assert site.elsewhere_hits == 0
    # What the hostile set would have let in is still refused.
    t.refuse(t.issuer.sign(key=ATTACKER.rsa), fetches=0)
    # An unknown kid while the source fails may be a new key: UNAVAILABLE, retryable.
    forged = t.issuer.sign(t.issuer.header(kid="attacker"), key=ATTACKER.rsa)
    t.refuse(forged, code=grpc.StatusCode.UNAVAILABLE, fetches=0)
