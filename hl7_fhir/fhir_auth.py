"""Authentication for the FHIR client: a fixed bearer token, or SMART backend services (client credentials).

Both are httpx auth flows, so every request (search pages, retries) carries a valid token.
``ClientCredentials`` asks the token endpoint only when its cached token is missing or
about to expire, and once more when the FHIR server answers 401 (the token was revoked).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import httpx

from hl7_fhir.errors import Hl7FhirError

EXPIRY_MARGIN_S = 30.0


class FhirAuthError(Hl7FhirError):
    """The token endpoint refused or answered something that is not an access token."""


class BearerToken(httpx.Auth):
    """A token configured by hand (``Authorization: Bearer <token>``)."""

    def __init__(self, token: str):
        if not token.strip():
            raise FhirAuthError("BearerToken.token must not be empty")
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


@dataclass
class _CachedToken:
    value: str
    expires_at: float


class ClientCredentials(httpx.Auth):
    """SMART backend services: OAuth2 client_credentials grant, secret sent in the body or Basic auth.

    ``method`` is 'client_secret_post' or 'client_secret_basic'. (The signed-JWT
    'private_key_jwt' assertion needs a JOSE library radfusion does not ship.)
    """

    requires_response_body = True

    def __init__(self, token_url: str, client_id: str, client_secret: str, *, scope: str = "system/*.read",
                 method: str = "client_secret_post", timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        if method not in ("client_secret_post", "client_secret_basic"):
            raise FhirAuthError(f"ClientCredentials.method must be client_secret_post or client_secret_basic, "
                                f"got {method!r}")
        for name, value in (("token_url", token_url), ("client_id", client_id), ("client_secret", client_secret)):
            if not value.strip():
                raise FhirAuthError(f"ClientCredentials.{name} must not be empty")
        self._token_url = token_url
        self._client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._method = method
        self._timeout = timeout_s
        self._clock = clock
        self._cached: _CachedToken | None = None
        self._lock = threading.Lock()

    def _token_request(self) -> httpx.Request:
        form = {"grant_type": "client_credentials", "scope": self._scope}
        headers = {"Accept": "application/json"}
        if self._method == "client_secret_post":
            form |= {"client_id": self._client_id, "client_secret": self._secret}
            return httpx.Request("POST", self._token_url, data=form, headers=headers)
        basic = httpx.BasicAuth(self._client_id, self._secret)
        request = httpx.Request("POST", self._token_url, data=form, headers=headers)
        return next(basic.auth_flow(request))

    def _accept(self, response: httpx.Response) -> _CachedToken:
        if response.status_code != 200:
            raise FhirAuthError(f"token endpoint {self._token_url} answered {response.status_code}: "
                                f"{response.text[:200]}")
        try:
            body = response.json()
            token, lifetime = str(body["access_token"]), float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError) as exc:
            raise FhirAuthError(f"token endpoint {self._token_url} answered without access_token: {exc}") from exc
        return _CachedToken(token, self._clock() + lifetime - EXPIRY_MARGIN_S)

    def _valid(self) -> str | None:
        cached = self._cached
        return cached.value if cached is not None and cached.expires_at > self._clock() else None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        for attempt in range(2):
            with self._lock:
                token = self._valid()
            if token is None:
                response = yield self._token_request()
                with self._lock:
                    self._cached = self._accept(response)
                    token = self._cached.value
            request.headers["Authorization"] = f"Bearer {token}"
            response = yield request
            if response.status_code != 401 or attempt == 1:
                return
            with self._lock:
                self._cached = None
