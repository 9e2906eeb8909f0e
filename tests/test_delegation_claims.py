"""Delegation on the verifier side: Principal.actors from ``act``, MethodPolicy.delegated_actors."""

from __future__ import annotations

from typing import Any

import pytest
from test_claims import NOW, POLICY, check, claims

from interceptors import DelegationRefused, InvalidClaims, MethodPolicy, Principal
from interceptors._admission import _require_actors

GET = "/ssot.resource.v1.ResourceService/GetProtectedResource"


def test_a_token_without_act_has_no_actors() -> None:
    assert check(claims()).actors == ()


def test_nested_act_reads_outermost_first() -> None:
    act = {"sub": "orders", "act": {"sub": "gateway"}}
    assert check(claims(act=act)).actors == ("orders", "gateway")


@pytest.mark.parametrize(
    "act",
    [
        pytest.param("orders", id="string"),
        pytest.param({"client": "orders"}, id="no-sub"),
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": 7}, id="sub-not-string"),
        pytest.param({"sub": "orders", "act": ["gateway"]}, id="nested-not-object"),
    ],
)
def test_a_malformed_act_is_invalid_claims(act: Any) -> None:
    with pytest.raises(InvalidClaims):
        check(claims(act=act))


def _principal(actors: tuple[str, ...]) -> Principal:
    act: Any = None
    for actor in reversed(actors):
        act = {"sub": actor} if act is None else {"sub": actor, "act": act}
    values = claims() if act is None else claims(act=act)
    return check(values, POLICY, NOW)


def test_method_policy_names_the_actors_a_method_accepts() -> None:
    policy = MethodPolicy(delegated_actors={GET: {"orders"}})
    assert policy.actors_for(GET) == frozenset({"orders"})
    assert policy.actors_for("/pkg.S/Other") is None
    _require_actors(_principal(("orders",)), policy.actors_for(GET))
    _require_actors(_principal(()), policy.actors_for(GET))  # direct calls unaffected
    with pytest.raises(DelegationRefused):
        _require_actors(_principal(("billing",)), policy.actors_for(GET))
    with pytest.raises(DelegationRefused):  # every actor of the chain must be named
        _require_actors(_principal(("orders", "gateway")), policy.actors_for(GET))


def test_an_empty_set_refuses_every_delegated_token() -> None:
    never = MethodPolicy(delegated_actors={GET: frozenset()})
    with pytest.raises(DelegationRefused):
        _require_actors(_principal(("orders",)), never.actors_for(GET))


@pytest.mark.parametrize(
    "bad", [{"not-a-method": {"a"}}, {GET: "orders"}, {GET: {""}}], ids=["method", "str", "empty"]
)
def test_method_policy_rejects_malformed_actor_rules(bad: Any) -> None:
    with pytest.raises(ValueError):
        MethodPolicy(delegated_actors=bad)
