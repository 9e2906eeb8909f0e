"""A real OpenID Provider (panva's oidc-provider, ``tests/oidc_provider``) and a person's browser.

:func:`running_provider` starts ``node tests/oidc_provider/provider.mjs`` on a
loopback port and yields its issuer; it skips, saying why, where Node or the
installed package is missing (``npm ci`` in ``tests/oidc_provider``; ``.ci/run``
does it). :class:`Browser` plays the person's part of the device flow over plain
HTTP: enter the user code, confirm, sign in, consent.
"""

from __future__ import annotations

import contextlib
import html.parser
import http.cookiejar
import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auth_server.jwk import public_jwk

PROVIDER_DIR = Path(__file__).parent / "oidc_provider"
PUBLIC_CLIENT = "ssot-cli"
SECRET_CLIENT = "ssot-cli-secret"
KEY_CLIENT = "ssot-cli-key"
CLIENT_SECRET = "op-test-secret-" + "7" * 32  # throwaway, given to the provider by env
#: The private_key_jwt client's key (P-256); the provider gets its public JWK.
CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
CLIENT_KEY_PEM = CLIENT_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


def provider_missing() -> str | None:
    """Why the real provider cannot run here, or ``None``."""
    if shutil.which("node") is None:
        return "node is not installed (the oidc-provider tests need Node.js 18 or 20)"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        return "oidc-provider is not installed: run `npm ci` in tests/oidc_provider"
    return None


@contextlib.contextmanager
def running_provider() -> Iterator[str]:
    """Start the provider; yield its issuer URL; stop it."""
    reason = provider_missing()
    if reason is not None:
        pytest.skip(reason)
    node = shutil.which("node")
    assert node is not None
    process = subprocess.Popen(
        [node, "provider.mjs", "0"],
        cwd=PROVIDER_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={
            "PATH": "/usr/bin:/bin",
            "NODE_ENV": "test",
            "OP_CLIENT_SECRET": CLIENT_SECRET,
            "OP_CLIENT_JWK": json.dumps(dict(public_jwk(CLIENT_KEY.public_key(), "ES256"))),
        },
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"oidc-provider did not start (exit {process.wait(5)})")
        yield str(json.loads(line)["issuer"])
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


class _Forms(html.parser.HTMLParser):
    """The forms of a page: their action and the inputs that have a name."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((found.get("action", ""), {}))
        elif tag == "input" and self.forms and found.get("name"):
            self.forms[-1][1][found["name"]] = found.get("value", "")


class Browser:
    """A cookie-keeping HTTP client that follows redirects, as a person's browser would."""

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.url = ""

    def get(self, url: str) -> str:
        return self._open(urllib.request.Request(url))

    def submit(self, page: str, **fields: str) -> str:
        """Fill the page's only (or last) form with ``fields`` and submit it."""
        parser = _Forms()
        parser.feed(page)
        assert parser.forms, f"no form on {self.url}"
        action, inputs = parser.forms[-1]
        inputs.update(fields)
        target = urllib.parse.urljoin(self.url, action or self.url)
        data = urllib.parse.urlencode(inputs).encode()
        return self._open(urllib.request.Request(target, data=data, method="POST"))

    def _open(self, request: urllib.request.Request) -> str:
        with self._opener.open(request, timeout=10) as response:
            self.url = response.geturl()
            return str(response.read().decode())

    def approve_device(self, verification_uri: str, user_code: str, login: str) -> str:
        """Enter the code, confirm it, sign in as ``login``, consent; return the last page."""
        page = self.submit(self.get(verification_uri), user_code=user_code)  # the code
        page = self.submit(page)  # "Confirm Device": the form carries confirm=yes
        page = self.submit(page, login=login, password="any-password")  # devInteractions login
        if "prompt" in page and 'value="consent"' in page:
            page = self.submit(page)  # consent to openid email profile
        return page
