"""Prometheus metrics for a verifying service: opt in by importing this module.

It needs ``prometheus_client``; ``import interceptors`` never loads it. Wire it up
once per verifier::

    from prometheus_client import CollectorRegistry, start_http_server
    from interceptors.prometheus import VerifierMetrics

    registry = CollectorRegistry()
    metrics = VerifierMetrics(verifier, registry)
    server = grpc.server(pool, interceptors=[AuthInterceptor(verifier, observer=metrics)])
    start_http_server(9100, registry=registry)

The counters the key cache, the revocation list and the verifier already keep are
read when Prometheus scrapes (a custom collector), so the per-call path gains
nothing but the check's own counter and histogram. Labels are bounded: the
server's method names and the refusal reasons, never a user, token, ``kid`` or
peer address.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from interceptors._cache import KeyCache
from interceptors._revocation import RevocationList
from interceptors._verify import TokenVerifier

__all__ = ["VERIFY_BUCKETS", "VerifierMetrics"]

# A cached check takes microseconds, a first RSA check about a millisecond, a check
# that waits for a key fetch up to the fetch deadline (3 s).
VERIFY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 3.0)


class VerifierMetrics(Collector):
    """The metrics of one verifier, registered on ``registry``; a ``VerifyObserver``.

    Hand it to ``AuthInterceptor(..., observer=metrics)`` (or the async one) so each
    check is counted by result and timed.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        registry: CollectorRegistry,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._now = now
        self._checks = Counter(
            "ssot_verifier_verifications",
            "Token checks by method and result (ok, or the audit line's refusal reason)",
            ["method", "result"],
            registry=registry,
        )
        self._seconds = Histogram(
            "ssot_verifier_verify_seconds",
            "Time a token check took, key fetch included",
            buckets=VERIFY_BUCKETS,
            registry=registry,
        )
        registry.register(self)

    def verified(self, method: str, result: str, seconds: float) -> None:
        """Count one check (the ``VerifyObserver`` hook)."""
        self._checks.labels(method, result).inc()
        self._seconds.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        """Read the counters the verifier's parts keep (Prometheus calls this on scrape)."""
        hits, misses = self._verifier.cache_lookups
        lookups = CounterMetricFamily(
            "ssot_verifier_token_cache_lookups",
            "Verified-token cache lookups by outcome",
            labels=["outcome"],
        )
        lookups.add_metric(["hit"], hits)
        lookups.add_metric(["miss"], misses)
        yield lookups
        keys = self._verifier.keys
        if isinstance(keys, KeyCache):
            yield from self._key_cache(keys)
        revocations = self._verifier.revocations
        if isinstance(revocations, RevocationList):
            yield from _revocations(revocations)

    def _key_cache(self, keys: KeyCache) -> Iterator[Metric]:
        stats = keys.stats
        updates = CounterMetricFamily(
            "ssot_verifier_key_updates",
            "Key sets the cache tried to load, by source (fetch, push) and outcome",
            labels=["source", "outcome"],
        )
        updates.add_metric(["fetch", "ok"], stats.fetches - stats.fetch_failures)
        updates.add_metric(["fetch", "error"], stats.fetch_failures)
        updates.add_metric(["push", "ok"], stats.pushes)
        yield updates
        age = math.nan if stats.last_success is None else max(0.0, self._now() - stats.last_success)
        yield GaugeMetricFamily(
            "ssot_verifier_key_set_age_seconds",
            "Seconds since the last good key set was loaded (NaN: never)",
            value=age,
        )
        yield GaugeMetricFamily(
            "ssot_verifier_key_set_loaded",
            "1 while the verifier holds a key set",
            value=0.0 if keys.key_set is None else 1.0,
        )
        yield GaugeMetricFamily(
            "ssot_verifier_key_set_stale",
            "1 while the last good key set is served past its max-age (source unreachable)",
            value=1.0 if keys.serving_stale else 0.0,
        )
        yield CounterMetricFamily(
            "ssot_verifier_stale_key_lookups",
            "Key lookups answered from a set past its max-age",
            value=stats.stale_serves,
        )
        yield CounterMetricFamily(
            "ssot_verifier_unknown_kid_refetches_suppressed",
            "Unknown-kid lookups refused without a fetch (cooldown, remembered missing kid)",
            value=stats.suppressed_refetches,
        )


def _revocations(revocations: RevocationList) -> Iterator[Metric]:
    stats = revocations.stats
    yield GaugeMetricFamily(
        "ssot_verifier_revoked_sessions", "Revoked sessions the verifier holds", value=stats.revoked
    )
    yield GaugeMetricFamily(
        "ssot_verifier_revocation_watermarks",
        "Issued-before watermarks the verifier holds",
        value=stats.watermarks,
    )
    yield GaugeMetricFamily(
        "ssot_verifier_revocation_stream_synced",
        "1 while the revocation stream is open and has sent its full list",
        value=1.0 if stats.synced else 0.0,
    )
    yield CounterMetricFamily(
        "ssot_verifier_revocation_stream_reconnects",
        "Times the revocation stream was opened again after it broke",
        value=stats.reconnects,
    )
