"""The garbage collector's schedule for a process that holds thousands of push streams.

Each WatchJwks/WatchRevocations stream keeps a few dozen objects alive (grpc
call state, the handler's task and generators). CPython's cyclic collector
counts allocations: with the default first threshold (700), pushing one
revocation to 10,000 streams (a few objects allocated per stream) runs a
hundred young collections, and the objects in flight at those moments are
promoted until a *full* collection runs. That one walks every live object:
about a second at 10,000 streams, spent in the middle of a push (measured
with ``benchmarks/bench_push_fanout.py``: 4,000 streams, revocation to all
0.26-0.97 s with the defaults, 0.21-0.33 s and no full collection with this).

``ssot-auth serve`` calls :func:`tune_gc_for_streams` (a process of its own);
:func:`auth_server.start_auth_server` does not, as it also runs inside other
programs. A larger first threshold lets the short-lived objects of a push die before
any collection looks at them, so hardly any reach the old generation; cycles
are still collected, just in larger, rarer young batches.
"""

from __future__ import annotations

import gc

#: Allocations (minus deallocations) between young collections.
YOUNG_THRESHOLD = 20_000


def tune_gc_for_streams() -> None:
    """Raise the collector's thresholds (never lower them); idempotent, process-wide."""
    young, middle, old = gc.get_threshold()
    if young == 0:
        return  # the collector is disabled on purpose: leave it so
    gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
