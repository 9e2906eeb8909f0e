"""The signing key lifecycle policy: when keys are pre-published, start signing and retire.

A key's life, with the times stored in its row:

* *next* from ``created_at``: published, does not sign yet;
* *current* from ``activates_at`` (= created + ``activate_after``): signs new tokens;
* *previous* from ``deactivated_at`` (= activation + ``rotation_interval``): published,
  signs nothing;
* *retired* from ``retires_at`` (= deactivation + ``retire_after``): gone from the
  set, private key destroyed.

The rules that keep a rotation invisible to verifiers (DESIGN.md "Defaults"):

* a new key is published ``activate_after >= 2 x jwks_max_age`` before it signs:
  a verifier (or a shared HTTP cache in front of it) that fetched the set just
  before the key appeared has refetched by then, so it never meets an unknown ``kid``;
* an old key stays published ``retire_after >= access_token_ttl + leeway`` after its
  last signature, so no token outlives the key that verifies it.

This module is pure: it computes decisions from stored rows (:class:`KeyRecord`,
read by :mod:`auth_server._keyrows`) and a time, and the store
(:mod:`auth_server.keys`) applies them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DAY = 86400.0
DEFAULT_ROTATION_INTERVAL = 30 * DAY
# The verifiers' default clock leeway (interceptors.TokenPolicy.leeway).
CLOCK_LEEWAY = 30.0
# Keep the published set small: verifiers cap a JWKS (ours at 100 keys).
MAX_PUBLISHED_KEYS = 20


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyRecord:
    """A signing key's row as stored, without key material: what lifecycle decisions read.

    Attributes:
        kid: The key id (RFC 7638 thumbprint of the public key).
        algorithm: The JWS algorithm.
        created_at: When the key was made (and published), epoch seconds.
        activates_at: When it may start signing.
        deactivated_at: When a newer key takes (or took) over, if decided.
        retires_at: When it leaves the published set, if decided.
        revoked_at: When it was revoked, if it was.
        has_private_key: Whether its private key is still stored (not yet destroyed).
    """

    kid: str
    algorithm: str
    created_at: float
    activates_at: float
    deactivated_at: float | None
    retires_at: float | None
    revoked_at: float | None
    has_private_key: bool


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}


def parse_duration(text: str) -> float:
    """Seconds from ``"600"``, ``"90s"``, ``"15m"``, ``"12h"`` or ``"30d"``.

    Raises:
        ValueError: Not a finite, non-negative duration.
    """
    text = text.strip().lower()
    unit = _UNITS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (e.g. 600, 90s, 15m, 12h, 30d)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 600, 90s, 15m, 12h, 30d)")
    return value


class LifecycleError(ValueError):
    """A lifecycle setting is unsafe; the message names the setting to change."""


@dataclass(frozen=True, kw_only=True)
class KeyLifecycle:
    """How long signing keys are pre-published, used and kept.

    Attributes:
        rotation_interval: Seconds a key signs before the next one takes over;
            ``0`` turns scheduled rotation off (``keys rotate`` still works).
        activate_after: Seconds a new key is published before it signs.
        retire_after: Seconds a replaced key stays published after its last
            signature; then it leaves the key set and its private key is destroyed.
    """

    rotation_interval: float = DEFAULT_ROTATION_INTERVAL
    activate_after: float = 600.0
    retire_after: float = 930.0

    def __post_init__(self) -> None:
        for name in ("rotation_interval", "activate_after", "retire_after"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise LifecycleError(f"{_FLAGS[name]} must be a finite number of seconds >= 0")

    @classmethod
    def for_server(
        cls,
        *,
        jwks_max_age: float,
        access_token_ttl: float,
        rotation_interval: float = DEFAULT_ROTATION_INTERVAL,
        activate_after: float | None = None,
        retire_after: float | None = None,
    ) -> KeyLifecycle:
        """The policy for a server's settings, with the safe defaults filled in.

        ``activate_after`` defaults to ``2 x jwks_max_age`` and ``retire_after``
        to ``access_token_ttl + CLOCK_LEEWAY``.
        """
        return cls(
            rotation_interval=rotation_interval,
            activate_after=2 * jwks_max_age if activate_after is None else activate_after,
            retire_after=(
                access_token_ttl + CLOCK_LEEWAY if retire_after is None else retire_after
            ),
        )

    def check(self, *, jwks_max_age: float, access_token_ttl: float) -> None:
        """Refuse a policy that would let a verifier meet an unknown kid or a token outlive its key.

        Raises:
            LifecycleError: The message names the setting to change.
        """
        prepublish = 2 * jwks_max_age
        if self.activate_after < prepublish:
            raise LifecycleError(
                f"--key-activate-after is {self.activate_after:g} s but must be at least"
                f" 2 x --jwks-max-age = {prepublish:g} s, or a verifier that cached the key set"
                " could meet a key it does not know yet: raise --key-activate-after"
                " or lower --jwks-max-age"
            )
        needed = access_token_ttl + CLOCK_LEEWAY
        if self.retire_after < needed:
            raise LifecycleError(
                f"--key-retire-after is {self.retire_after:g} s but must be at least"
                f" --access-token-ttl + {CLOCK_LEEWAY:g} s leeway = {needed:g} s, or tokens"
                " would outlive the key that verifies them: raise --key-retire-after"
                " or lower --access-token-ttl"
            )
        if self.rotation_interval:
            if self.rotation_interval < self.activate_after:
                raise LifecycleError(
                    f"--key-rotation-interval is {self.rotation_interval:g} s, shorter than"
                    f" --key-activate-after ({self.activate_after:g} s): raise"
                    " --key-rotation-interval (or set it to 0 to rotate only by hand)"
                )
            published = math.ceil(self.retire_after / self.rotation_interval) + 2
            if published > MAX_PUBLISHED_KEYS:
                raise LifecycleError(
                    f"--key-rotation-interval {self.rotation_interval:g} s with"
                    f" --key-retire-after {self.retire_after:g} s would publish up to"
                    f" {published} keys at once (the limit is {MAX_PUBLISHED_KEYS}):"
                    " raise --key-rotation-interval"
                )


_FLAGS = {
    "rotation_interval": "--key-rotation-interval",
    "activate_after": "--key-activate-after",
    "retire_after": "--key-retire-after",
}


# --- decisions over stored rows (columns of auth_server.storage.signing_keys) -----------


def is_live(record: KeyRecord, now: float) -> bool:
    """Not revoked and not yet retired: the key is published."""
    return record.revoked_at is None and (record.retires_at is None or record.retires_at > now)


def activation_order(record: KeyRecord) -> tuple[float, float, str]:
    return (record.activates_at, record.created_at, record.kid)


def pick_current(records: Iterable[KeyRecord], at: float) -> KeyRecord | None:
    """The key that signs at ``at`` among the live keys of ``records``.

    The newest activated key wins, but one whose ``deactivated_at`` has passed
    yields to any that has not: a rotation at the same clock tick as the key it
    replaces must still take over.
    """
    candidates: Sequence[KeyRecord] = [
        r for r in records if r.activates_at <= at and is_live(r, at)
    ]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda r: (
            r.deactivated_at is None or r.deactivated_at > at,
            *activation_order(r),
        ),
    )


def newest(records: Iterable[KeyRecord], now: float) -> KeyRecord | None:
    """The live key that activates last: the one the schedule rotates away from."""
    live = [r for r in records if is_live(r, now)]
    return max(live, key=activation_order) if live else None


def rotation_due(
    records: Sequence[KeyRecord], now: float, policy: KeyLifecycle, algorithm: str
) -> float | None:
    """When the next key must activate, if it is time to create it now; else ``None``.

    A key is due when nothing signs now (at once), when the newest key uses
    another algorithm than the configured one (``--algorithm`` changed:
    migrate through next/current/previous), or when the newest key's interval
    ends within ``activate_after``.
    """
    if pick_current(records, now) is None:
        return now
    last = newest(records, now)
    assert last is not None  # a current key is live
    if last.algorithm != algorithm:
        return now + policy.activate_after
    if not policy.rotation_interval:
        return None
    activates_at = last.activates_at + policy.rotation_interval
    if now < activates_at - policy.activate_after:
        return None
    return max(activates_at, now + policy.activate_after)


def rotation_reason(records: Sequence[KeyRecord], now: float, algorithm: str) -> str:
    """Why :func:`rotation_due` asks for a key: for the log and the audit trail."""
    if pick_current(records, now) is None:
        return "no-current-key"
    last = newest(records, now)
    if last is not None and last.algorithm != algorithm:
        return "algorithm"
    return "scheduled"


def retirement_for(record: KeyRecord, policy: KeyLifecycle) -> float | None:
    """The ``retires_at`` a replaced key needs under ``policy`` (``None``: still current)."""
    deactivated_at = record.deactivated_at
    return None if deactivated_at is None else deactivated_at + policy.retire_after


def needs_retirement(record: KeyRecord, now: float, policy: KeyLifecycle) -> float | None:
    """A longer ``retires_at`` this live key needs, or ``None`` if its stored one will do.

    Retirement is only ever pushed later, never earlier: replicas with a
    longer token lifetime then keep the key published for their tokens.
    """
    wanted = retirement_for(record, policy)
    if wanted is None or not is_live(record, now):
        return None
    stored = record.retires_at
    return wanted if stored is None or stored < wanted else None


def next_change_at(records: Iterable[KeyRecord], now: float, policy: KeyLifecycle) -> float | None:
    """The next scheduled time the published set changes (a key joins or leaves).

    Joining: the scheduled pre-publication of the next key. Leaving: a key's
    ``retires_at``. Activation is not a change of the set, only of which key signs.
    """
    live = [r for r in records if is_live(r, now)]
    times = [r.retires_at for r in live if r.retires_at is not None and r.retires_at > now]
    if policy.rotation_interval and live:
        last = max(live, key=activation_order)
        prepublish = last.activates_at + policy.rotation_interval - policy.activate_after
        if prepublish > now:
            times.append(prepublish)
    return min(times) if times else None


def state_of(record: KeyRecord, now: float, current_kid: str | None) -> str:
    """``next``, ``current``, ``previous``, ``retired`` or ``revoked``."""
    if record.revoked_at is not None:
        return "revoked"
    if record.retires_at is not None and record.retires_at <= now:
        return "retired"
    if record.activates_at > now:
        return "next"
    if record.kid == current_kid:
        return "current"
    return "previous"
