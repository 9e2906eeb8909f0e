"""The refresh verdict as a pure function: spend, repeat within grace, or reuse (no database)."""

from __future__ import annotations

import pytest

from auth_server.session_policy import RefreshVerdict, classify_refresh

T0 = 1_700_000_000.0
GRACE = 20.0
TOKEN, SUCCESSOR, LATER = "h-token", "h-successor", "h-successor-of-successor"


@pytest.mark.parametrize(
    ("current", "spent_at", "now", "grace", "verdict"),
    [
        pytest.param(TOKEN, None, T0, GRACE, "spend", id="the-current-token-is-spent"),
        pytest.param(SUCCESSOR, T0, T0 + 5, GRACE, "repeat", id="repeat-within-grace"),
        pytest.param(SUCCESSOR, T0, T0, GRACE, "repeat", id="repeat-at-once"),
        pytest.param(SUCCESSOR, T0, T0 + GRACE, GRACE, "repeat", id="repeat-at-the-grace-edge"),
        pytest.param(SUCCESSOR, T0, T0 + GRACE + 0.001, GRACE, "reuse", id="just-past-grace"),
        pytest.param(SUCCESSOR, T0, T0 + 3600, GRACE, "reuse", id="long-after"),
        pytest.param(LATER, T0, T0 + 1, GRACE, "reuse", id="successor-already-spent"),
        pytest.param(SUCCESSOR, None, T0, GRACE, "reuse", id="not-current-never-spent"),
        pytest.param(SUCCESSOR, T0, T0, 0.0, "repeat", id="no-grace-same-instant"),
        pytest.param(SUCCESSOR, T0, T0 + 0.001, 0.0, "reuse", id="no-grace-later"),
        pytest.param(SUCCESSOR, T0 + 10, T0, GRACE, "repeat", id="clock-stepped-back"),
    ],
)
def test_refresh_verdict(
    current: str, spent_at: float | None, now: float, grace: float, verdict: RefreshVerdict
) -> None:
    assert (
        classify_refresh(
            current_hash=current,
            token_hash=TOKEN,
            successor_hash=SUCCESSOR,
            spent_at=spent_at,
            now=now,
            grace=grace,
        )
        == verdict
    )


def test_the_current_token_is_spent_whatever_its_history() -> None:
    # Only the session's current token decides "spend"; spent_at is then irrelevant.
    assert (
        classify_refresh(
            current_hash=TOKEN,
            token_hash=TOKEN,
            successor_hash=SUCCESSOR,
            spent_at=T0 - 3600,
            now=T0,
            grace=GRACE,
        )
        == "spend"
    )
