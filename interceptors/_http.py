"""The hardened JSON GET behind the HTTP key sources: a deadline, a size cap, no redirects, TLS.

A verifier must not be steerable into fetching keys from somewhere else, nor
held up by a slow or huge answer, so every request here:

* goes only to ``https`` (plain ``http`` only to loopback, or when allowed);
* follows no redirect (a 3xx is an error) and has no ``file:``/``ftp:``/``data:`` handler;
* ends within its deadline even against a server that trickles bytes;
* reads at most ``max_bytes`` of body.

Transport failures (refused, timed out, an HTTP error status) raise
:class:`~interceptors.KeySourceError`; an answer that is not a usable JSON
object raises its subclass :class:`~interceptors.KeySetError`.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from interceptors._errors import KeySetError, KeySourceError
from interceptors.tls import is_loopback_host

DEFAULT_MAX_BYTES = 256 * 1024
_READ_CHUNK = 64 * 1024
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class JsonResponse:
    """A JSON object answered with 200, or ``document=None`` for a 304 Not Modified."""

    document: Mapping[str, Any] | None
    headers: Message


def check_url(url: str, *, allow_insecure_http: bool) -> None:
    """Raise ValueError unless ``url`` is https, or http to loopback (or allowed)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise ValueError(f"key source URL must be https, not {scheme or 'relative'!r}")
    if not parts.hostname:
        raise ValueError("key source URL has no host")
    _ = parts.port  # raises ValueError for a malformed port
    if scheme == "http" and not allow_insecure_http and not is_loopback_host(parts.hostname):
        raise ValueError(
            "key source URL must be https unless it is on loopback (or allow_insecure_http=True)"
        )


def strict_opener(url: str, ca_cert: str | Path | None = None) -> urllib.request.OpenerDirector:
    """An opener for ``url``'s host with no redirects and only the http(s) handlers.

    Raises:
        ValueError: ``ca_cert`` cannot be loaded.
    """
    # Built by hand rather than with build_opener(): no redirect handler (a 3xx
    # becomes an HTTPError), and no file:, ftp: or data: handlers at all.
    opener = urllib.request.OpenerDirector()
    hostname = urlsplit(url).hostname or ""
    # Proxies from the environment apply, except to loopback where they never make sense.
    proxies: dict[str, str] | None = {} if is_loopback_host(hostname) else None
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


def get_json(
    opener: urllib.request.OpenerDirector,
    url: str,
    headers: Mapping[str, str],
    timeout: float,
    max_bytes: int,
) -> JsonResponse:
    """GET ``url`` and parse a JSON object, all within ``timeout`` seconds.

    A 304 answers ``document=None``, but only to a request that sent ``If-None-Match``.

    Raises:
        KeySourceError: The request failed, timed out, or was answered with an error status.
        KeySetError: The answer is too large, not a JSON object, or an unasked-for 304.
    """
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(  # noqa: S310 - check_url() allowed only http(s)
        url,
        headers={"Accept": "application/json", "User-Agent": "ssot-auth-verifier", **headers},
        method="GET",
    )
    where = display_url(url)
    try:
        with opener.open(request, timeout=timeout) as response:
            if response.status != 200:
                raise KeySourceError(f"{where} answered HTTP {response.status}")
            body = _read_capped(response, max_bytes, deadline, where)
            response_headers: Message = response.headers
    except HTTPError as exc:
        try:
            if exc.code == 304:
                if "If-None-Match" in headers:
                    return JsonResponse(document=None, headers=exc.headers)
                # Not a failure of the source, but an answer that cannot be used.
                raise KeySetError(f"{where} answered 304 to an unconditional request")
            raise KeySourceError(f"{where} answered HTTP {exc.code}") from exc
        finally:
            exc.close()
    except (URLError, OSError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, URLError) else type(exc).__name__
        raise KeySourceError(f"cannot fetch {where}: {reason}") from exc
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise KeySetError(f"{where} did not answer JSON") from exc
    if not isinstance(document, dict):
        raise KeySetError(f"{where} did not answer a JSON object")
    return JsonResponse(document=document, headers=response_headers)


def max_age_of(headers: Message) -> float | None:
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


def display_url(url: str) -> str:
    """The URL without user info, query or fragment, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _read_capped(response: Any, max_bytes: int, deadline: float, where: str) -> bytes:
    length = response.headers.get("Content-Length")
    if length is not None and _DIGITS.fullmatch(length.strip()) and int(length) > max_bytes:
        raise KeySetError(f"{where} answered more than {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    while True:
        # The socket timeout bounds each read; this bounds a server that trickles.
        if time.monotonic() > deadline:
            raise KeySourceError(f"{where} answered too slowly")
        chunk: bytes = response.read1(min(_READ_CHUNK, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise KeySetError(f"{where} answered more than {max_bytes} bytes")
        chunks.append(chunk)
