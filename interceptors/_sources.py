"""Where a verifier gets its keys: a JWKS URL, OIDC discovery, AuthService RPCs, a fixed set.

Every source answers :meth:`KeySource.fetch` with a parsed document and the
issuer's caching hint, or raises :class:`~interceptors._errors.KeySetError`.
The HTTP sources are deliberately strict (short deadline, size cap, no
redirects, TLS except on loopback): a verifier must not be steerable into
fetching keys from somewhere else.
"""

from __future__ import annotations

import copy
import http.client
import ipaddress
import json
import logging
import math
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

import grpc

from interceptors._errors import KeySetError
from interceptors._revocation import RevocationBatch
from interceptors._revocation_entries import Watermark
from protos import auth_pb2, auth_pb2_grpc

_LOGGER = logging.getLogger(__name__)

_DEFAULT_MAX_BYTES = 256 * 1024
_READ_CHUNK = 64 * 1024
_DIGITS = re.compile(r"[0-9]+")
_JWK_FIELDS = ("kty", "kid", "use", "alg", "n", "e", "crv", "x", "y")


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One key set document, as a source delivered it.

    Attributes:
        document: The parsed JWK Set, ``{"keys": [...]}``.
        max_age: Seconds the issuer says the set may be used for; ``None`` when
            it gave no hint, ``math.inf`` when the set never expires.
    """

    document: Mapping[str, Any]
    max_age: float | None


class KeyWatch(Protocol):
    """An open push stream of key sets."""

    def __iter__(self) -> Iterator[FetchResult]:
        """Yield each key set as it arrives; end or raise KeySetError when the stream breaks."""
        ...

    def cancel(self) -> None:
        """End the stream; safe to call from another thread."""
        ...


class KeySource(Protocol):
    """Something that can produce the issuer's current key set."""

    def fetch(self, timeout: float) -> FetchResult:
        """Return the current key set within ``timeout`` seconds.

        Raises:
            KeySetError: On any failure.
        """
        ...

    def watch(self) -> KeyWatch | None:
        """Open a push stream, or return ``None`` if the source cannot push."""
        ...


class HttpJwksSource:
    """Fetches a JWK Set document from an HTTP(S) URL, with conditional requests."""

    def __init__(
        self,
        url: str,
        *,
        allow_insecure_http: bool = False,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        ca_cert: str | Path | None = None,
    ) -> None:
        """Check the URL and prepare the client.

        Args:
            url: The JWKS URL. Must be ``https``, unless its host is a loopback
                address or ``allow_insecure_http`` is set.
            allow_insecure_http: Permit plain ``http`` to any host.
            max_bytes: The largest response body accepted.
            ca_cert: A PEM file of CA certificates to trust for ``https``
                instead of the system roots.

        Raises:
            ValueError: The URL is not acceptable, or ``ca_cert`` cannot be loaded.
        """
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        check_url(url, allow_insecure_http=allow_insecure_http)
        self._url = url
        self._max_bytes = max_bytes
        self._ca_cert = ca_cert
        self._opener = _opener(url, ca_cert)
        self._lock = threading.Lock()
        self._etag: str | None = None
        self._document: Mapping[str, Any] | None = None

    @property
    def url(self) -> str:
        """The JWKS URL."""
        return self._url

    def fetch(self, timeout: float) -> FetchResult:
        """GET the key set; a ``304 Not Modified`` returns the previous document.

        Raises:
            KeySetError: The request failed, timed out, was redirected, or the
                answer is too large or not a JSON object.
        """
        with self._lock:
            etag, previous = self._etag, self._document
        headers = {}
        if etag is not None and previous is not None:
            headers["If-None-Match"] = etag
        response = _get_json(self._opener, self._url, headers, timeout, self._max_bytes)
        if response.document is None:
            if previous is None:
                raise KeySetError("JWKS server answered 304 to an unconditional request")
            document = previous
        else:
            document = response.document
        new_etag = response.headers.get("ETag")
        with self._lock:
            self._document = document
            if new_etag is not None:
                self._etag = new_etag
            elif response.document is not None:
                self._etag = None
        return FetchResult(document=document, max_age=_max_age(response.headers))

    def watch(self) -> KeyWatch | None:
        """HTTP cannot push: always ``None``."""
        return None


class DiscoverySource:
    """Finds the JWKS URL through OpenID Connect discovery, then fetches it like HttpJwksSource."""

    def __init__(
        self,
        issuer: str,
        *,
        allow_insecure_http: bool = False,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        ca_cert: str | Path | None = None,
    ) -> None:
        """Check the issuer URL.

        Args:
            issuer: The issuer URL, exactly as tokens carry it in ``iss``.
            allow_insecure_http: Permit plain ``http`` to any host (for the
                issuer and the ``jwks_uri`` it names).
            max_bytes: The largest response body accepted (each document).
            ca_cert: A PEM file of CA certificates to trust for ``https``
                instead of the system roots.

        Raises:
            ValueError: The issuer URL is not acceptable, or ``ca_cert`` cannot be loaded.
        """
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        check_url(issuer, allow_insecure_http=allow_insecure_http)
        self._issuer = issuer
        self._config_url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        self._allow_insecure_http = allow_insecure_http
        self._max_bytes = max_bytes
        self._ca_cert = ca_cert
        self._opener = _opener(self._config_url, ca_cert)
        self._lock = threading.Lock()
        self._jwks: HttpJwksSource | None = None
        self._rediscover = True

    def fetch(self, timeout: float) -> FetchResult:
        """Discover the ``jwks_uri`` if needed, then fetch the key set.

        Discovery is redone on the next fetch after any failure, so a moved
        ``jwks_uri`` is found again.

        Raises:
            KeySetError: Discovery or the key set fetch failed.
        """
        deadline = time.monotonic() + timeout
        try:
            with self._lock:
                jwks, rediscover = self._jwks, self._rediscover
            if jwks is None or rediscover:
                jwks = self._discover(timeout, current=jwks)
                with self._lock:
                    self._jwks, self._rediscover = jwks, False
            return jwks.fetch(max(deadline - time.monotonic(), 0.001))
        except KeySetError:
            with self._lock:
                self._rediscover = True
            raise

    def watch(self) -> KeyWatch | None:
        """HTTP cannot push: always ``None``."""
        return None

    def _discover(self, timeout: float, *, current: HttpJwksSource | None) -> HttpJwksSource:
        response = _get_json(self._opener, self._config_url, {}, timeout, self._max_bytes)
        config = response.document
        assert config is not None  # no If-None-Match was sent
        if config.get("issuer") != self._issuer:
            raise KeySetError("discovery document names a different issuer")
        jwks_uri = config.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise KeySetError("discovery document has no string 'jwks_uri'")
        if current is not None and current.url == jwks_uri:
            return current  # keeps its ETag
        try:
            return HttpJwksSource(
                jwks_uri,
                allow_insecure_http=self._allow_insecure_http,
                max_bytes=self._max_bytes,
                ca_cert=self._ca_cert,
            )
        except ValueError as exc:
            raise KeySetError(f"discovery document's jwks_uri is not acceptable: {exc}") from exc


class GrpcJwksSource:
    """Fetches keys with ``AuthService.GetJwks`` and follows ``AuthService.WatchJwks``.

    Also a :class:`~interceptors.RevocationSource`: ``WatchRevocations`` on the same channel.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """Use ``channel``, or open one to ``target``.

        Args:
            target: ``host:port`` of the auth service; a channel is opened
                (and closed by :meth:`close`).
            channel: An existing channel, owned by the caller.
            credentials: TLS credentials for the channel opened to ``target``;
                without them the channel is plaintext.

        Raises:
            ValueError: Not exactly one of ``target`` and ``channel``, or
                ``credentials`` given with ``channel``.
        """
        if (target is None) == (channel is None):
            raise ValueError("give exactly one of target and channel")
        if channel is not None and credentials is not None:
            raise ValueError("credentials apply only to a channel opened to target")
        self._owned: grpc.Channel | None = None
        if channel is None:
            assert target is not None
            options = [("grpc.max_reconnect_backoff_ms", 30_000)]
            if credentials is not None:
                channel = grpc.secure_channel(target, credentials, options=options)
            else:
                if not _is_loopback_target(target):
                    _LOGGER.warning(
                        "fetching signing keys from %s over plaintext gRPC; pass credentials",
                        target,
                    )
                channel = grpc.insecure_channel(target, options=options)
            self._owned = channel
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)

    def fetch(self, timeout: float) -> FetchResult:
        """Call ``GetJwks`` with a deadline of ``timeout`` seconds.

        Raises:
            KeySetError: The call failed.
        """
        try:
            message = self._stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            raise KeySetError(f"GetJwks failed: {_status_name(exc)}") from exc
        except ValueError as exc:  # grpc raises it for a closed channel
            raise KeySetError("GetJwks failed: channel closed") from exc
        return jwk_set_result(message)

    def watch(self) -> KeyWatch:
        """Open a ``WatchJwks`` stream.

        Raises:
            KeySetError: The stream cannot be opened (the channel is closed).
        """
        try:
            call: Any = self._stub.WatchJwks(auth_pb2.WatchJwksRequest())
        except ValueError as exc:
            raise KeySetError("WatchJwks failed: channel closed") from exc
        return _GrpcWatch(call)

    def watch_revocations(self) -> _GrpcRevocationWatch:
        """Open a ``WatchRevocations`` stream.

        Raises:
            KeySetError: The stream cannot be opened (the channel is closed).
        """
        try:
            call: Any = self._stub.WatchRevocations(
                auth_pb2.WatchRevocationsRequest(watermarks=True)
            )
        except ValueError as exc:
            raise KeySetError("WatchRevocations failed: channel closed") from exc
        return _GrpcRevocationWatch(call)

    def close(self) -> None:
        """Close the channel this source opened (not one it was given)."""
        if self._owned is not None:
            self._owned.close()


def revocation_batch(message: auth_pb2.RevocationUpdate) -> RevocationBatch:
    """Convert a ``WatchRevocations`` message to a RevocationBatch."""
    return RevocationBatch(
        full=message.full,
        sessions={s.session_id: float(s.expires_at) for s in message.sessions},
        watermarks={
            w.subject: Watermark(issued_before=w.issued_before, expires_at=float(w.expires_at))
            for w in message.watermarks
        },
        continues=message.full_list_continues,
    )


class _GrpcRevocationWatch:
    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[RevocationBatch]:
        try:
            for message in self._call:
                yield revocation_batch(message)
        except (grpc.RpcError, ValueError) as exc:
            if self._cancelled.is_set():
                return
            why = _status_name(exc) if isinstance(exc, grpc.RpcError) else "channel closed"
            raise KeySetError(f"WatchRevocations stream broke: {why}") from exc

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()


class _GrpcWatch:
    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = threading.Event()

    def __iter__(self) -> Iterator[FetchResult]:
        try:
            for message in self._call:
                yield jwk_set_result(message)
        except (grpc.RpcError, ValueError) as exc:
            if self._cancelled.is_set():
                return
            why = _status_name(exc) if isinstance(exc, grpc.RpcError) else "channel closed"
            raise KeySetError(f"WatchJwks stream broke: {why}") from exc

    def cancel(self) -> None:
        self._cancelled.set()
        self._call.cancel()


class StaticSource:
    """A fixed key set that never expires (tests, air-gapped deployments)."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        """Keep a private copy of ``document``."""
        self._document: Mapping[str, Any] = copy.deepcopy(dict(document))

    def fetch(self, timeout: float) -> FetchResult:
        """Return the document with ``max_age=math.inf``."""
        return FetchResult(document=self._document, max_age=math.inf)

    def watch(self) -> KeyWatch | None:
        """A fixed set has nothing to push: always ``None``."""
        return None


def jwk_set_result(message: auth_pb2.JwkSet) -> FetchResult:
    """Convert a ``JwkSet`` message to a FetchResult (empty fields are dropped)."""
    keys = [
        {name: getattr(jwk, name) for name in _JWK_FIELDS if getattr(jwk, name)}
        for jwk in message.keys
    ]
    max_age = float(message.max_age_seconds) if message.max_age_seconds > 0 else None
    return FetchResult(document={"keys": keys}, max_age=max_age)


def check_url(url: str, *, allow_insecure_http: bool) -> None:
    """Raise ValueError unless ``url`` is https, or http to loopback (or allowed)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError(f"key source URL must be https, not {scheme or 'relative'!r}")
    if not parts.hostname:
        raise ValueError("key source URL has no host")
    _ = parts.port  # raises ValueError for a malformed port
    if scheme == "http" and not allow_insecure_http and not _is_loopback_host(parts.hostname):
        raise ValueError(
            "key source URL must be https unless it is on loopback (or allow_insecure_http=True)"
        )


@dataclass(frozen=True, slots=True)
class _Response:
    document: Mapping[str, Any] | None  # None: 304 Not Modified
    headers: Message


def _opener(url: str, ca_cert: str | Path | None = None) -> urllib.request.OpenerDirector:
    # Built by hand rather than with build_opener(): no redirect handler (a 3xx
    # becomes an HTTPError), and no file:, ftp: or data: handlers at all.
    opener = urllib.request.OpenerDirector()
    hostname = urlsplit(url).hostname or ""
    # Proxies from the environment apply, except to loopback where they never make sense.
    proxies: dict[str, str] | None = {} if _is_loopback_host(hostname) else None
    try:
        context = ssl.create_default_context(cafile=None if ca_cert is None else str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the CA certificates in {ca_cert}") from exc
    for handler in (
        urllib.request.ProxyHandler(proxies),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(context=context),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _get_json(
    opener: urllib.request.OpenerDirector,
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    max_bytes: int,
) -> _Response:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(  # noqa: S310 - check_url() allowed only http(s)
        url,
        headers={"Accept": "application/json", "User-Agent": "ssot-auth-verifier", **headers},
        method="GET",
    )
    where = _display(url)
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise KeySetError(f"{where} answered HTTP {response.status}")
            body = _read_capped(response, max_bytes, deadline, where)
            response_headers: Message = response.headers
    except HTTPError as exc:
        try:
            if exc.code == 304 and "If-None-Match" in headers:
                return _Response(document=None, headers=exc.headers)
            raise KeySetError(f"{where} answered HTTP {exc.code}") from exc
        finally:
            exc.close()
    except (URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, URLError) else type(exc).__name__
        raise KeySetError(f"cannot fetch {where}: {reason}") from exc
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise KeySetError(f"{where} did not answer JSON") from exc
    if not isinstance(document, dict):
        raise KeySetError(f"{where} did not answer a JSON object")
    return _Response(document=document, headers=response_headers)


def _read_capped(response: Any, max_bytes: int, deadline: float, where: str) -> bytes:
    length = response.headers.get("Content-Length")
    if length is not None and _DIGITS.fullmatch(length.strip()) and int(length) > max_bytes:
        raise KeySetError(f"{where} answered more than {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    while True:
        # The socket timeout bounds each read; this bounds a server that trickles.
        if time.monotonic() > deadline:
            raise KeySetError(f"{where} answered too slowly")
        chunk: bytes = response.read1(min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise KeySetError(f"{where} answered more than {max_bytes} bytes")
        chunks.append(chunk)


def _max_age(headers: Message) -> float | None:
    """Read the freshness lifetime from Cache-Control and Age (RFC 9111 §4.2)."""
    max_age: float | None = None
    for value in headers.get_all("Cache-Control") or ():
        for directive in str(value).split(","):
            name, _, argument = directive.strip().partition("=")
            name = name.strip().lower()
            if name in ("no-cache", "no-store"):
                return 0.0
            argument = argument.strip().strip('"')
            if name == "max-age" and _DIGITS.fullmatch(argument):
                max_age = float(int(argument))
    if max_age is None:
        return None
    age = str(headers.get("Age", "")).strip()
    if _DIGITS.fullmatch(age):
        max_age = max(max_age - int(age), 0.0)
    return max_age


def _display(url: str) -> str:
    """The URL without user info, query or fragment, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _is_loopback_host(hostname: str) -> bool:
    if hostname.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _is_loopback_target(target: str) -> bool:
    """Best effort, for a warning only: does a gRPC target name this machine?"""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return _is_loopback_host(host)


def _status_name(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name if code is not None else type(exc).__name__
