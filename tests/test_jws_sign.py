"""auth_server.jws: tokens assembled around a signer are what jwt.encode makes, and verify."""

from __future__ import annotations

import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from auth_server.jwk import generate_private_key
from auth_server.jws import encode_compact, es256_raw, local_signer

CLAIMS = {"iss": "https://issuer.example", "sub": "u-1", "exp": 2_000_000_000, "scope": "a b"}
HEADER = {"alg": "", "kid": "kid-1", "typ": "at+jwt"}


@pytest.mark.parametrize("algorithm", ["RS256", "EdDSA"])
def test_a_deterministic_signature_gives_the_bytes_jwt_encode_gives(algorithm: str) -> None:
    key = generate_private_key(algorithm)
    header = dict(HEADER, alg=algorithm)
    ours = encode_compact(header, CLAIMS, local_signer(key, algorithm))
    theirs = jwt.encode(CLAIMS, key, algorithm=algorithm, headers={"kid": "kid-1", "typ": "at+jwt"})
    assert ours == theirs


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "EdDSA"])
def test_every_algorithm_verifies_with_pyjwt(algorithm: str) -> None:
    key = generate_private_key(algorithm)
    token = encode_compact(dict(HEADER, alg=algorithm), CLAIMS, local_signer(key, algorithm))
    assert jwt.decode(token, key.public_key(), algorithms=[algorithm]) == CLAIMS
    assert jwt.get_unverified_header(token) == dict(HEADER, alg=algorithm)


def test_an_ecdsa_signature_is_raw_r_s_whether_it_came_as_der_or_raw() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.sign(b"data", ec.ECDSA(hashes.SHA256()))
    raw = es256_raw(der)
    assert len(raw) == 64
    assert es256_raw(raw) == raw
    small = encode_dss_signature(1, 2)  # short integers are left-padded to 32 octets
    assert es256_raw(small) == (1).to_bytes(32, "big") + (2).to_bytes(32, "big")


def test_a_key_that_does_not_fit_the_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        local_signer(generate_private_key("ES256"), "RS256")
