"""Key sources: HTTP JWKS, OIDC discovery, the AuthService RPCs, and a static set."""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from helpers import FakeAuthService, serve_fake_auth
from interceptors import (
    AuthError,
    AuthServiceSource,
    DiscoverySource,
    FetchResult,
    GrpcJwksSource,
    HttpJwksSource,
    KeySetError,
    KeySourceError,
    RevocationBatch,
    RevocationStreamError,
    StaticSource,
)
from protos import auth_pb2, auth_pb2_grpc


@contextlib.contextmanager
def raises_logged(
    error: type[AuthError], *, match: str
) -> Iterator[pytest.ExceptionInfo[AuthError]]:
    """Like ``pytest.raises(error, match=...)``, matching the internal ``log_detail``.

    ``str()`` of these errors is only the safe wire message, so ``match=`` cannot see why.
    """
    with pytest.raises(error) as caught:
        yield caught
    assert re.search(match, caught.value.log_detail), caught.value.log_detail


_RSA_JWK = {
    **RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(), as_dict=True
    ),
    "kid": "rsa-1",
    "alg": "RS256",
    "use": "sig",
}
_RSA_JWK.pop("key_ops", None)
_EC_JWK = {
    **ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True),
    "kid": "ec-1",
    "alg": "ES256",
    "use": "sig",
}
_EC_JWK.pop("key_ops", None)
JWKS = {"keys": [_RSA_JWK]}


# -- a real HTTP server on 127.0.0.1:0 -------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: bool = True


def json_reply(document: Any, **headers: str) -> Reply:
    return Reply(body=json.dumps(document).encode(), headers=headers)


class HttpServer:
    """Serves ``routes`` (path -> Reply, or a callable of the request headers)."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply | Callable[[dict[str, str]], Reply]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.hold = threading.Event()
        self.hold.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = dict(self.headers.items())
                server.requests.append((self.path, headers))
                server.hold.wait(10)
                route = server.routes.get(self.path, Reply(status=404))
                reply = route(headers) if callable(route) else route
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.content_length:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def count(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def close(self) -> None:
        self.hold.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.close()


# -- HttpJwksSource -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "max_age"),
    [
        pytest.param({"Cache-Control": "public, max-age=300"}, 300.0, id="max-age"),
        pytest.param({"Cache-Control": 'max-age="60"'}, 60.0, id="quoted-max-age"),
        pytest.param({"Cache-Control": "max-age=300", "Age": "100"}, 200.0, id="minus-age"),
        pytest.param({"Cache-Control": "max-age=30", "Age": "100"}, 0.0, id="older-than-max-age"),
        pytest.param({"Cache-Control": "no-cache"}, 0.0, id="no-cache"),
        pytest.param({"Cache-Control": "max-age=300, no-store"}, 0.0, id="no-store"),
        pytest.param({"Cache-Control": "max-age=soon"}, None, id="malformed"),
        pytest.param({"Cache-Control": "public"}, None, id="no-max-age"),
        pytest.param({}, None, id="no-cache-control"),
    ],
)
def test_http_source_returns_the_document_and_its_max_age(
    http_server: HttpServer, headers: dict[str, str], max_age: float | None
) -> None:
    http_server.routes["/jwks"] = json_reply(JWKS, **headers)

    result = HttpJwksSource(f"{http_server.base}/jwks").fetch(3.0)

    assert result == FetchResult(document=JWKS, max_age=max_age)


def test_http_source_revalidates_with_the_etag_and_a_304_keeps_the_document(
    http_server: HttpServer,
) -> None:
    def reply(headers: dict[str, str]) -> Reply:
        if headers.get("If-None-Match") == '"v1"':
            return Reply(status=304, headers={"Cache-Control": "max-age=120"})
        return json_reply(JWKS, ETag='"v1"', **{"Cache-Control": "max-age=60"})

    http_server.routes["/jwks"] = reply
    source = HttpJwksSource(f"{http_server.base}/jwks")

    first = source.fetch(3.0)
    second = source.fetch(3.0)

    assert first == FetchResult(document=JWKS, max_age=60.0)
    assert second == FetchResult(document=JWKS, max_age=120.0)
    assert "If-None-Match" not in http_server.requests[0][1]
    assert http_server.requests[1][1]["If-None-Match"] == '"v1"'


def test_http_source_refuses_a_304_it_did_not_ask_for(http_server: HttpServer) -> None:
    http_server.routes["/jwks"] = Reply(status=304)

    with raises_logged(KeySetError, match="304"):
        HttpJwksSource(f"{http_server.base}/jwks").fetch(3.0)


def test_http_source_drops_the_etag_when_a_new_answer_has_none(http_server: HttpServer) -> None:
    replies = iter([json_reply(JWKS, ETag='"v1"'), json_reply(JWKS), json_reply(JWKS)])
    http_server.routes["/jwks"] = lambda _headers: next(replies)
    source = HttpJwksSource(f"{http_server.base}/jwks")

    for _ in range(3):
        source.fetch(3.0)

    sent = [headers.get("If-None-Match") for _, headers in http_server.requests]
    assert sent == [None, '"v1"', None]


@pytest.mark.parametrize("content_length", [True, False], ids=["declared", "streamed"])
def test_http_source_refuses_a_body_over_the_size_cap(
    http_server: HttpServer, content_length: bool
) -> None:
    body = json.dumps({"keys": [], "pad": "x" * 2000}).encode()
    http_server.routes["/jwks"] = Reply(body=body, content_length=content_length)

    accepted = HttpJwksSource(f"{http_server.base}/jwks", max_bytes=len(body)).fetch(3.0)
    with raises_logged(KeySetError, match="more than"):
        HttpJwksSource(f"{http_server.base}/jwks", max_bytes=len(body) - 1).fetch(3.0)

    assert accepted.document["pad"] == "x" * 2000


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_http_source_does_not_follow_redirects(http_server: HttpServer, status: int) -> None:
    http_server.routes["/jwks"] = Reply(status=status, headers={"Location": "/elsewhere"})
    http_server.routes["/elsewhere"] = json_reply(JWKS)

    with raises_logged(KeySourceError, match=str(status)) as caught:
        HttpJwksSource(f"{http_server.base}/jwks").fetch(3.0)

    assert type(caught.value) is KeySourceError

    assert http_server.count("/elsewhere") == 0


@pytest.mark.parametrize(
    ("reply", "error", "match"),
    [
        pytest.param(Reply(status=500), KeySourceError, "HTTP 500", id="server-error"),
        pytest.param(Reply(status=404), KeySourceError, "HTTP 404", id="not-found"),
        pytest.param(Reply(status=204), KeySourceError, "HTTP 204", id="no-content"),
        pytest.param(Reply(body=b"<html>"), KeySetError, "not answer JSON", id="not-json"),
        pytest.param(Reply(body=b"\xff\xfe\x00"), KeySetError, "not answer JSON", id="not-text"),
        pytest.param(json_reply([JWKS]), KeySetError, "JSON object", id="json-array"),
    ],
)
def test_http_source_failures_name_the_source_or_the_answer(
    http_server: HttpServer, reply: Reply, error: type[KeySourceError], match: str
) -> None:
    http_server.routes["/jwks"] = reply

    with raises_logged(KeySourceError, match=match) as caught:
        HttpJwksSource(f"{http_server.base}/jwks").fetch(3.0)

    assert type(caught.value) is error


@pytest.mark.slow
def test_http_source_gives_up_at_the_timeout(http_server: HttpServer) -> None:
    http_server.routes["/jwks"] = json_reply(JWKS)
    http_server.hold.clear()
    started = time.monotonic()

    with pytest.raises(KeySourceError) as caught:
        HttpJwksSource(f"{http_server.base}/jwks").fetch(0.2)

    assert time.monotonic() - started < 2.0
    assert type(caught.value) is KeySourceError
    assert caught.value.__cause__ is not None


def test_http_source_reports_a_refused_connection(http_server: HttpServer) -> None:
    url = f"{http_server.base}/jwks"
    http_server.close()

    with raises_logged(KeySourceError, match="cannot fetch") as caught:
        HttpJwksSource(url).fetch(1.0)

    assert type(caught.value) is KeySourceError


def test_http_source_messages_hide_user_info_and_query(http_server: HttpServer) -> None:
    http_server.routes["/jwks"] = Reply(status=500)
    url = f"http://user:hunter2@127.0.0.1:{http_server.port}/jwks?token=abc"

    with pytest.raises(KeySourceError) as caught:
        HttpJwksSource(url).fetch(3.0)

    assert "hunter2" not in caught.value.log_detail
    assert "token=abc" not in caught.value.log_detail


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("https://issuer.example.com/jwks", id="https"),
        pytest.param("http://127.0.0.1:8080/jwks", id="ipv4-loopback"),
        pytest.param("http://127.9.9.9/jwks", id="ipv4-loopback-range"),
        pytest.param("http://[::1]:8080/jwks", id="ipv6-loopback"),
        pytest.param("http://localhost:8080/jwks", id="localhost"),
        pytest.param("http://LOCALHOST/jwks", id="localhost-upper-case"),
    ],
)
def test_acceptable_urls(url: str) -> None:
    assert HttpJwksSource(url).watch() is None
    assert DiscoverySource(url).watch() is None


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://issuer.example.com/jwks", id="http-to-a-remote-host"),
        pytest.param("http://10.0.0.1/jwks", id="http-to-a-private-address"),
        pytest.param("http://localhost.example.com/jwks", id="lookalike-localhost"),
        pytest.param("file:///etc/passwd", id="file"),
        pytest.param("ftp://127.0.0.1/jwks", id="ftp"),
        pytest.param("/.well-known/jwks.json", id="relative"),
        pytest.param("https:///jwks", id="no-host"),
        pytest.param("https://issuer.example.com:99999/jwks", id="bad-port"),
    ],
)
def test_unacceptable_urls_are_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError):
        HttpJwksSource(url)
    with pytest.raises(ValueError):
        DiscoverySource(url)


def test_allow_insecure_http_permits_plain_http_to_any_host() -> None:
    HttpJwksSource("http://issuer.example.com/jwks", allow_insecure_http=True)
    DiscoverySource("http://issuer.example.com", allow_insecure_http=True)
    with pytest.raises(ValueError):
        HttpJwksSource("file:///etc/passwd", allow_insecure_http=True)


# -- DiscoverySource ------------------------------------------------------------------------


def _discovery(issuer: str, jwks_uri: str) -> Reply:
    return json_reply({"issuer": issuer, "jwks_uri": jwks_uri, "response_types_supported": []})


@pytest.mark.parametrize("suffix", ["", "/"], ids=["no-trailing-slash", "trailing-slash"])
def test_discovery_finds_the_jwks_uri_once_and_fetches_it(
    http_server: HttpServer, suffix: str
) -> None:
    issuer = http_server.base + suffix
    http_server.routes["/.well-known/openid-configuration"] = _discovery(
        issuer, f"{http_server.base}/keys"
    )
    http_server.routes["/keys"] = json_reply(JWKS, **{"Cache-Control": "max-age=90"})
    source = DiscoverySource(issuer)

    results = [source.fetch(3.0), source.fetch(3.0)]

    assert results == [FetchResult(document=JWKS, max_age=90.0)] * 2
    assert http_server.count("/.well-known/openid-configuration") == 1
    assert http_server.count("/keys") == 2


@pytest.mark.parametrize(
    ("config", "match"),
    [
        pytest.param(lambda base: {"issuer": base + "/", "jwks_uri": base + "/keys"}, "issuer",
                     id="issuer-differs-by-a-slash"),
        pytest.param(lambda base: {"issuer": "https://evil.example", "jwks_uri": base + "/keys"},
                     "issuer", id="other-issuer"),
        pytest.param(lambda base: {"issuer": base}, "jwks_uri", id="no-jwks-uri"),
        pytest.param(lambda base: {"issuer": base, "jwks_uri": "http://evil.example/keys"},
                     "jwks_uri", id="plain-http-jwks-uri"),
        pytest.param(lambda base: {"issuer": base, "jwks_uri": "file:///etc/passwd"},
                     "jwks_uri", id="file-jwks-uri"),
    ],
)  # fmt: skip
def test_discovery_refuses_a_bad_configuration(
    http_server: HttpServer, config: Callable[[str], Any], match: str
) -> None:
    http_server.routes["/.well-known/openid-configuration"] = json_reply(config(http_server.base))
    http_server.routes["/keys"] = json_reply(JWKS)

    with raises_logged(KeySetError, match=match):
        DiscoverySource(http_server.base).fetch(3.0)

    assert http_server.count("/keys") == 0


def test_discovery_is_redone_after_a_failed_fetch(http_server: HttpServer) -> None:
    config = "/.well-known/openid-configuration"
    http_server.routes[config] = _discovery(http_server.base, f"{http_server.base}/old")
    http_server.routes["/old"] = Reply(status=404)
    http_server.routes["/new"] = json_reply(JWKS)
    source = DiscoverySource(http_server.base)
    with pytest.raises(KeySourceError):
        source.fetch(3.0)
    http_server.routes[config] = _discovery(http_server.base, f"{http_server.base}/new")

    result = source.fetch(3.0)

    assert result.document == JWKS
    assert http_server.count(config) == 2


def test_rediscovery_of_the_same_jwks_uri_keeps_its_etag(http_server: HttpServer) -> None:
    config = "/.well-known/openid-configuration"
    http_server.routes[config] = _discovery(http_server.base, f"{http_server.base}/keys")
    replies = iter([json_reply(JWKS, ETag='"v1"'), Reply(status=503), Reply(status=304)])
    http_server.routes["/keys"] = lambda _headers: next(replies)
    source = DiscoverySource(http_server.base)
    source.fetch(3.0)
    with pytest.raises(KeySourceError):
        source.fetch(3.0)

    result = source.fetch(3.0)

    assert result.document == JWKS
    assert http_server.requests[-1][1]["If-None-Match"] == '"v1"'
    assert http_server.count(config) == 2


# -- AuthServiceSource against a real grpc.server ----------------------------------------------


def _jwk_message(jwk: dict[str, Any]) -> auth_pb2.Jwk:
    return auth_pb2.Jwk(
        **{k: v for k, v in jwk.items() if k in auth_pb2.Jwk.DESCRIPTOR.fields_by_name}
    )


@pytest.fixture
def grpc_server() -> Iterator[tuple[FakeAuthService, str]]:
    servicer = FakeAuthService(
        auth_pb2.JwkSet(keys=[_jwk_message(_RSA_JWK)], max_age_seconds=300, etag="1")
    )
    server, port = serve_fake_auth(servicer)
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0).wait()


def test_grpc_fetch_converts_messages_to_jwks_without_empty_fields(
    grpc_server: tuple[FakeAuthService, str],
) -> None:
    servicer, target = grpc_server
    servicer.publish(
        auth_pb2.JwkSet(keys=[_jwk_message(_RSA_JWK), _jwk_message(_EC_JWK)], max_age_seconds=45)
    )
    source = AuthServiceSource(target)
    try:
        result = source.fetch(3.0)
    finally:
        source.close()

    assert result.max_age == 45.0
    assert result.document == {"keys": [_RSA_JWK, _EC_JWK]}
    assert "y" not in result.document["keys"][0]


def test_grpc_fetch_without_max_age_has_no_caching_hint(
    grpc_server: tuple[FakeAuthService, str],
) -> None:
    servicer, target = grpc_server
    servicer.publish(auth_pb2.JwkSet(keys=[_jwk_message(_RSA_JWK)]))
    with grpc.insecure_channel(target) as channel:
        result = AuthServiceSource(channel=channel).fetch(3.0)

    assert result.max_age is None


@pytest.mark.slow
def test_grpc_fetch_from_a_dead_server_fails_within_the_deadline() -> None:
    source = AuthServiceSource("127.0.0.1:1")
    started = time.monotonic()
    try:
        with raises_logged(KeySourceError, match="GetJwks failed"):
            source.fetch(0.5)
    finally:
        source.close()

    assert time.monotonic() - started < 3.0


def test_grpc_watch_yields_the_current_set_then_every_change_until_cancelled(
    grpc_server: tuple[FakeAuthService, str],
) -> None:
    servicer, target = grpc_server
    source = AuthServiceSource(target)
    watch = source.watch()
    received: list[FetchResult] = []
    ended = threading.Event()

    def follow() -> None:
        for result in watch:
            received.append(result)
            if len(received) == 1:
                servicer.publish(auth_pb2.JwkSet(keys=[_jwk_message(_EC_JWK)], max_age_seconds=9))
        ended.set()

    thread = threading.Thread(target=follow)
    thread.start()
    deadline = time.monotonic() + 5
    while len(received) < 2 and time.monotonic() < deadline:
        ended.wait(0.01)
    watch.cancel()
    thread.join(5)
    source.close()

    assert ended.is_set()
    assert [r.document["keys"][0]["kid"] for r in received] == ["rsa-1", "ec-1"]
    assert received[1].max_age == 9.0


def test_grpc_watch_raises_a_key_source_error_when_the_server_goes(
    grpc_server: tuple[FakeAuthService, str],
) -> None:
    servicer, _ = grpc_server
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    source = AuthServiceSource(f"127.0.0.1:{port}")
    stream = iter(source.watch())
    first = next(stream)

    server.stop(0).wait()
    with raises_logged(KeySourceError, match="WatchJwks") as caught:
        next(stream)
    source.close()

    assert type(caught.value) is KeySourceError

    assert first.document["keys"][0]["kid"] == "rsa-1"


def test_grpc_source_needs_exactly_one_of_target_and_channel() -> None:
    with pytest.raises(ValueError):
        AuthServiceSource()
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(ValueError):
            AuthServiceSource("127.0.0.1:1", channel=channel)
        with pytest.raises(ValueError):
            AuthServiceSource(channel=channel, credentials=grpc.ssl_channel_credentials())


def test_grpc_source_closes_only_the_channel_it_opened(
    grpc_server: tuple[FakeAuthService, str],
) -> None:
    _, target = grpc_server
    with grpc.insecure_channel(target) as channel:
        borrowed = AuthServiceSource(channel=channel)
        borrowed.close()
        assert borrowed.fetch(3.0).document["keys"][0]["kid"] == "rsa-1"
    owned = AuthServiceSource(target)
    owned.close()
    with raises_logged(KeySourceError, match="channel closed"):
        owned.fetch(3.0)
    with raises_logged(KeySourceError, match="channel closed"):
        owned.watch()
    with raises_logged(RevocationStreamError, match="channel closed"):
        owned.watch_revocations()


class RevokingAuthService(FakeAuthService):
    """Also serves WatchRevocations: one full list, then nothing until the call ends."""

    def WatchRevocations(
        self, request: auth_pb2.WatchRevocationsRequest, context: Any
    ) -> Iterator[auth_pb2.RevocationUpdate]:
        revoked = auth_pb2.RevokedSession(session_id="sid-1", expires_at=1_700_000_000)
        yield auth_pb2.RevocationUpdate(full=True, sessions=[revoked])
        while context.is_active():
            time.sleep(0.05)


def test_the_revocation_stream_fails_with_a_revocation_error_never_a_key_error() -> None:
    server, port = serve_fake_auth(RevokingAuthService(auth_pb2.JwkSet()))
    source = AuthServiceSource(f"127.0.0.1:{port}")
    stream = iter(source.watch_revocations())
    first = next(stream)

    server.stop(0).wait()
    with raises_logged(RevocationStreamError, match="WatchRevocations stream broke") as caught:
        next(stream)
    source.close()

    assert first == RevocationBatch(full=True, sessions={"sid-1": 1_700_000_000.0})
    assert not isinstance(caught.value, KeySourceError)


def test_grpc_jwks_source_is_the_old_name_of_the_auth_service_source() -> None:
    assert GrpcJwksSource is AuthServiceSource


def test_grpc_source_warns_about_plaintext_to_a_remote_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    AuthServiceSource("auth.example.com:50051").close()
    AuthServiceSource("127.0.0.1:50051").close()

    warnings = [r for r in caplog.records if "plaintext" in r.getMessage()]
    assert len(warnings) == 1
    assert "auth.example.com" in warnings[0].getMessage()


# -- StaticSource ---------------------------------------------------------------------------


def test_static_source_never_expires_and_cannot_push() -> None:
    document = {"keys": [dict(_RSA_JWK)]}
    source = StaticSource(document)
    document["keys"][0]["kid"] = "changed-by-caller"

    result = source.fetch(0.0)

    assert result.max_age == math.inf
    assert result.document["keys"][0]["kid"] == "rsa-1"
    assert source.watch() is None
