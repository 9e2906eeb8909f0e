"""The flags of ``ssot-auth serve`` (also taken by ``ssot-auth up``), and their parsers.

Separate from the command itself: the flag table is long, and ``up``, ``keys`` and
``clients`` take parts of it without running a server.
"""

from __future__ import annotations

import argparse
from typing import Any

from auth_server.commands._keystore import add_key_store_arguments
from auth_server.commands.settings import (
    add_passphrase_argument,
    add_storage_arguments,
)
from auth_server.config import (
    DEFAULT_ACCESS_TOKEN_TTL,
    DEFAULT_GRPC_ADDRESS,
    DEFAULT_HTTP_ADDRESS,
    DEFAULT_JWKS_MAX_AGE,
    DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_LOGIN_REQUEST_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_METADATA_SIZE,
)
from auth_server.hashing import DEFAULT_MAX_WAIT
from auth_server.jwk import ALGORITHMS
from auth_server.lifecycle import parse_duration
from auth_server.passwords import Argon2Parameters
from auth_server.ratelimit import RateLimits
from auth_server.sessions import SessionPolicy
from auth_server.throttle import ThrottlePolicy
from auth_server.watch_auth import WATCH_AUTH_MODES, WATCH_SCOPE
from interceptors._cli import (
    add_env_argument,
    add_server_tls_arguments,
    env_value,
)


def add_server_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    add_storage_arguments(parser)
    add_passphrase_argument(parser)
    add_key_store_arguments(parser)
    add_env_argument(
        parser,
        "--grpc",
        default=DEFAULT_GRPC_ADDRESS,
        help="gRPC listen address",
        default_help=DEFAULT_GRPC_ADDRESS,
    )
    add_env_argument(
        parser,
        "--http",
        default=DEFAULT_HTTP_ADDRESS,
        help="JWKS HTTP listen address",
        default_help=DEFAULT_HTTP_ADDRESS,
    )
    add_env_argument(parser, "--issuer", required=required, help="token issuer URL, the iss claim")
    # Repeatable, so not add_env_argument: argparse would append the flags to the
    # variable's list, where the flags must replace it. SSOT_AUDIENCE may list several,
    # separated by spaces or commas; the first is the default.
    audience = str(env_value("AUDIENCE", "")).replace(",", " ").split() or None
    parser.add_argument(
        "--audience",
        action="append",
        default=None,
        required=required and audience is None,
        help="token audience, the aud claim; repeat for more audiences a login may ask for"
        " (RFC 8707), the first is the default (SSOT_AUDIENCE, space- or comma-separated)",
    )
    parser.set_defaults(env_audience=audience)
    add_env_argument(
        parser,
        "--algorithm",
        choices=ALGORITHMS,
        default="RS256",
        help="signing algorithm for new keys",
        default_help="RS256",
    )
    add_env_argument(
        parser,
        "--rsa-bits",
        type=int,
        default=2048,
        help="RSA key size for RS256/PS256: 2048, 3072 or 4096",
        default_help=2048,
    )
    add_env_argument(
        parser,
        "--access-token-ttl",
        type=int,
        default=DEFAULT_ACCESS_TOKEN_TTL,
        help="access token lifetime in seconds",
        default_help=DEFAULT_ACCESS_TOKEN_TTL,
    )
    add_env_argument(
        parser,
        "--jwks-max-age",
        type=int,
        default=DEFAULT_JWKS_MAX_AGE,
        help="JWKS Cache-Control max-age in seconds",
        default_help=DEFAULT_JWKS_MAX_AGE,
    )
    add_key_schedule_arguments(parser)
    add_env_argument(
        parser,
        "--allow-insecure-token-http",
        action="store_true",
        help="accept /oauth2/* requests (secrets, tokens) over plain HTTP from beyond loopback;"
        " only behind a TLS-terminating proxy",
    )
    add_env_argument(
        parser,
        "--no-reflection",
        action="store_true",
        help="do not serve gRPC server reflection",
    )
    add_env_argument(
        parser,
        "--no-listen",
        action="store_true",
        help="on PostgreSQL, hear other replicas and the CLI by polling only, without a LISTEN"
        " connection (for a pooler in transaction mode, which cannot carry LISTEN)",
    )
    add_operations_arguments(parser)
    _add_session_arguments(parser)
    _add_throttle_arguments(parser)
    _add_argon2_arguments(parser)
    add_server_tls_arguments(parser, serves="gRPC and HTTP")
    add_env_argument(
        parser,
        "--watch-auth",
        choices=WATCH_AUTH_MODES,
        default="none",
        help="who may follow WatchJwks/WatchRevocations: anyone, a client certificate"
        f" (mtls, needs --client-ca) or a token with the {WATCH_SCOPE} scope, whose stream"
        " ends at its exp",
        default_help="none",
    )
    add_limit_arguments(parser)
    _add_rate_limit_arguments(parser)


def add_operations_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("operations")
    add_env_argument(
        group,
        "--metrics",
        metavar="HOST:PORT",
        help="serve /metrics (and /healthz, /readyz) on a listener of its own, not on --http;"
        " recommended when --http is public",
    )
    add_env_argument(
        group,
        "--shutdown-grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM, after health turns NOT_SERVING and push streams end, how long"
        " in-flight calls get to finish",
        default_help=5.0,
    )


def _add_number(parser: Any, flag: str, default: float, help_text: str, *, integer: bool) -> None:
    """Add a numeric flag whose default comes from its ``SSOT_*`` variable (parser or group)."""
    add_env_argument(
        parser,
        flag,
        type=int if integer else float,
        default=int(default) if integer else default,
        metavar="N" if integer else "SECONDS",
        help=help_text,
        default_help=int(default) if float(default).is_integer() else default,
    )


def _add_numbers(
    parser: argparse.ArgumentParser, title: str, rows: tuple[tuple[str, float, str], ...]
) -> Any:
    """Add a group of numeric flags, ``(flag, default, help)`` each; return the group.

    A flag takes whole numbers when its default (the policy's field) is an ``int``.
    """
    group = parser.add_argument_group(title)
    for flag, default, text in rows:
        _add_number(group, flag, default, text, integer=isinstance(default, int))
    return group


def _add_session_arguments(parser: argparse.ArgumentParser) -> None:
    d = SessionPolicy()
    _add_numbers(
        parser,
        "sessions",
        (
            ("--session-idle-ttl", d.idle_timeout, "end a session unused for this many seconds"),
            ("--session-max-lifetime", d.max_lifetime, "end every session after this many seconds"),
            (
                "--refresh-grace",
                d.refresh_grace,
                "seconds a just-spent refresh token still returns the same successor",
            ),
            (
                "--max-sessions-per-user",
                d.max_per_user,
                "live sessions per user; the oldest end first",
            ),
        ),
    )


def _add_throttle_arguments(parser: argparse.ArgumentParser) -> None:
    d = ThrottlePolicy()
    _add_numbers(
        parser,
        "login throttling",
        (
            ("--throttle-window", d.window, "length of each failure-counting window, seconds"),
            (
                "--throttle-user-address",
                d.per_user_address,
                "failures per window for one user from one address",
            ),
            ("--throttle-address", d.per_address, "failures per window from one address"),
            (
                "--throttle-user",
                d.per_user,
                "failures per window for one user before each attempt waits a growing delay",
            ),
            ("--throttle-max-delay", d.max_delay, "longest per-user delay, seconds"),
        ),
    )


def _add_argon2_arguments(parser: argparse.ArgumentParser) -> None:
    d = Argon2Parameters()
    group = _add_numbers(
        parser,
        "password hashing (argon2id; older hashes are upgraded at the next login)",
        (
            ("--argon2-time-cost", d.time_cost, "passes over the memory"),
            ("--argon2-memory-cost", d.memory_cost, "memory in KiB"),
            ("--argon2-parallelism", d.parallelism, "lanes"),
        ),
    )
    _add_number(
        group,
        "--hash-workers",
        0,
        "logins checked at once, on threads of their own; 0 means one per CPU",
        integer=True,
    )
    _add_number(
        group,
        "--hash-max-wait",
        DEFAULT_MAX_WAIT,
        "a login that could not be answered within this many seconds is refused at once"
        " (RESOURCE_EXHAUSTED + retry-after)",
        integer=False,
    )


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_key_schedule_arguments(parser: argparse.ArgumentParser) -> None:
    add_env_argument(
        parser,
        "--key-rotation-interval",
        type=duration,
        default=duration("30d"),
        metavar="DURATION",
        help="how long each signing key signs before the next takes over, e.g. 30d; 0 rotates"
        " only on `keys rotate`",
        default_help="30d",
    )
    add_env_argument(
        parser,
        "--key-activate-after",
        type=duration,
        metavar="DURATION",
        help="how long a new key is published before it signs; at least 2 x --jwks-max-age",
        default_help="2 x --jwks-max-age",
    )
    add_env_argument(
        parser,
        "--key-retire-after",
        type=duration,
        metavar="DURATION",
        help="how long a replaced key stays published; at least --access-token-ttl + 30 s",
        default_help="--access-token-ttl + 30 s",
    )


_LIMITS = (
    ("max-metadata-size", DEFAULT_MAX_METADATA_SIZE, "largest request metadata, bytes"),
    ("max-message-size", DEFAULT_MAX_MESSAGE_SIZE, "largest request message, bytes"),
    ("max-concurrent-streams", DEFAULT_MAX_CONCURRENT_STREAMS, "most calls per connection"),
    ("max-login-request-size", DEFAULT_MAX_LOGIN_REQUEST_SIZE, "largest LoginRequest, bytes"),
)


def _add_rate_limit_arguments(parser: argparse.ArgumentParser) -> None:
    d = RateLimits()
    documents, token = d.groups["documents"], d.groups["token"]
    group = parser.add_argument_group(
        "HTTP rate limits (token bucket per client address, IPv6 per /64; 429 + Retry-After)"
    )
    for flag, default, text, integer in (
        (
            "--http-rate-limit",
            documents.rate,
            "requests per second to the /.well-known/ documents (JWKS, discovery); 0: no limit",
            False,
        ),
        ("--http-rate-burst", documents.burst, "requests at once to the documents", True),
        (
            "--http-token-rate-limit",
            token.rate,
            "requests per second to the /oauth2/ endpoints; 0: no limit",
            False,
        ),
        ("--http-token-rate-burst", token.burst, "requests at once to /oauth2/", True),
        (
            "--http-rate-limit-addresses",
            d.max_addresses,
            "client addresses tracked at once (least recently seen forgotten first)",
            True,
        ),
    ):
        add_env_argument(
            group,
            flag,
            type=int if integer else float,
            default=default,
            metavar="N",
            help=text,
            default_help=int(default) if float(default).is_integer() else default,
        )


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, default, what in _LIMITS:
        add_env_argument(
            parser, f"--{flag}", type=int, default=default, help=what, default_help=default
        )
