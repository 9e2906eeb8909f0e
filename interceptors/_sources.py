"""Where a verifier gets its keys: a JWKS URL, OIDC discovery, a fixed set (and the protocols).

Every source answers :meth:`KeySource.fetch` with a parsed document and the
issuer's caching hint, or raises :class:`~interceptors.KeySourceError` (its
subclass :class:`~interceptors.KeySetError` when the answer is not a usable
key set). The HTTP sources go through the hardened GET of ``_http`` (short
deadline, size cap, no redirects, TLS except on loopback): a verifier must not
be steerable into fetching keys from somewhere else. The auth service's own
gRPC source, which pushes, is in ``_auth_service``.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from interceptors._errors import KeySetError, KeySourceError
from interceptors._http import DEFAULT_MAX_BYTES, check_url, get_json, max_age_of, strict_opener


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
        """Yield each key set as it arrives; end, or raise KeySourceError when the stream breaks."""
        ...

    def cancel(self) -> None:
        """End the stream; safe to call from another thread."""
        ...


class KeySource(Protocol):
    """Something that can produce the issuer's current key set."""

    def fetch(self, timeout: float) -> FetchResult:
        """Return the current key set within ``timeout`` seconds.

        Raises:
            KeySourceError: On any failure; KeySetError (a subclass) when the
                source answered with something that is not a usable key set.
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
        max_bytes: int = DEFAULT_MAX_BYTES,
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
        self._opener = strict_opener(url, ca_cert)
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
            KeySourceError: The request failed, timed out, or was redirected.
            KeySetError: The answer is too large or not a JSON object.
        """
        with self._lock:
            etag, previous = self._etag, self._document
        headers = {}
        if etag is not None and previous is not None:
            headers["If-None-Match"] = etag
        response = get_json(self._opener, self._url, headers, timeout, self._max_bytes)
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
        return FetchResult(document=document, max_age=max_age_of(response.headers))

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
        max_bytes: int = DEFAULT_MAX_BYTES,
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
        self._opener = strict_opener(self._config_url, ca_cert)
        self._lock = threading.Lock()
        self._jwks: HttpJwksSource | None = None
        self._rediscover = True

    def fetch(self, timeout: float) -> FetchResult:
        """Discover the ``jwks_uri`` if needed, then fetch the key set.

        Discovery is redone on the next fetch after any failure, so a moved
        ``jwks_uri`` is found again.

        Raises:
            KeySourceError: Discovery or the key set fetch failed.
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
        except KeySourceError:
            with self._lock:
                self._rediscover = True
            raise

    def watch(self) -> KeyWatch | None:
        """HTTP cannot push: always ``None``."""
        return None

    def _discover(self, timeout: float, *, current: HttpJwksSource | None) -> HttpJwksSource:
        response = get_json(self._opener, self._config_url, {}, timeout, self._max_bytes)
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
