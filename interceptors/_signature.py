"""One signature check per key, prepared once: what a verifier calls for every token.

PyJWT's algorithm objects build a padding and a hash object on every call; for
RSA, the default and by far the most common key, :func:`signature_checker`
builds them once per key and calls ``cryptography`` directly. Other key types
keep PyJWT's algorithm object (its ECDSA raw-to-DER conversion, its EdDSA
handling), bound to the key once. Either way the algorithm is the one the JWK
was prepared for (RFC 8725 §3.1), never one a token names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import jwt
from cryptography import exceptions as crypto_exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import RSAAlgorithm, RSAPSSAlgorithm

#: ``check(signing_input, signature)``: True when the signature verifies, False when
#: it does not; other failures of the crypto layer raise.
SignatureCheck: TypeAlias = Callable[[bytes, bytes], bool]

#: What the crypto layer raises for a signature it cannot check (a wrong length, a
#: key it cannot use): every caller of a :data:`SignatureCheck` treats these as a
#: bad signature, never as a server error.
CRYPTO_FAILURES: tuple[type[Exception], ...] = (
    jwt.exceptions.PyJWTError,
    TypeError,
    ValueError,
    LookupError,
    ArithmeticError,
    NotImplementedError,
    crypto_exceptions.InvalidSignature,
    crypto_exceptions.InvalidKey,
    crypto_exceptions.UnsupportedAlgorithm,
    crypto_exceptions.InternalError,
)


def signature_checker(jwk: jwt.PyJWK) -> SignatureCheck:
    """Return the signature check of ``jwk`` with the algorithm it was prepared for.

    Equivalent to ``jwk.Algorithm.verify(signing_input, jwk.key, signature)``
    (the same padding, hash and salt length), without its per-call allocations.
    """
    algorithm = jwk.Algorithm
    key = jwk.key
    if isinstance(key, RSAPublicKey) and isinstance(algorithm, RSAAlgorithm):
        digest = algorithm.hash_alg()
        # RSAPSSAlgorithm is an RSAAlgorithm: test it first. PyJWT's PSS salt is
        # the digest's size (RFC 7518 §3.5).
        scheme: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(algorithm.hash_alg()), salt_length=digest.digest_size)
            if isinstance(algorithm, RSAPSSAlgorithm)
            else padding.PKCS1v15()
        )
        verify = key.verify

        def check_rsa(signing_input: bytes, signature: bytes) -> bool:
            try:
                verify(signature, signing_input, scheme, digest)
            except InvalidSignature:
                return False
            return True

        return check_rsa

    verify_with = algorithm.verify

    def check(signing_input: bytes, signature: bytes) -> bool:
        return verify_with(signing_input, key, signature)

    return check
