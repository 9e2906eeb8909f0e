"""The strict compact-JWS parse (RFC 7515 §7.1): structure and header, before any key is involved.

:func:`parse_compact` is pure: it decodes the three segments, checks the header
and returns what the signature check needs. It accepts exactly one spelling of
a token (canonical unpadded base64url, strict UTF-8 JSON objects with unique
member names, bounded size and depth), so a token's string can key the
verified-token cache. It never verifies the signature and never chooses a key:
the ``alg`` it returns is only compared with the key's own algorithm later
(RFC 8725 §3.1).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Collection, Iterable
from typing import Any, Final, NamedTuple

from interceptors._errors import InvalidClaims, InvalidSignature, MalformedToken

_MAX_KID_LENGTH: Final = 256
_ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The last character of a canonical segment of length 4k+2 (4k+3) has its low 4 (2)
# bits zero, RFC 4648 §3.5: every 16th (4th) character of the alphabet.
_CANONICAL_LAST: Final = {2: frozenset(_ALPHABET[::16]), 3: frozenset(_ALPHABET[::4])}
_TO_STANDARD: Final = bytes.maketrans(b"-_", b"+/")
_PAD: Final = (b"", b"", b"==", b"=")
_MAX_REMEMBERED_HEADERS: Final = 64


class ParsedJws(NamedTuple):
    """A token that passed the structural checks, before its signature is checked.

    A named tuple rather than a frozen dataclass: built once per verified token,
    it costs a third as much to make.

    Attributes:
        kid: The ``kid`` header: which key to verify with; ``""`` only when the
            header has none and the caller did not require one.
        alg: The ``alg`` header, already one the caller allows.
        claims: The decoded payload, a JSON object.
        signing_input: ``BASE64URL(header) "." BASE64URL(payload)`` as bytes.
        signature: The decoded signature, never empty.
    """

    kid: str
    alg: str
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def parse_compact(
    token: str,
    *,
    algorithms: Collection[str],
    accepted_types: Collection[str],
    max_length: int,
    max_depth: int,
    require_kid: bool = True,
    require_typ: bool = True,
) -> ParsedJws:
    """Parse a compact JWS strictly; no key, no clock, no I/O.

    Args:
        token: The compact serialization, as sent.
        algorithms: ``alg`` values to let through (case-sensitive).
        accepted_types: Lower-case ``typ`` values to accept (RFC 9068 §2.1).
        max_length: Longer tokens are refused before any decoding.
        max_depth: Deepest nesting of JSON arrays and objects in the header and the
            payload (the top-level object counts as 1).
        require_kid: Refuse a header without ``kid`` (access tokens always name their key).
        require_typ: Refuse a header without ``typ``; a ``typ`` that is present must
            be accepted either way.

    Returns:
        The header's ``kid`` and ``alg``, the claims, and the signature with its input.

    Raises:
        MalformedToken: Not three canonical base64url segments of strict JSON objects,
            or a header without a usable ``kid``, with ``crit`` or ``b64: false``.
        InvalidSignature: ``alg`` is not among ``algorithms``, or the signature is empty.
        InvalidClaims: ``typ`` is missing or not an accepted type.
    """
    parser = CompactParser(
        algorithms=algorithms,
        accepted_types=accepted_types,
        max_length=max_length,
        max_depth=max_depth,
        require_kid=require_kid,
        require_typ=require_typ,
    )
    return parser(token)


class CompactParser:
    """:func:`parse_compact` with its settings bound once; what a verifier calls per token.

    The header checks are a pure function of the header segment's exact string,
    and every token an issuer signs with one key carries the same header, so the
    ``(kid, alg)`` of headers that passed are remembered (a small bounded map):
    a token whose header was seen costs one dictionary lookup instead of a
    base64 and a JSON decode. A header that fails is never remembered and fails
    again the same way. Thread-safe (single dictionary operations only).
    """

    __slots__ = (
        "_accepted_types",
        "_algorithms",
        "_headers",
        "_max_depth",
        "_max_length",
        "_require_kid",
        "_require_typ",
    )

    def __init__(
        self,
        *,
        algorithms: Collection[str],
        accepted_types: Collection[str],
        max_length: int,
        max_depth: int,
        require_kid: bool = True,
        require_typ: bool = True,
    ) -> None:
        """Bind the settings; see :func:`parse_compact` for what each means."""
        self._require_kid = require_kid
        self._require_typ = require_typ
        self._algorithms = frozenset(algorithms)
        self._accepted_types = frozenset(accepted_types)
        self._max_length = max_length
        self._max_depth = max_depth
        self._headers: dict[str, tuple[str, str]] = {}

    def __call__(self, token: str) -> ParsedJws:
        """Parse ``token``; raises as :func:`parse_compact` does."""
        if not isinstance(token, str):
            raise MalformedToken("token is not a string")
        if len(token) > self._max_length:
            raise MalformedToken("token too long")
        if not token.isascii():
            raise MalformedToken("token is not ASCII")
        # Three finds (memchr) instead of split("."), which walked every character
        # and built the payload and signature strings that only their lengths and
        # last characters are needed of.
        payload_start = token.find(".") + 1
        payload_end = token.find(".", payload_start)
        if not payload_start or payload_end < 0 or token.find(".", payload_end + 1) >= 0:
            raise MalformedToken("token is not a compact JWS of three segments")
        header_segment = token[: payload_start - 1]
        known = self._headers.get(header_segment)
        if known is None:
            known = self._check_header(header_segment)
            headers = self._headers
            if len(headers) >= _MAX_REMEMBERED_HEADERS:
                # A flood of distinct valid headers only costs the decode again.
                headers.clear()
            headers[header_segment] = known
        kid, alg = known

        # The payload and the signature, decoded as _b64decode does (the same checks,
        # the same errors), with one scan, one encode and one translate for the whole
        # token instead of one set per segment: per-call overhead was a third of the parse.
        if "+" in token or "/" in token or "=" in token:
            raise MalformedToken("token is not unpadded base64url")
        payload_rest = (payload_end - payload_start) % 4
        signature_rest = (len(token) - payload_end - 1) % 4
        if payload_rest == 1 or signature_rest == 1:
            raise MalformedToken("payload or signature is not unpadded base64url")
        # An empty segment has no last character (its rest is 0, so none is read).
        if (payload_rest and token[payload_end - 1] not in _CANONICAL_LAST[payload_rest]) or (
            signature_rest and token[-1] not in _CANONICAL_LAST[signature_rest]
        ):
            raise MalformedToken("payload or signature is not canonical base64url")
        data = token.encode("ascii")
        # Two replaces instead of translate: each jumps from one "-" (or "_") to the
        # next with memchr, about one in 64 characters, where translate maps every
        # byte through its table (6k of the parse's 77k instructions).
        standard = data.replace(b"-", b"+").replace(b"_", b"/")
        try:
            payload = binascii.a2b_base64(
                standard[payload_start:payload_end] + _PAD[payload_rest], strict_mode=True
            )
            signature = binascii.a2b_base64(
                standard[payload_end + 1 :] + _PAD[signature_rest], strict_mode=True
            )
        except (binascii.Error, ValueError) as exc:
            raise MalformedToken("payload or signature is not unpadded base64url") from exc
        claims = _json_object(payload, "payload", self._max_depth)
        if not signature:
            raise InvalidSignature("empty signature")
        # tuple.__new__ in ParsedJws's field order: the NamedTuple's keyword __new__
        # is a Python call of its own.
        return tuple.__new__(ParsedJws, (kid, alg, claims, data[:payload_end], signature))

    def _check_header(self, header_segment: str) -> tuple[str, str]:
        """Decode and check the JOSE header; return its ``(kid, alg)``."""
        header = _json_object(_b64decode(header_segment, "header"), "header", self._max_depth)
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise MalformedToken("alg header missing or not a string")
        if alg not in self._algorithms:
            raise InvalidSignature("alg header not allowed by policy")
        kid = header.get("kid")
        if "kid" not in header and not self._require_kid:
            kid = ""
        elif not isinstance(kid, str) or not kid or len(kid) > _MAX_KID_LENGTH:
            raise MalformedToken("kid header missing, empty, too long or not a string")
        # RFC 7515 §4.1.11: we understand no extension, so any "crit" is a rejection.
        if "crit" in header:
            raise MalformedToken("crit header names an unsupported extension")
        if header.get("b64", True) is not True:
            raise MalformedToken("unencoded payload (b64) is not accepted")
        typ = header.get("typ")
        if "typ" not in header and not self._require_typ:
            pass
        elif not isinstance(typ, str) or typ.lower() not in self._accepted_types:
            raise InvalidClaims("typ header is not an accepted type")
        return str(kid), alg


def _b64decode(segment: str, name: str) -> bytes:
    """Decode unpadded base64url, refusing anything but its one canonical spelling."""
    rest = len(segment) % 4
    # "+", "/" and "=" belong to standard base64, not base64url; strict decoding of the
    # translated segment refuses every other character outside the alphabet. Two C
    # scans instead of a regular expression: half the cost of the decode.
    if rest == 1 or "+" in segment or "/" in segment or "=" in segment:
        raise MalformedToken(f"{name} is not unpadded base64url")
    # Leftover bits must be zero, so one token has exactly one spelling (cache key).
    # Only the last character holds leftover bits (4 of them after 2 characters, 2
    # after 3); testing it is equivalent to re-encoding and comparing, at no cost.
    if rest and segment[-1] not in _CANONICAL_LAST[rest]:
        raise MalformedToken(f"{name} is not canonical base64url")
    try:
        return binascii.a2b_base64(
            segment.encode("ascii").translate(_TO_STANDARD) + _PAD[rest], strict_mode=True
        )
    except (binascii.Error, ValueError) as exc:
        raise MalformedToken(f"{name} is not unpadded base64url") from exc


class _DuplicateMember(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateMember("duplicate member name")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with hooks builds a decoder and its scanner on every call.
_DECODER: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
# Set by JSONDecoder.__init__ (the C scanner), though typeshed does not list it.
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _json_object(raw: bytes, name: str, max_depth: int) -> dict[str, Any]:
    """Parse strict UTF-8 JSON: an object with unique member names, at most ``max_depth`` deep."""
    try:
        text = raw.decode("utf-8")
        # ``_DECODER.decode(text)``, scanning a bare ``{...}`` document directly:
        # ``decode`` matches whitespace before and after the value with a regular
        # expression; a document that starts with ``{`` and ends with ``}`` has none,
        # so one scan that must end exactly at the last character decides it.
        # Anything else (surrounding whitespace, trailing data, no JSON at all) takes
        # ``decode``, which accepts or refuses it exactly as before.
        if raw[:1] == b"{" and raw[-1:] == b"}":
            try:
                value, end = _SCAN(text, 0)
            except StopIteration:
                raise ValueError("not a JSON value") from None
            if end != len(text):
                value = _DECODER.decode(text)
        else:
            value = _DECODER.decode(text)
    except _DuplicateMember as exc:
        raise MalformedToken(f"{name} repeats a member name") from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedToken(f"{name} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedToken(f"{name} is not a JSON object")
    # Counting brackets (in C) bounds the depth from above, so the walk runs only
    # for documents that could be too deep, never for an ordinary token. A flat
    # object (no "[", one "{") is decided by two memchr scans; counting walks every
    # byte. ``find``, not ``in``: bytes' ``in`` first tries its operand as an integer
    # and formats and clears a TypeError when it is not.
    if (
        (raw.find(b"[") >= 0 or raw.find(b"{", 1) >= 0)
        and raw.count(b"[") + raw.count(b"{") > max_depth
        and _deeper_than(value, max_depth)
    ):
        raise MalformedToken(f"{name} nests JSON deeper than {max_depth} levels")
    # JSON can escape a lone UTF-16 surrogate ("\ud800"), which is not Unicode text:
    # a claim holding one breaks whatever encodes it later (protobuf, logs). Only a
    # document with a \u escape can hold one, so ordinary tokens skip the walk.
    if raw.find(b"\\u") >= 0 and _holds_lone_surrogate(value):
        raise MalformedToken(f"{name} holds a lone UTF-16 surrogate")
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    """Tell whether any string (member name or value) is not encodable as UTF-8."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _deeper_than(value: Any, limit: int) -> bool:
    """Tell whether arrays and objects nest more than ``limit`` levels (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
