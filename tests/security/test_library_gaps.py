"""PyJWT's gaps, each closed in our own layer.

Each case pairs a *witness* (what PyJWT 2.15.1, the version these gaps were measured on, does
on its own: it only runs on that version) with what our verifier does with the same
input through a real resource server. When PyJWT closes a gap upstream the witness is
skipped on the newer version; our check stays.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import AUDIENCE, ISSUER
from interceptors import KeySet, KeySetError, TokenPolicy, TokenVerifier
from security.kit import ATTACKER, Attack, Issuer, Target, b64u, b64u_decode

MEASURED = "2.15.1"
witness = pytest.mark.skipif(
    jwt.__version__ != MEASURED, reason=f"the gap was measured on PyJWT {MEASURED}"
)
NOW = int(time.time())


def _pyjwt_decode(token: str, issuer: Issuer, algorithms: list[str] | None = None) -> Any:
    return jwt.decode(
        token,
        issuer.public_key,
        algorithms=algorithms or [issuer.algorithm],
        audience=AUDIENCE,
        issuer=ISSUER,
    )


def _alg_of_another_key_type(issuer: Issuer) -> str:
    return issuer.sign(issuer.header(alg="ES256"), algorithm="ES256", key=ATTACKER.p256)


# (id, attack, what PyJWT alone does with it: "accepts" or an exception type)
TOKEN_GAPS: list[Any] = [
    pytest.param(
        _alg_of_another_key_type, TypeError, ["RS256", "ES256"], id="alg-not-fitting-the-key-type"
    ),
    pytest.param(lambda i: i.token({"typ": "JWT"}), "accepts", None, id="typ-never-checked"),
    pytest.param(lambda i: i.token({"typ": "dpop+jwt"}), "accepts", None, id="typ-of-another-kind"),
    pytest.param(lambda i: i.token(exp=str(NOW + 300)), "accepts", None, id="exp-numeric-string"),
    pytest.param(lambda i: i.token(nbf=str(NOW)), "accepts", None, id="nbf-numeric-string"),
    pytest.param(lambda i: i.token(iat=str(NOW)), "accepts", None, id="iat-numeric-string"),
    pytest.param(lambda i: i.token(nbf=True), "accepts", None, id="nbf-boolean"),
    pytest.param(lambda i: i.token(iat=False), "accepts", None, id="iat-boolean"),
    pytest.param(
        lambda i: i.token(exp=NOW + 10 * 365 * 86400), "accepts", None, id="no-maximum-lifetime"
    ),
    pytest.param(lambda i: i.token() + "==", "accepts", None, id="trailing-padding"),
]


@pytest.mark.parametrize(("attack", "pyjwt", "algorithms"), TOKEN_GAPS)
def test_a_pyjwt_gap_is_closed_by_our_verifier(
    target: Target, attack: Attack, pyjwt: Any, algorithms: list[str] | None
) -> None:
    token = attack(target.issuer)
    assert isinstance(token, str)
    target.refuse(token)


@witness
@pytest.mark.parametrize(("attack", "pyjwt", "algorithms"), TOKEN_GAPS)
def test_pyjwt_alone_shows_the_gap(
    target: Target, attack: Attack, pyjwt: Any, algorithms: list[str] | None
) -> None:
    token = attack(target.issuer)
    assert isinstance(token, str)
    if pyjwt == "accepts":
        assert _pyjwt_decode(token, target.issuer, algorithms)["aud"] == AUDIENCE
    else:
        # A bare TypeError, not a PyJWTError: code catching PyJWTError would crash (INTERNAL).
        with pytest.raises(pyjwt) as info:
            _pyjwt_decode(token, target.issuer, algorithms)
        assert not isinstance(info.value, jwt.PyJWTError)


# -- the ECDSA high-S twin ----------------------------------------------------------------

P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _twin(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = b64u_decode(signature)
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    return f"{header}.{payload}.{b64u(r + (P256_N - s).to_bytes(32, 'big'))}"


def test_the_high_s_twin_is_one_token_to_everything_keyed_on_jti_and_sid(
    es_target: Target,
) -> None:
    token = es_target.issuer.token()
    twin = _twin(token)
    verifier = TokenVerifier(es_target.keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE))
    first, second = verifier.verify(token), verifier.verify(twin)
    assert twin != token
    assert (first.token_id, first.session_id) == (second.token_id, second.session_id)


@witness
def test_pyjwt_alone_accepts_the_high_s_twin(es_target: Target) -> None:
    twin = _twin(es_target.issuer.token())
    assert _pyjwt_decode(twin, es_target.issuer)["aud"] == AUDIENCE


# -- key sets ------------------------------------------------------------------------------


def _jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    jwk = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(key.public_key()))
    return {**jwk, "kid": kid, **extra}


SECOND_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OCT = {"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(b"secret").decode()}

# (document, kid PyJWT's client hands out, what our KeySet does: "skips" or "refuses")
KEY_SET_GAPS: list[Any] = [
    pytest.param(
        lambda: {
            "keys": [_jwk(ATTACKER.rsa, "enc", key_ops=["encrypt"]), _jwk(ATTACKER.rsa, "ok")]
        },
        "enc",
        "skips",
        id="key-ops-encrypt",
    ),
    pytest.param(
        lambda: {"keys": [OCT, _jwk(ATTACKER.rsa, "ok")]}, "shared", "refuses", id="oct-key"
    ),
    pytest.param(
        lambda: {"keys": [_jwk(ATTACKER.rsa_1024, "small")]}, "small", "refuses", id="rsa-1024"
    ),
    pytest.param(
        lambda: {"keys": [_jwk(ATTACKER.rsa, "dup"), _jwk(SECOND_RSA, "dup")]},
        "dup",
        "refuses",
        id="duplicate-kid",
    ),
]


@pytest.mark.parametrize(("document", "handed_out", "ours"), KEY_SET_GAPS)
def test_our_key_set_filters_what_pyjwts_client_hands_out(
    document: Callable[[], dict[str, Any]], handed_out: str, ours: str
) -> None:
    if ours == "refuses":
        with pytest.raises(KeySetError):
            KeySet.from_jwks(document())
    else:
        assert handed_out not in KeySet.from_jwks(document())


@witness
@pytest.mark.parametrize(("document", "handed_out", "ours"), KEY_SET_GAPS)
def test_pyjwts_jwks_client_hands_out_the_key(
    document: Callable[[], dict[str, Any]], handed_out: str, ours: str
) -> None:
    doc = document()
    keys = jwt.PyJWKClient._get_signing_keys_from_jwk_set(jwt.PyJWKSet.from_dict(doc))
    chosen = jwt.PyJWKClient.match_kid(keys, handed_out)
    assert chosen is not None
    if handed_out == "dup":  # the first of the two entries wins, silently
        assert chosen.key.public_numbers() == ATTACKER.rsa.public_key().public_numbers()
