"""The audit trail: one structured line per security event, and no secret in any log line.

One scenario runs logins (good, bad, unknown user, a password typed as the user name,
an oversized one) and then every token and metadata case of the attack families
against a sync and an aio resource server, with every logger at DEBUG. Afterwards
every captured line, tracebacks included, is searched for the passwords, tokens,
refresh token, key passphrase and private key the scenario used.
"""

from __future__ import annotations

import collections
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from helpers import PASSPHRASE, EventLoopThread, make_config, start_harness
from interceptors.logformat import JsonFormatter
from security import (
    test_alg,
    test_claims,
    test_encoding,
    test_header,
    test_key_confusion,
    test_signature,
    test_transport,
)
from security.kit import SENT_SECRETS, Target, auth_target, b64u, bearer

ALICE_PASSWORD = "alice-secret-password-4c1d"
WRONG_PASSWORD = "wrong-secret-password-9e2b"
UNKNOWN_USER_PASSWORD = "nobody-secret-password-77aa"
LONG_PASSWORD = "long-secret-password-" + "x" * 1500

TOKEN_TABLES = [
    test_alg.RSA_KEY_CASES,
    test_key_confusion.RSA_CASES,
    test_signature.RSA_CASES,
    test_header.KID_CASES,
    test_header.CRIT_CASES,
    [case.values[0] for case in test_header.EMBEDDED_KEY_CASES],
    test_claims.TIME_CASES,
    test_claims.AUDIENCE_CASES,
    test_claims.ISSUER_CASES,
    test_claims.TYPE_CASES,
    test_claims.SUBJECT_CASES,
    test_claims.DUPLICATE_CASES,
    test_encoding.PADDING_CASES,
    test_encoding.WHITESPACE_CASES,
    test_encoding.JSON_CASES,
    test_encoding.SHAPE_CASES,
    test_transport.CASES,
]


def _attacks() -> list[Any]:
    return [getattr(case, "values", (case,))[0] for table in TOKEN_TABLES for case in table]


def _login_failure(harness: Any, name: str, password: str) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        harness.login(name, password)
    code: grpc.StatusCode = info.value.code()  # type: ignore[attr-defined]
    return code


def _secrets_of_key(private_key: Any) -> set[str]:
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    lines = {line for line in pem.splitlines() if len(line) >= 20 and "PRIVATE KEY" not in line}
    numbers = private_key.private_numbers()
    d = numbers.d.to_bytes((numbers.d.bit_length() + 7) // 8, "big")
    return lines | {b64u(d), str(numbers.d)}


def _pieces(secret: str) -> set[str]:
    """The secret and each of its dot-separated segments long enough to be telling."""
    return {piece for piece in {secret, *secret.split(".")} if len(piece) >= 20}


def test_a_whole_scenario_logs_every_security_event_and_no_secret(
    loop_thread: EventLoopThread, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    harness = start_harness(loop_thread, make_config(tmp_path))
    try:
        harness.add_user("alice", ALICE_PASSWORD, ("resource.read",))
        harness.add_user("honest", "honest-password-7f3a9c", ("resource.read",))
        grant = harness.login("alice", ALICE_PASSWORD)
        assert _login_failure(harness, "alice", WRONG_PASSWORD) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            _login_failure(harness, "nobody", UNKNOWN_USER_PASSWORD)
            == grpc.StatusCode.UNAUTHENTICATED
        )
        # A password typed into the user name field is a classic way into the logs.
        assert (
            _login_failure(harness, ALICE_PASSWORD, ALICE_PASSWORD)
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert _login_failure(harness, "alice", LONG_PASSWORD) == grpc.StatusCode.INVALID_ARGUMENT
        key = harness.signing_key()
        for aio in (False, True):
            with auth_target(loop_thread, harness, aio=aio) as target:
                _run_every_attack(target, grant.access_token)
    finally:
        harness.channel.close()
        harness.stop()

    secrets = {ALICE_PASSWORD, WRONG_PASSWORD, UNKNOWN_USER_PASSWORD, LONG_PASSWORD}
    secrets |= {PASSPHRASE.decode(), grant.refresh_token} | _secrets_of_key(key.private_key)
    for token in {grant.access_token, *SENT_SECRETS}:
        secrets |= _pieces(token)
    # Both --log-format choices: the JSON one also carries the audit fields top level.
    lines = [
        formatter.format(record)
        for formatter in (logging.Formatter("%(name)s %(levelname)s %(message)s"), JsonFormatter())
        for record in caplog.records
    ]
    assert len(lines) > 200
    leaks = [(secret[:12], line[:120]) for line in lines for secret in secrets if secret in line]
    assert leaks == []

    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ssot.audit"]
    # Events caused by a call name its peer; the server's own (key.created at start) have none.
    audit = [e for e in records if e["event"].startswith(("login.", "token."))]
    assert all(entry.get("peer", "").startswith("ipv") for entry in audit)
    assert {e["event"] for e in records} - {e["event"] for e in audit} <= {"key.created"}
    events = collections.Counter((entry["event"], entry.get("reason")) for entry in audit)
    assert events[("login.succeeded", None)] >= 3  # alice, and the honest user twice
    assert events[("login.failed", "bad_credentials")] == 3
    assert events[("login.failed", "invalid_argument")] == 1
    for reason in ("missing_token", "malformed", "bad_signature", "bad_claims", "unknown_key"):
        assert events[("token.rejected", reason)] > 0, reason
    assert set(events) <= {
        ("login.succeeded", None),
        ("login.failed", "bad_credentials"),
        ("login.failed", "invalid_argument"),
        *(
            ("token.rejected", reason)
            for reason in (
                "missing_token",
                "malformed",
                "bad_signature",
                "bad_claims",
                "unknown_key",
                "expired",
                "not_yet_valid",
            )
        ),
    }


def _run_every_attack(target: Target, honest: str) -> None:
    assert target.call(bearer(honest)).user.username == "alice"
    for attack in _attacks():
        target.refuse(attack(target.issuer), fetches=None)
