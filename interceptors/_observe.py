"""The optional hook through which metrics and traces see each token check.

A verifier or interceptor without an observer pays one ``is None`` test per call and
imports nothing; :mod:`interceptors.prometheus` and :mod:`interceptors.otel` are
observers a service opts into.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

# The result of a check that admitted the call (the others are AuthError.reason values).
OK = "ok"


@runtime_checkable
class VerifyObserver(Protocol):
    """Told of every token check an interceptor makes; must be fast and must not raise."""

    def verified(self, method: str, result: str, seconds: float) -> None:
        """One check of a call to ``method`` ended.

        Args:
            method: The full gRPC method name (a bounded set: the server's methods).
            result: ``"ok"``, or the refusal's audit reason (``"expired"``, ...).
            seconds: How long the check took, key fetch included.
        """
        ...


class Observers:
    """Several observers as one (metrics and traces together)."""

    __slots__ = ("_observers",)

    def __init__(self, *observers: VerifyObserver) -> None:
        self._observers = observers

    def verified(self, method: str, result: str, seconds: float) -> None:
        for observer in self._observers:
            observer.verified(method, result, seconds)
