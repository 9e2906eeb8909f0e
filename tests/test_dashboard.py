"""The Grafana dashboard asks only for metrics the servers actually expose (scraped live)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_metrics import scrape

from helpers import AUDIENCE, ISSUER, EventLoopThread, make_config, start_harness, wait_until
from resource_server.app import ResourceServerConfig, open_verifier
from resource_server.ops import start_metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "ops" / "grafana" / "ssot-auth.json"
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _queried_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    return {name for expr in exprs for name in re.findall(r"\bssot_[a-z0-9_]+", expr)}


def test_every_metric_the_dashboard_queries_is_exposed(tmp_path: Path) -> None:
    loop = EventLoopThread()
    auth = start_harness(loop, make_config(tmp_path))
    try:
        config = ResourceServerConfig(
            grpc_address="127.0.0.1:0", issuer=ISSUER, audience=AUDIENCE, auth_target=auth.target
        )
        with open_verifier(config) as verifier:
            endpoint = start_metrics(verifier, "127.0.0.1:0")
            try:
                assert wait_until(lambda: verifier.keys.key_set is not None, 10)  # type: ignore[attr-defined]
                # Histograms show their buckets once observed: one check of each kind.
                endpoint.observer.verified("/x", "ok", 0.001)
                exposed = {name for name, _ in scrape(auth.server.metrics_url)}
                exposed |= {name for name, _ in scrape(f"http://127.0.0.1:{endpoint.port}/metrics")}
            finally:
                endpoint.close()
    finally:
        auth.channel.close()
        auth.stop()
        loop.close()
    missing = sorted(n for n in _queried_names() if n not in exposed)
    assert missing == []
    # And the dashboard covers what the issue asks an operator to see.
    for wanted in (
        "ssot_auth_logins_total",
        "ssot_auth_logins_throttled_total",
        "ssot_auth_refreshes_total",
        "ssot_verifier_verifications_total",
        "ssot_auth_signing_key_age_seconds",
        "ssot_auth_next_key_change_seconds",
        "ssot_auth_push_subscribers",
        "ssot_verifier_key_updates_total",
    ):
        assert wanted in _queried_names()
    assert not any(n.endswith(_SUFFIXES[-1]) for n in _queried_names())
