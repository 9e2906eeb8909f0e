"""The auth service's Prometheus metrics: one registry per server, counted from its audit events.

Why ``prometheus_client`` rather than OpenTelemetry's Prometheus exporter: one small
package that is the reference text renderer; custom collectors read, at scrape time,
the counters the code already keeps (key states, push subscribers, the revocation
list); the exporter would pull in the OpenTelemetry SDK and still render through
``prometheus_client``.

Events are counted from the same audit events that write the audit lines
(:func:`interceptors.audit.audit_listener`), so a metric and the trail never
disagree; a few frequent events that are no audit line (a refresh, a token issued)
come through :func:`~interceptors.audit.notify_listener`. The listener is the
server's own (a context variable), so two servers in one process count apart.

Labels are bounded: methods, status codes, outcomes, layers, grant types,
algorithms, reasons; never a user, token, ``kid`` or address.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from interceptors.audit import AuditValue

__all__ = ["AuthMetrics", "KeyFigures", "ScrapeSources"]

_RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_HASH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0)
KEY_STATES = ("next", "current", "previous", "retired", "revoked")


@dataclass(frozen=True, slots=True)
class KeyFigures:
    """What the readiness probe last read about the signing keys (no database at scrape)."""

    by_state: Mapping[str, int] = field(default_factory=dict)
    current_activated_at: float | None = None
    next_change_at: float | None = None


@dataclass(kw_only=True)
class ScrapeSources:
    """Where the scrape-time gauges come from; each is read only when Prometheus scrapes."""

    keys: Callable[[], KeyFigures] = KeyFigures
    subscribers: Callable[[], Mapping[str, int]] = dict
    revocations: Callable[[], tuple[int, int]] = lambda: (0, 0)
    ready: Callable[[], bool] = lambda: True


class AuthMetrics(Collector):
    """The metrics of one auth server, on a registry of its own."""

    def __init__(self, *, now: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.sources = ScrapeSources()
        self._now = now
        r = self.registry
        self.rpcs = Counter(
            "ssot_auth_rpcs", "gRPC calls by method and status code", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "ssot_auth_rpc_seconds",
            "gRPC call latency by method (streams: until the stream ends)",
            ["method"],
            buckets=_RPC_BUCKETS,
            registry=r,
        )
        self.logins = Counter(
            "ssot_auth_logins",
            "Logins by outcome: succeeded, bad_credentials, throttled, shed, or another failure",
            ["outcome"],
            registry=r,
        )
        self.throttled = Counter(
            "ssot_auth_logins_throttled",
            "Logins refused by a throttling layer (user_address, user, address)",
            ["layer"],
            registry=r,
        )
        self.refreshes = Counter(
            "ssot_auth_refreshes",
            "Refreshes by outcome: rotated, grace_repeat, reuse_detected",
            ["outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "ssot_auth_tokens_issued",
            "Access tokens issued by grant type and signing algorithm",
            ["grant_type", "algorithm"],
            registry=r,
        )
        self.revoked = Counter(
            "ssot_auth_sessions_revoked",
            "Sessions revoked by reason (reuse, logout, admin, session_limit, ...)",
            ["reason"],
            registry=r,
        )
        self.client_failures = Counter(
            "ssot_auth_client_auth_failures",
            "Service identities (clients) that failed to authenticate, by reason",
            ["reason"],
            registry=r,
        )
        self.key_events = Counter(
            "ssot_auth_key_events", "Signing key changes by kind", ["event"], registry=r
        )
        self.database_errors = Counter(
            "ssot_auth_database_errors", "Database operations that failed", registry=r
        )
        self.hash_seconds = Histogram(
            "ssot_auth_password_hash_seconds",
            "Time one argon2id hash or verification took",
            buckets=_HASH_BUCKETS,
            registry=r,
        )
        r.register(self)
        # The series a dashboard plots exist from the start, at 0, so a rate() over a
        # quiet replica is 0 rather than "no data".
        for outcome in ("succeeded", "bad_credentials", "throttled", "shed"):
            self.logins.labels(outcome)
        for layer in ("user_address", "user", "address"):
            self.throttled.labels(layer)
        for outcome in ("rotated", "grace_repeat", "reuse_detected"):
            self.refreshes.labels(outcome)
        for reason in ("reuse", "logout", "admin", "session_limit"):
            self.revoked.labels(reason)

    def expect_algorithm(self, algorithm: str) -> None:
        """Start the token counters of the grants at 0 for the algorithm that signs."""
        for grant in ("password", "refresh_token", "client_credentials", "token_exchange"):
            self.tokens.labels(grant, algorithm)

    # -- events (the audit listener) --------------------------------------------------

    def on_event(self, event: str, fields: Mapping[str, AuditValue]) -> None:
        """Count one event; the server installs this as its audit listener."""
        handler = _EVENTS.get(event)
        if handler is not None:
            handler(self, fields)

    # -- scrape-time gauges -----------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        figures = self.sources.keys()
        now = self._now()
        states = GaugeMetricFamily(
            "ssot_auth_signing_keys", "Stored signing keys by state", labels=["state"]
        )
        for state in KEY_STATES:
            states.add_metric([state], figures.by_state.get(state, 0))
        yield states
        age = math.nan
        if figures.current_activated_at is not None:
            age = max(0.0, now - figures.current_activated_at)
        yield GaugeMetricFamily(
            "ssot_auth_signing_key_age_seconds",
            "Seconds since the current signing key started signing (NaN: none)",
            value=age,
        )
        left = math.nan if figures.next_change_at is None else figures.next_change_at - now
        yield GaugeMetricFamily(
            "ssot_auth_next_key_change_seconds",
            "Seconds until the next scheduled key change (NaN: none scheduled)",
            value=left,
        )
        subscribers = GaugeMetricFamily(
            "ssot_auth_push_subscribers",
            "Open push streams by stream (WatchJwks: jwks, WatchRevocations: revocations)",
            labels=["stream"],
        )
        for stream, count in sorted(self.sources.subscribers().items()):
            subscribers.add_metric([stream], count)
        yield subscribers
        sessions, watermarks = self.sources.revocations()
        yield GaugeMetricFamily(
            "ssot_auth_revoked_sessions",
            "Revoked sessions on the pushed revocation list",
            value=sessions,
        )
        yield GaugeMetricFamily(
            "ssot_auth_revocation_watermarks",
            "Issued-before watermarks on the pushed revocation list",
            value=watermarks,
        )
        yield GaugeMetricFamily(
            "ssot_auth_ready",
            "1 while the readiness probe passes",
            value=float(self.sources.ready()),
        )


def _login_succeeded(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.logins.labels("succeeded").inc()


def _login_failed(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.logins.labels(_bounded(fields.get("reason"))).inc()


def _login_throttled(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.logins.labels("throttled").inc()
    m.throttled.labels(_bounded(fields.get("layer"))).inc()


def _login_shed(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.logins.labels("shed").inc()


def _refresh(outcome: str) -> Callable[[AuthMetrics, Mapping[str, AuditValue]], None]:
    def count(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
        m.refreshes.labels(outcome).inc()

    return count


def _session_revoked(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.revoked.labels(_bounded(fields.get("reason"))).inc()


def _session_logout(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.revoked.labels("logout").inc()


def _token_issued(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.tokens.labels(_bounded(fields.get("grant_type")), _bounded(fields.get("algorithm"))).inc()


def _client_failed(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.client_failures.labels(_bounded(fields.get("reason"))).inc()


def _database_error(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    m.database_errors.inc()


def _hashed(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
    seconds = fields.get("seconds")
    if isinstance(seconds, float):
        m.hash_seconds.observe(seconds)


def _key(event: str) -> Callable[[AuthMetrics, Mapping[str, AuditValue]], None]:
    def count(m: AuthMetrics, fields: Mapping[str, AuditValue]) -> None:
        m.key_events.labels(event.removeprefix("key.")).inc()

    return count


_MAX_LABEL = 40


def _bounded(value: AuditValue) -> str:
    # Reasons, layers and grant types come from the code, not the caller; still, a
    # label never carries more than a short identifier.
    text = "" if value is None else str(value)
    return (
        text
        if len(text) <= _MAX_LABEL
        and text.replace("_", "").replace("-", "").replace(":", "").replace(".", "").isalnum()
        else "other"
    )


_EVENTS: dict[str, Callable[[AuthMetrics, Mapping[str, AuditValue]], None]] = {
    "login.succeeded": _login_succeeded,
    "login.failed": _login_failed,
    "login.throttled": _login_throttled,
    "login.shed": _login_shed,
    "refresh.rotated": _refresh("rotated"),
    "refresh.grace_repeat": _refresh("grace_repeat"),
    "refresh.reuse_detected": _refresh("reuse_detected"),
    "session.revoked": _session_revoked,
    "session.logout": _session_logout,
    "token.issued": _token_issued,
    "client.auth_failed": _client_failed,
    "storage.error": _database_error,
    "password.hashed": _hashed,
    **{
        name: _key(name)
        for name in ("key.rotated", "key.activated", "key.revoked", "key.retired", "key.created")
    },
}
