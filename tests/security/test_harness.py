"""The suite's own harness can fail: crafted tokens are valid until a case changes them,
and ``Target.refuse`` notices a token that gets through or a wrong status."""

from __future__ import annotations

import grpc
import pytest

from security.kit import Target, bearer


def test_a_crafted_token_without_changes_is_accepted(target: Target) -> None:
    reply = target.call(bearer(target.issuer.token(username="honest")))
    assert reply.user.username == "honest"
    assert reply.user.user_id == "user-1"


def test_a_crafted_p256_token_without_changes_is_accepted(es_target: Target) -> None:
    assert es_target.call(bearer(es_target.issuer.token(username="x"))).user.username == "x"


@pytest.mark.parametrize("algorithm", ["ES384", "ES512", "EdDSA"])
def test_crafted_tokens_on_the_other_curves_are_accepted(
    curve_targets: dict[str, Target], algorithm: str
) -> None:
    target = curve_targets[algorithm]
    assert target.call(bearer(target.issuer.token(username="y"))).user.username == "y"


def test_refuse_fails_when_the_token_gets_through(target: Target) -> None:
    with pytest.raises(pytest.fail.Exception):
        target.refuse(target.issuer.token())


def test_refuse_fails_on_another_status(target: Target) -> None:
    with pytest.raises(AssertionError, match="UNAUTHENTICATED"):
        target.refuse("garbage", code=grpc.StatusCode.RESOURCE_EXHAUSTED)
