"""Claims: times of the wrong type or value, lifetimes, audiences, issuers, types, duplicates.

Every token here carries a valid signature by the real key: only its claims (or
the ``typ`` header, or a repeated JSON member) are wrong. PyJWT alone accepts
several of them (numeric strings and booleans as times, no ``typ`` check, no
lifetime cap, last-one-wins duplicates); ``test_library_gaps`` shows which.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from helpers import AUDIENCE, ISSUER
from security.kit import DROP, Attack, Issuer, Target

NOW = int(time.time())


def _claims(**changes: Any) -> Attack:
    return lambda issuer: issuer.token(**changes)


def _typ(value: Any) -> Attack:
    return lambda issuer: issuer.sign(issuer.header(typ=value))


def _raw_payload(template: str) -> Attack:
    """Claims as raw JSON text (for repeated members and number spellings json.dumps avoids).

    ``template`` is formatted with the valid claims' JSON members minus the braces.
    """

    def make(issuer: Issuer) -> str:
        claims = issuer.claims()
        members = json.dumps(claims, separators=(",", ":"))[1:-1]
        now = int(time.time())
        text = template.format(members=members, now=now, past=now - 3600, future=now + 300)
        return issuer.sign(claims=text.encode())

    return make


def _raw_header(template: str) -> Attack:
    def make(issuer: Issuer) -> str:
        text = template.format(kid=issuer.kid, alg=issuer.algorithm)
        return issuer.sign(header=text.encode())

    return make


def _without(name: str) -> dict[str, Any]:
    return {name: DROP}


TIME_CASES = [
    pytest.param(_claims(exp=str(NOW + 300)), id="exp-numeric-string"),
    pytest.param(_claims(exp=True), id="exp-true"),
    pytest.param(_claims(exp=None), id="exp-null"),
    pytest.param(_claims(exp=[NOW + 300]), id="exp-list"),
    pytest.param(_claims(exp={"$date": NOW + 300}), id="exp-object"),
    pytest.param(_claims(exp=NOW - 3600.5, iat=NOW - 4000), id="exp-float-in-the-past"),
    pytest.param(_claims(exp=-1), id="exp-negative"),
    pytest.param(_claims(exp=2**63), id="exp-huge-int"),
    pytest.param(_claims(exp=1.0e300), id="exp-huge-float"),
    pytest.param(_raw_payload('{{{members},"exp":1e400}}'), id="exp-overflows-to-infinity"),
    pytest.param(_raw_payload('{{{members},"exp":NaN}}'), id="exp-nan"),
    pytest.param(_raw_payload('{{{members},"exp":1' + "0" * 5000 + "}}"), id="exp-5000-digits"),
    pytest.param(_claims(exp=DROP), id="exp-missing"),
    pytest.param(_claims(nbf=str(NOW)), id="nbf-numeric-string"),
    pytest.param(_claims(nbf=True), id="nbf-true"),
    pytest.param(_claims(nbf=None), id="nbf-null"),
    pytest.param(_claims(nbf=NOW + 3600), id="nbf-in-the-future"),
    pytest.param(_claims(nbf=NOW + 3600.5), id="nbf-float-in-the-future"),
    pytest.param(_claims(iat=str(NOW)), id="iat-numeric-string"),
    pytest.param(_claims(iat=False), id="iat-false"),
    pytest.param(_claims(iat=None), id="iat-null"),
    pytest.param(
        _claims(iat=NOW + 10 * 365 * 86400, exp=NOW + 10 * 365 * 86400 + 300),
        id="iat-far-in-the-future",
    ),
    pytest.param(_claims(iat=-(2**62)), id="iat-hugely-negative"),
    pytest.param(_claims(iat=DROP), id="iat-missing"),
    pytest.param(_claims(iat=NOW, exp=NOW + 86401), id="lifetime-one-second-over-the-cap"),
    pytest.param(_claims(iat=NOW - 10, exp=NOW - 20), id="exp-before-iat"),
]

AUDIENCE_CASES = [
    pytest.param(_claims(aud=["another-service", "a-third"]), id="aud-list-without-ours"),
    pytest.param(_claims(aud=[]), id="aud-empty-list"),
    pytest.param(_claims(aud=7), id="aud-number"),
    pytest.param(_claims(aud={"aud": AUDIENCE}), id="aud-object"),
    pytest.param(_claims(aud=None), id="aud-null"),
    pytest.param(_claims(aud=[[AUDIENCE]]), id="aud-nested-list"),
    pytest.param(_claims(aud=[AUDIENCE, 7]), id="aud-list-with-a-number"),
    pytest.param(_claims(aud=AUDIENCE + " "), id="aud-trailing-space"),
    pytest.param(_claims(aud=AUDIENCE.upper()), id="aud-case-changed"),
    pytest.param(_claims(aud=DROP), id="aud-missing"),
]

ISSUER_CASES = [
    pytest.param(_claims(iss=ISSUER + "/"), id="iss-trailing-slash"),
    pytest.param(_claims(iss=ISSUER.upper()), id="iss-upper-case"),
    pytest.param(_claims(iss=ISSUER.replace("http", "HTTP", 1)), id="iss-scheme-case"),
    pytest.param(_claims(iss=" " + ISSUER), id="iss-leading-space"),
    pytest.param(
        _claims(iss=ISSUER.replace("127.0.0.1", "localhost")), id="iss-same-host-other-name"
    ),
    pytest.param(_claims(iss=[ISSUER]), id="iss-list"),
    pytest.param(_claims(iss=None), id="iss-null"),
    pytest.param(_claims(iss=DROP), id="iss-missing"),
]

TYPE_CASES = [
    pytest.param(_typ("JWT"), id="typ-jwt"),
    pytest.param(_typ("jwt"), id="typ-jwt-lower-case"),
    pytest.param(_typ("application/jwt"), id="typ-application-jwt"),
    pytest.param(_typ("at+jwt "), id="typ-trailing-space"),
    pytest.param(_typ("secevent+jwt"), id="typ-other-jwt-type"),
    pytest.param(_typ(None), id="typ-null"),
    pytest.param(_typ(["at+jwt"]), id="typ-list"),
    pytest.param(_typ(DROP), id="typ-missing"),
]

SUBJECT_CASES = [
    pytest.param(_claims(sub=DROP), id="sub-missing"),
    pytest.param(_claims(sub=""), id="sub-empty"),
    pytest.param(_claims(sub=42), id="sub-number"),
    pytest.param(_claims(sub=None), id="sub-null"),
    pytest.param(_claims(sub={"id": "user-1"}), id="sub-object"),
    pytest.param(_claims(jti=DROP), id="jti-missing"),
    pytest.param(_claims(jti=7), id="jti-number"),
    pytest.param(_claims(scope=["resource.read"]), id="scope-list"),
    pytest.param(_claims(username=False), id="username-boolean"),
    pytest.param(_claims(sid=1), id="sid-number"),
]

DUPLICATE_CASES = [
    pytest.param(
        _raw_header('{{"alg":"none","alg":"{alg}","kid":"{kid}","typ":"at+jwt"}}'),
        id="header-alg-twice",
    ),
    pytest.param(
        _raw_header('{{"alg":"{alg}","kid":"other","kid":"{kid}","typ":"at+jwt"}}'),
        id="header-kid-twice",
    ),
    pytest.param(
        _raw_header('{{"alg":"{alg}","kid":"{kid}","typ":"JWT","typ":"at+jwt"}}'),
        id="header-typ-twice",
    ),
    pytest.param(_raw_payload('{{{members},"exp":{future}}}'), id="payload-exp-twice"),
    pytest.param(_raw_payload('{{{members},"sub":"admin"}}'), id="payload-sub-twice"),
    pytest.param(_raw_payload('{{{members},"aud":"another-service"}}'), id="payload-aud-twice"),
    pytest.param(_raw_payload('{{{members},"scope":"resource.admin"}}'), id="payload-scope-twice"),
]


@pytest.mark.parametrize("attack", TIME_CASES)
def test_bad_times_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", AUDIENCE_CASES)
def test_bad_audiences_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", ISSUER_CASES)
def test_bad_issuers_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", TYPE_CASES)
def test_tokens_of_another_type_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", SUBJECT_CASES)
def test_bad_subjects_and_ids_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", DUPLICATE_CASES)
def test_repeated_json_members_are_unauthenticated(target: Target, attack: Attack) -> None:
    target.refuse(attack(target.issuer))
