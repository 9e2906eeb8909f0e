"""The memory-hard KDF that turns the key passphrase into a key-encryption key (argon2id).

Why argon2id rather than scrypt: it is RFC 9106's first recommendation and
OWASP's, its cost has three independent knobs (passes, memory, lanes) where
scrypt ties memory and time together through one power of two, and the
project already depends on argon2-cffi (for password hashes) and speaks its
vocabulary in the ``--argon2-*`` flags. The data-independent first pass of the
``id`` variant also keeps a co-located attacker from learning the passphrase
through cache timing, which scrypt does not (RFC 9106 §1).

The parameters travel with every row they protect (:mod:`auth_server._envelope`),
so raising them later needs no flag day: old rows open with their own
parameters and move to the new ones at the next ``ssot-auth keys rewrap``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw

__all__ = ["KDF_NAME", "KdfParameters", "derive_key"]

KDF_NAME = "argon2id"
# Bounds on parameters read back from a row: whoever can write the database
# must not be able to make a replica allocate without limit when it starts.
_MAX_TIME_COST = 64
_MAX_MEMORY_KIB = 4 * 1024 * 1024  # 4 GiB
_MAX_PARALLELISM = 64
_KEY_BYTES = 32
_MIN_SALT_BYTES = 16


@dataclass(frozen=True, kw_only=True)
class KdfParameters:
    """The cost of deriving a key-encryption key from the passphrase (argon2id, RFC 9106).

    The defaults are RFC 9106 §4's second recommended option (3 passes over
    64 MiB, 4 lanes): about 0.2 s on one core, paid once per process start
    and per ``keys rewrap``, never per request.

    Attributes:
        time_cost: Passes over the memory (1 to 64).
        memory_cost: Memory in KiB (at least 8 x ``parallelism``, at most 4 GiB).
        parallelism: Lanes (1 to 64).
    """

    time_cost: int = 3
    memory_cost: int = 65536
    parallelism: int = 4

    def __post_init__(self) -> None:
        for name, value, high in (
            ("time_cost", self.time_cost, _MAX_TIME_COST),
            ("memory_cost", self.memory_cost, _MAX_MEMORY_KIB),
            ("parallelism", self.parallelism, _MAX_PARALLELISM),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ValueError(f"key KDF {name} must be an integer from 1 to {high}")
        if self.memory_cost < 8 * self.parallelism:
            raise ValueError("key KDF memory_cost must be at least 8 KiB per lane")

    def as_dict(self) -> dict[str, object]:
        """The parameters as stored in a row (``name`` says which KDF)."""
        return {
            "name": KDF_NAME,
            "t": self.time_cost,
            "m": self.memory_cost,
            "p": self.parallelism,
        }

    @classmethod
    def from_dict(cls, stored: Mapping[str, object]) -> KdfParameters:
        """Parameters read back from a row.

        Raises:
            ValueError: Another KDF, or parameters out of bounds.
        """
        if stored.get("name") != KDF_NAME:
            raise ValueError("unknown key KDF")
        values = {name: stored.get(short) for short, name in _SHORT.items()}
        return cls(**values)  # type: ignore[arg-type]


_SHORT = {"t": "time_cost", "m": "memory_cost", "p": "parallelism"}


def derive_key(passphrase: bytes, salt: bytes, parameters: KdfParameters) -> bytes:
    """Derive a 256-bit key from ``passphrase`` (slow on purpose: see :class:`KdfParameters`).

    Raises:
        ValueError: Empty passphrase or a salt shorter than 16 bytes.
    """
    if not passphrase:
        raise ValueError("the passphrase must not be empty")
    if len(salt) < _MIN_SALT_BYTES:
        raise ValueError("the KDF salt must be at least 16 bytes")
    return hash_secret_raw(
        secret=passphrase,
        salt=salt,
        time_cost=parameters.time_cost,
        memory_cost=parameters.memory_cost,
        parallelism=parameters.parallelism,
        hash_len=_KEY_BYTES,
        type=Type.ID,
    )
