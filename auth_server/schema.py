"""The database tables (SQLAlchemy Core), in one ``metadata`` that ``Database`` creates.

Comments on a table say why it exists and who shares it; the engine, transactions
and locking are :mod:`auth_server.storage`'s job (which re-exports these names).
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "client_assertions",
    "clients",
    "deployment_secrets",
    "identity_providers",
    "login_throttle",
    "metadata",
    "revocation_counter",
    "revocation_watermarks",
    "sessions",
    "signing_keys",
    "spent_refresh_tokens",
    "user_identities",
    "users",
]

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("username", sa.String(256), nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False, default=""),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# A first federated sign-in picks a username no local user holds in any case
# (auth_server.identities): without this, that lookup scans every user.
sa.Index("ix_users_username_lower", sa.func.lower(users.c.username))

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("private_key", sa.LargeBinary, nullable=False),
    sa.Column("public_jwk", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("activates_at", sa.Float, nullable=False),
    sa.Column("deactivated_at", sa.Float, nullable=True),
    sa.Column("retires_at", sa.Float, nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

# One row per login session. ``refresh_token_hash`` is the SHA-256 of the one
# refresh token that can be spent now; spent ones move to spent_refresh_tokens.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # absolute end of the session
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("refresh_token_hash", sa.String(64), nullable=True, unique=True),
    # Columns added with refresh and revocation (nullable, so older databases
    # gain them in place; see Database.create_schema).
    sa.Column("last_used_at", sa.Float, nullable=True),  # login or last refresh: idle expiry
    sa.Column("access_expires_at", sa.Float, nullable=True),  # exp of its last access token
    sa.Column("scope", sa.Text, nullable=True),  # the scopes granted at login
    sa.Column("revoke_reason", sa.String(32), nullable=True),
    # x5t#S256 of the client certificate of a login over mutual TLS (RFC 8705): the
    # session's refresh tokens then work only with that certificate.
    sa.Column("cert_thumbprint", sa.String(64), nullable=True),
    # The aud its access tokens carry (RFC 8707); NULL means the server's default.
    sa.Column("audience", sa.Text, nullable=True),
    # The revocation sequence number of the transaction that revoked it
    # (revocation_counter): the publisher's cursor reads only rows past it.
    sa.Column("revoked_seq", sa.BigInteger, nullable=True),
    # Ended together with a watermark entry ("every token of this subject issued
    # before T", revocation_watermarks): not listed one by one.
    sa.Column("watermarked", sa.Boolean, nullable=True),
    # The upstream identity provider the session was signed in with (federation);
    # NULL for a password login. Disabling the provider ends its sessions.
    sa.Column("idp", sa.String(64), nullable=True, index=True),
)
# The revocation list that verifiers follow: revoked sessions whose access
# tokens may still be unexpired. Polled several times a second, so indexed.
sa.Index(
    "ix_sessions_revoked_access_expires_at",
    sessions.c.access_expires_at,
    sqlite_where=sessions.c.revoked_at.isnot(None),
    postgresql_where=sessions.c.revoked_at.isnot(None),
)

# What the publisher's poll reads: revocations past its cursor.
sa.Index("ix_sessions_revoked_seq", sessions.c.revoked_seq)
# Revoked rows nobody has stamped with a sequence number yet (written by an older
# version, or inserted by hand); empty in steady state, so probing it is free.
sa.Index(
    "ix_sessions_unstamped",
    sessions.c.revoked_at,
    sqlite_where=sa.and_(
        sessions.c.revoked_at.isnot(None),
        sessions.c.revoked_seq.is_(None),
        sessions.c.watermarked.is_(None),
    ),
    postgresql_where=sa.and_(
        sessions.c.revoked_at.isnot(None),
        sessions.c.revoked_seq.is_(None),
        sessions.c.watermarked.is_(None),
    ),
)

# One row, one number: bumped by every transaction that revokes something, and
# stamped on what it revoked. The UPDATE holds the row's lock until commit, so
# revoking transactions commit in sequence order (see auth_server._revocationrows).
revocation_counter = sa.Table(
    "revocation_counter",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)

# "Refuse every access token of this subject issued before issued_before"; the
# empty subject means every subject (``sessions revoke --all``).
revocation_watermarks = sa.Table(
    "revocation_watermarks",
    metadata,
    sa.Column("subject", sa.String(256), primary_key=True),
    sa.Column("issued_before", sa.BigInteger, nullable=False),  # epoch seconds
    sa.Column("expires_at", sa.Float, nullable=False),  # no token it refuses outlives this
    sa.Column("seq", sa.BigInteger, nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Every refresh token a session has spent (RFC 9700 §4.14: presenting one
# again outside the grace window revokes the session).
spent_refresh_tokens = sa.Table(
    "spent_refresh_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column(
        "session_id",
        sa.String(36),
        sa.ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("spent_at", sa.Float, nullable=False),
)

# Login throttling counters, shared by every replica. ``key`` is a hash of the
# layer and its subject (user, address or both), so names and addresses are
# not stored in the clear.
login_throttle = sa.Table(
    "login_throttle",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("last_failure_at", sa.Float, nullable=True),
    sa.Column("succeeded_at", sa.Float, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),
)

# Secrets every replica must share, sealed under the key passphrase like the
# private keys (auth_server._envelope): today the refresh-token successor secret.
deployment_secrets = sa.Table(
    "deployment_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


# Service identities (OAuth clients, auth_server/clients.py). Exactly one way to
# authenticate: public keys (``jwks`` or ``jwks_uri``), a TLS subject, or a secret
# stored only as a SHA-256 hash (it is 256 random bits, so no slow hash is needed).
clients = sa.Table(
    "clients",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("auth_method", sa.String(32), nullable=False),
    sa.Column("scopes", sa.Text, nullable=False, default=""),
    sa.Column("audiences", sa.Text, nullable=False, default=""),
    sa.Column("jwks", sa.Text, nullable=True),
    sa.Column("jwks_uri", sa.Text, nullable=True),
    sa.Column("tls_subject", sa.Text, nullable=True),
    sa.Column("secret_hash", sa.String(64), nullable=True),
    sa.Column("old_secret_hash", sa.String(64), nullable=True),
    sa.Column("old_secret_expires_at", sa.Float, nullable=True),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("last_used_at", sa.Float, nullable=True),
    # Token exchange (RFC 8693) policy: the audiences the client may exchange a
    # user's token *to*, each optionally capped to scopes ("aud" or "aud=s1,s2",
    # space-separated); and whether a client-credentials token may be a subject.
    sa.Column("exchange_audiences", sa.Text, nullable=True),
    sa.Column("exchange_services", sa.Boolean, nullable=True),
)

# Client assertion ids already used (RFC 7523 §3 item 7), until their ``exp``:
# shared by every replica, so an assertion is good for one token, anywhere.
client_assertions = sa.Table(
    "client_assertions",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),  # SHA-256 of client id and jti
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


# Upstream OpenID Providers people sign in with (auth_server/idps.py). The client
# credential at the provider (a secret or a private key) must be usable again for
# the device flow, so it is sealed under the key passphrase like the private keys
# (auth_server._envelope), with the provider's name as associated data.
identity_providers = sa.Table(
    "identity_providers",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("issuer", sa.String(2048), nullable=False, unique=True),
    sa.Column("client_id", sa.Text, nullable=False),
    # none | client_secret | private_key_jwt
    sa.Column("auth_method", sa.String(32), nullable=False),
    sa.Column("sealed_credential", sa.LargeBinary, nullable=True),
    sa.Column("scope", sa.Text, nullable=False),  # asked of the provider
    sa.Column("username_claim", sa.String(64), nullable=False),
    sa.Column("allowed_domains", sa.Text, nullable=False, default=""),
    sa.Column("default_scopes", sa.Text, nullable=False, default=""),  # ours, for new users
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Who a provider's subject is here: identities are linked by (provider, sub),
# never by e-mail, so the same address from a second provider is someone else
# until an operator links it (``ssot-auth users link``).
user_identities = sa.Table(
    "user_identities",
    metadata,
    sa.Column("idp", sa.String(64), primary_key=True),
    sa.Column("subject", sa.String(255), primary_key=True),
    sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("email", sa.Text, nullable=True),  # as last asserted; informational only
    sa.Column("created_at", sa.Float, nullable=False),
)
