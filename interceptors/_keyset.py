"""An immutable, filtered set of public verification keys built from a JWKS document.

The filter is the verifier's first line of defence: a key set that carries
private or symmetric material, duplicate ``kid``s or weak RSA keys (too small,
or ROCA-fingerprinted: :mod:`interceptors._roca`) is refused whole, because
such a document means the issuer is misconfigured (or is not the issuer).
Entries that are merely not for us (encryption keys, unknown key types,
algorithms we were not told to accept) are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from interceptors._errors import KeySetError
from interceptors._roca import is_roca_weak
from interceptors._signature import SignatureCheck, signature_checker

_LOGGER = logging.getLogger(__name__)

#: The asymmetric JWS algorithms (RFC 7518 §3, RFC 8037) a key set or a policy may allow.
#: HMAC and ``none`` are never accepted by a verifier (RFC 8725 §3.1, §3.2).
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

# Members that only a private (or symmetric) JWK has, RFC 7518 §6.2.2, §6.3.2, §6.4.1
# and RFC 8037 §2. Publishing one of them is a leak at the issuer: refuse the set.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_EC_CURVE_ALGORITHMS = {curve: alg for alg, curve in _EC_ALGORITHM_CURVES.items()}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key a token may be verified with.

    Attributes:
        kid: The key id tokens name in their header.
        algorithm: The only algorithm this key verifies (taken from the JWK,
            never from the token).
        kty: The JWK key type: ``"RSA"``, ``"EC"`` or ``"OKP"``.
        key: The key, ready for ``jwt.decode(..., key=key, algorithms=[algorithm])``.
        verify_signature: ``verify_signature(signing_input, signature) -> bool``, the
            check with ``key``'s own algorithm, prepared once when the key is built.
    """

    kid: str
    algorithm: str
    kty: str
    key: jwt.PyJWK
    verify_signature: SignatureCheck = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "verify_signature", signature_checker(self.key))


class KeySet:
    """An immutable set of verification keys, indexed by ``kid``.

    Build one with :meth:`from_jwks`; the constructor trusts its input.
    """

    __slots__ = ("_keys", "_kids")
    _keys: Mapping[str, VerificationKey]
    _kids: frozenset[str]

    def __init__(self, keys: Collection[VerificationKey] = ()) -> None:
        """Index ``keys`` by ``kid``.

        Args:
            keys: Keys with distinct ``kid``s.

        Raises:
            ValueError: Two keys share a ``kid``.
        """
        by_kid = {key.kid: key for key in keys}
        if len(by_kid) != len(keys):
            raise ValueError("duplicate kid in key set")
        keys_by_kid: Mapping[str, VerificationKey] = MappingProxyType(by_kid)
        object.__setattr__(self, "_keys", keys_by_kid)
        object.__setattr__(self, "_kids", frozenset(by_kid))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def kids(self) -> frozenset[str]:
        """The ``kid`` of every key in the set."""
        return self._kids

    @classmethod
    def from_jwks(
        cls,
        document: Mapping[str, Any],
        *,
        algorithms: Collection[str] = SUPPORTED_ALGORITHMS,
        min_rsa_bits: int = 2048,
        max_keys: int = 100,
    ) -> KeySet:
        """Build a key set from an RFC 7517 JWK Set document.

        Args:
            document: The parsed JSON document, ``{"keys": [...]}``.
            algorithms: The algorithms a key may verify; a subset of
                :data:`SUPPORTED_ALGORITHMS`.
            min_rsa_bits: The smallest RSA modulus accepted.
            max_keys: The most entries a document may hold.

        Returns:
            The usable signature keys of the document.

        Raises:
            KeySetError: The document is refused as a whole (its ``log_detail``
                says why, without key material).
            ValueError: ``algorithms`` names an unsupported algorithm.
        """
        allowed = check_algorithms(algorithms)
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise KeySetError("JWKS is not an object with a 'keys' list")
        entries: list[Any] = document["keys"]
        if len(entries) > max_keys:
            raise KeySetError(f"JWKS has {len(entries)} keys, more than the limit of {max_keys}")
        for index, entry in enumerate(entries):
            if isinstance(entry, Mapping):
                _refuse_secret_material(index, entry)

        keys: dict[str, VerificationKey] = {}
        for index, entry in enumerate(entries):
            key = _usable_key(entry, allowed)
            if isinstance(key, str):
                _LOGGER.debug("skipping JWKS entry %d: it %s", index, key)
                continue
            if key.kid in keys:
                raise KeySetError(f"JWKS has two usable keys with kid {key.kid!r}")
            public = key.key.key
            if isinstance(public, RSAPublicKey) and public.key_size < min_rsa_bits:
                raise KeySetError(
                    f"JWKS key {key.kid!r} is a {public.key_size}-bit RSA key;"
                    f" at least {min_rsa_bits} bits are required"
                )
            if isinstance(public, RSAPublicKey) and is_roca_weak(public.public_numbers().n):
                # Factorable whatever its size: whoever factors it signs as the issuer.
                raise KeySetError(
                    f"JWKS key {key.kid!r} is an RSA key from a generator with the ROCA"
                    " weakness (CVE-2017-15361)"
                )
            keys[key.kid] = key
        if not keys:
            raise KeySetError("JWKS has no usable signature key")
        return cls(list(keys.values()))

    def get(self, kid: str) -> VerificationKey | None:
        """Return the key with this ``kid``, or ``None``."""
        return self._keys.get(kid)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[VerificationKey]:
        return iter(self._keys.values())

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __repr__(self) -> str:
        return f"KeySet(kids={sorted(self.kids)!r})"


def check_algorithms(algorithms: Collection[str]) -> frozenset[str]:
    """Validate an ``algorithms`` argument and return it as a frozenset.

    Raises:
        ValueError: It is empty or names an algorithm outside
            :data:`SUPPORTED_ALGORITHMS` (HS* and ``none`` are never supported).
    """
    if isinstance(algorithms, str):
        raise ValueError("algorithms must be a collection of names, not a string")
    allowed = frozenset(algorithms)
    unsupported = allowed - SUPPORTED_ALGORITHMS
    if unsupported:
        raise ValueError(
            f"unsupported algorithms {sorted(unsupported)!r}: "
            f"only {sorted(SUPPORTED_ALGORITHMS)!r} (never HS* or none)"
        )
    if not allowed:
        raise ValueError("algorithms must not be empty")
    return allowed


def departed_kids(old: KeySet, new: KeySet) -> frozenset[str]:
    """Return the ``kid``s of ``old`` that ``new`` lacks or binds to a different key.

    A ``kid`` whose key material or algorithm changed counts as departed:
    anything verified with the old key must be forgotten.
    """
    gone = set(old.kids - new.kids)
    for kid in old.kids & new.kids:
        before, after = old.get(kid), new.get(kid)
        assert before is not None and after is not None
        if before.algorithm != after.algorithm or _spki(before) != _spki(after):
            gone.add(kid)
    return frozenset(gone)


def _spki(key: VerificationKey) -> bytes:
    public: Any = key.key.key
    spki: bytes = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return spki


def _refuse_secret_material(index: int, entry: Mapping[str, Any]) -> None:
    present = [member for member in _PRIVATE_MEMBERS if member in entry]
    if present:
        raise KeySetError(f"JWKS entry {index} carries private or symmetric key members {present}")
    if entry.get("kty") == "oct":
        raise KeySetError(f"JWKS entry {index} is a symmetric (kty 'oct') key")


def _usable_key(entry: Any, allowed: frozenset[str]) -> VerificationKey | str:
    """Return the entry as a verification key, or why it is not one."""
    if not isinstance(entry, Mapping):
        return "is not an object"
    use = entry.get("use")
    if use is not None and use != "sig":
        return "is not a signature key ('use')"
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return "is not a verification key ('key_ops')"
    kty = entry.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        return "has an unsupported key type"
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        return "has no string 'kid'"
    algorithm = _choose_algorithm(entry, kty)
    if algorithm is None:
        return "has no algorithm consistent with its key"
    if algorithm not in allowed:
        return f"is for algorithm {algorithm}, which is not accepted"
    try:
        key = jwt.PyJWK(dict(entry), algorithm)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError):
        # Bad base64, a point off its curve, a missing member: this entry is unusable.
        return "has malformed key members"
    return VerificationKey(kid=kid, algorithm=algorithm, kty=kty, key=key)


def _choose_algorithm(entry: Mapping[str, Any], kty: str) -> str | None:
    """Return the one algorithm this key verifies, or ``None`` if that is not clear."""
    alg = entry.get("alg")
    crv = entry.get("crv")
    if alg is not None and not isinstance(alg, str):
        return None
    if kty == "RSA":
        if alg is None:
            return "RS256"
        return alg if alg in _RSA_ALGORITHMS else None
    if kty == "EC":
        if alg is None:
            return _EC_CURVE_ALGORITHMS.get(crv) if isinstance(crv, str) else None
        return alg if _EC_ALGORITHM_CURVES.get(alg) == crv else None
    # OKP: only the signature curves; X25519/X448 are key agreement keys. A crv
    # that is not a string (a list) cannot be looked up in a set: no algorithm.
    if not isinstance(crv, str) or crv not in _OKP_CURVES:
        return None
    if alg is None or alg == "EdDSA":
        return "EdDSA"
    return None
