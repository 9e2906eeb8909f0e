"""Command-line plumbing shared by ``ssot-auth`` and ``ssot-resource``; not library API.

Every flag of both commands can also be set by an ``SSOT_*`` environment variable
(DESIGN.md). :func:`add_env_argument` derives the variable's name from the flag once,
reads it as the flag's default, and writes it into the help text, so the three can
never drift apart. The TLS flag groups are defined here once, with the maps that let a
command name its flag in a :class:`~interceptors.tls.TlsError` message
(``exc.naming(CLIENT_TLS_FLAGS)``).

It lives in ``interceptors`` because ``resource_server`` may import nothing else of
ours (and ``auth_server`` may use ``interceptors``' leaf helpers); it is private
because a library user has no use for it and it promises them nothing. A leaf: it
imports only the standard library (and :mod:`interceptors.otel` when the ``OTEL_*``
variables ask for traces).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interceptors.logformat import LOG_FORMATS, default_log_format, formatter_for

if TYPE_CHECKING:
    from interceptors.otel import Tracing

ENV_PREFIX = "SSOT_"
_FALSE = ("", "0", "false")
#: How the client TLS flags name ``channel_credentials``' parameters.
CLIENT_TLS_FLAGS: Mapping[str, str] = {
    "ca_cert": "--ca-cert",
    "client_cert": "--client-cert",
    "client_key": "--client-key",
}
#: How the server TLS flags name ``server_credentials``' parameters.
SERVER_TLS_FLAGS: Mapping[str, str] = {
    "cert": "--tls-cert",
    "key": "--tls-key",
    "client_ca": "--client-ca",
}


class SettingsError(Exception):
    """A setting is unusable; the message names the flag or variable to fix."""


def parse_command_line(
    build_parser: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None, *, prog: str
) -> argparse.Namespace | None:
    """Parse ``argv`` and send log lines to standard error at ``--log-level``.

    Returns:
        The parsed arguments; ``None``, after one error line, when an ``SSOT_*``
        variable holds a value its flag refuses (the command then exits 2, as for
        a bad flag).
    """
    try:
        ns = build_parser().parse_args(argv)
    except SettingsError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(ns.log_format or default_log_format()))
    logging.basicConfig(level=ns.log_level, handlers=[handler])
    return ns


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the ``OTEL_*`` variables ask for traces: an exporter other than ``none`` is
    named and the SDK is not disabled. (Tracing is opt-in: the SDK's own default
    exporter, OTLP to localhost, is not assumed.)"""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = {name.strip() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")}
    return bool(names - {"", "none"})


def start_tracing(service_name: str) -> Tracing | None:
    """The serving commands' traces: set up from ``OTEL_*`` when they ask for them.

    Raises:
        SettingsError: Traces are asked for, but the ``otel`` extra or the named
            exporter is not installed.
    """
    if not tracing_requested():
        return None
    try:
        from interceptors.otel import configure_from_env  # the optional extra, only when asked for
    except ImportError:
        raise SettingsError(
            "OTEL_TRACES_EXPORTER asks for traces, but OpenTelemetry is not installed"
            " (pip install 'ssot-auth[otel]')"
        ) from None
    try:
        return configure_from_env(service_name)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def run_until_signalled(serve: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> int:
    """Run ``serve(stop_event)`` until it returns; SIGINT/SIGTERM set the event."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(runner())
    return 0


def env_name(flag: str) -> str:
    """The variable behind a flag: ``--tls-cert`` -> ``SSOT_TLS_CERT``."""
    return ENV_PREFIX + flag.removeprefix("--").replace("-", "_").upper()


def env_value(name: str, default: Any = None, *, type: Callable[[str], Any] | None = None) -> Any:
    """The variable ``name`` (``SSOT_`` added if missing), converted by ``type``; else ``default``.

    An empty variable counts as unset.

    Raises:
        SettingsError: ``type`` refuses the value (the message names the variable).
    """
    env = name if name.startswith(ENV_PREFIX) else ENV_PREFIX + name
    value = os.environ.get(env) or None
    if value is None or type is None:
        return default if value is None else value
    try:
        return type(value)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        if type is int:
            raise SettingsError(f"{env} must be an integer") from None
        if type is float:
            raise SettingsError(f"{env} must be a number") from None
        raise SettingsError(f"{env}: {exc}") from None


def env_flag(name: str) -> bool:
    """Whether a boolean variable is set: anything but empty, ``0`` and ``false``."""
    return str(env_value(name, "")) not in _FALSE


def add_env_argument(
    parser: Any,
    flag: str,
    *,
    help: str,
    env: str | None = None,
    default: Any = None,
    type: Callable[[str], Any] | None = None,
    action: str | None = None,
    required: bool = False,
    default_help: object = None,
    note: str | None = None,
    **kwargs: Any,
) -> argparse.Action:
    """Add ``flag`` to ``parser`` (or an argument group) with an ``SSOT_*`` variable behind it.

    The variable, when set, is the flag's default (converted by ``type`` now, so a bad
    value is reported by its name); the help ends in ``(SSOT_X, default D; note)``.

    Args:
        parser: An ``argparse`` parser, argument group or mutually exclusive group.
        flag: The option, e.g. ``--tls-cert``.
        help: What the flag does, without the variable or the default.
        env: The variable without ``SSOT_``, if it is not the flag's name (``TLS_CERT``).
        default: The default without the variable.
        type: Converts the flag's and the variable's text.
        action: ``"store_true"`` for a switch: ``SSOT_X=1`` turns it on.
        required: The flag must be given, unless its variable is set.
        default_help: The default as the help shows it (``None``: not shown).
        note: Added after the variable in the help, e.g. ``needs --tls-key``.
        **kwargs: Passed to ``add_argument`` (``choices``, ``metavar``, ...).

    Raises:
        SettingsError: The variable's value is refused by ``type``.
    """
    name = ENV_PREFIX + env if env else env_name(flag)
    if action == "store_true":
        value: Any = env_flag(name)
        shown = f"{name}=1"
    else:
        value = env_value(name, default, type=type)
        shown = name
    if default_help is not None:
        shown += f", default {default_help}"
    if note:
        shown += f"; {note}"
    if action is not None:
        kwargs["action"] = action
    if type is not None:
        kwargs["type"] = type
    if required:
        kwargs["required"] = not os.environ.get(name)
    action_: argparse.Action = parser.add_argument(
        flag, default=value, help=f"{help} ({shown})", **kwargs
    )
    return action_


def add_log_level_argument(parser: Any) -> None:
    """``--log-level`` and ``--log-format``, the flags every command has."""
    add_env_argument(
        parser,
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level",
        default_help="INFO",
    )
    add_env_argument(
        parser,
        "--log-format",
        choices=list(LOG_FORMATS),
        help="log lines as text or as one JSON object per line",
        default_help="text on a terminal, json otherwise",
    )


def add_client_tls_arguments(parser: Any) -> None:
    """``--tls``, ``--ca-cert``, ``--client-cert`` and ``--client-key`` of a calling command.

    See :func:`wants_tls` and ``interceptors.tls.channel_credentials`` (the flags are
    named in its errors by :data:`CLIENT_TLS_FLAGS`).
    """
    add_env_argument(
        parser,
        "--tls",
        action="store_true",
        help="connect with TLS, trusting the system roots",
        note="implied by --ca-cert",
    )
    add_env_argument(
        parser, "--ca-cert", type=Path, help="connect with TLS, trusting the CAs in this PEM file"
    )
    add_env_argument(
        parser, "--client-cert", type=Path, help="client certificate chain (PEM) for mutual TLS"
    )
    add_env_argument(parser, "--client-key", type=Path, help="private key (PEM) of --client-cert")


def wants_tls(ns: argparse.Namespace) -> bool:
    """Whether any of :func:`add_client_tls_arguments`' flags asks for TLS."""
    return bool(ns.tls or ns.ca_cert or ns.client_cert or ns.client_key)


def add_server_tls_arguments(parser: Any, *, serves: str) -> None:
    """``--tls-cert``, ``--tls-key`` and ``--client-ca`` of a serving command.

    ``serves`` names what is served over TLS (``"gRPC and HTTP"``). The flags are
    named in ``server_credentials``' errors by :data:`SERVER_TLS_FLAGS`.
    """
    add_env_argument(
        parser,
        "--tls-cert",
        type=Path,
        help=f"serve {serves} over TLS with this certificate chain, PEM",
        note="needs --tls-key",
    )
    add_env_argument(parser, "--tls-key", type=Path, help="private key of --tls-cert, PEM")
    add_env_argument(
        parser,
        "--client-ca",
        type=Path,
        help="require gRPC clients to present a certificate signed by these CAs: mutual TLS",
    )
