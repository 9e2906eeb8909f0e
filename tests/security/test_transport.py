"""Transport: where the token travels. Missing, empty, other schemes, duplicates, binary, oversize.

Most cases carry a perfectly valid token in the wrong place or shape: the token is
fine, the way it arrives is not (RFC 6750 §2.1: exactly ``Bearer <token>``, once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import grpc
import pytest

from security.kit import Issuer, Metadata, Target

MetadataAttack: TypeAlias = Callable[[Issuer], Metadata]

AUTH = "authorization"


def _value(template: str) -> MetadataAttack:
    """One ``authorization`` entry, ``{token}`` replaced by a valid token."""
    return lambda issuer: ((AUTH, template.format(token=issuer.token())),)


def _padded_token(issuer: Issuer, length: int) -> str:
    """A valid token whose length is at least ``length`` (a long custom claim)."""
    base = len(issuer.token())
    return issuer.token(padding="p" * max(0, (length - base) * 3 // 4 + 8))


CASES = [
    pytest.param(lambda i: (), id="no-metadata"),
    pytest.param(lambda i: (("x-api-key", i.token()),), id="token-in-another-header"),
    pytest.param(
        lambda i: (("proxy-authorization", f"Bearer {i.token()}"),), id="proxy-authorization"
    ),
    pytest.param(_value("Bearer "), id="empty-bearer"),
    pytest.param(_value("Bearer"), id="scheme-only"),
    pytest.param(_value(""), id="empty-value"),
    pytest.param(_value("{token}"), id="no-scheme"),
    pytest.param(_value("Basic dXNlcjpwYXNzd29yZA=="), id="basic-scheme"),
    pytest.param(_value("Token {token}"), id="token-scheme"),
    pytest.param(_value("JWT {token}"), id="jwt-scheme"),
    pytest.param(_value("DPoP {token}"), id="dpop-scheme"),
    pytest.param(_value("Bearer: {token}"), id="bearer-colon"),
    pytest.param(_value("Bearer,{token}"), id="bearer-comma"),
    pytest.param(_value("Bearer  {token}"), id="two-spaces"),
    pytest.param(_value(" Bearer {token}"), id="leading-space"),
    pytest.param(_value("Bearer {token} extra"), id="trailing-word"),
    pytest.param(_value("Bearer {token},{token}"), id="two-tokens-one-entry"),
    pytest.param(
        lambda i: ((AUTH, f"Bearer {i.token()}"), (AUTH, f"Bearer {i.token()}")),
        id="two-entries-both-valid",
    ),
    pytest.param(
        lambda i: ((AUTH, f"Bearer {i.token()}"), (AUTH, "Bearer garbage")),
        id="two-entries-valid-first",
    ),
    pytest.param(
        lambda i: ((AUTH, "Bearer garbage"), (AUTH, f"Bearer {i.token()}")),
        id="two-entries-valid-last",
    ),
    pytest.param(
        lambda i: (("authorization-bin", f"Bearer {i.token()}".encode()),), id="binary-entry"
    ),
    pytest.param(
        lambda i: (("authorization-bin", b"\x00\xff"), (AUTH, f"Bearer {i.token()}")),
        id="binary-entry-beside-a-valid-one",
    ),
    pytest.param(
        lambda i: ((AUTH, f"Bearer {_padded_token(i, 9000)}"),), id="token-over-the-length-limit"
    ),
]

# Refused by the transport itself, before any of our code runs: gRPC answers
# RESOURCE_EXHAUSTED when the metadata is larger than --max-metadata-size.
OVERSIZE_CASES = [
    pytest.param(lambda i: ((AUTH, f"Bearer {_padded_token(i, 20_000)}"),), id="header-over-16k"),
    pytest.param(
        lambda i: (
            *((f"x-pad-{n}", "v" * 100) for n in range(200)),
            (AUTH, f"Bearer {i.token()}"),
        ),
        id="many-entries-over-16k",
    ),
]


@pytest.mark.parametrize("attack", CASES)
def test_tokens_sent_the_wrong_way_are_unauthenticated(
    target: Target, attack: MetadataAttack
) -> None:
    target.refuse(attack(target.issuer))


@pytest.mark.parametrize("attack", OVERSIZE_CASES)
def test_metadata_over_the_size_limit_is_refused_by_the_transport(
    target: Target, attack: MetadataAttack
) -> None:
    target.refuse(attack(target.issuer), code=grpc.StatusCode.RESOURCE_EXHAUSTED)
