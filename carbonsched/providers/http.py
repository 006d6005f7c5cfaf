"""One HTTP client for all network providers: timeouts, retries, Retry-After, JSON, no leaked secrets.

Policy, in one place:
- every request has a (connect, read) timeout, by default (3 s, 10 s);
- connection errors, timeouts and HTTP 5xx are retried with exponential backoff and full jitter,
  at most ``max_tries`` attempts in total (default 3);
- HTTP 429 is not retried: it raises ProviderError with ``retry_after_s`` taken from the
  Retry-After header (delta-seconds or an HTTP date), and until that moment no request is sent;
- a body that is not JSON raises ProviderError;
- every message (exceptions, ``last_error``, logs) passes through :func:`redact` with the
  credentials this client knows, so a token echoed by a server never reaches a log.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from carbonsched.providers.base import Clock, default_clock
from carbonsched.providers.secrets import redact
from carbonsched.times import iso_utc
from carbonsched.types import ProviderError

log = logging.getLogger("carbonsched.providers")

DEFAULT_CONNECT_TIMEOUT_S = 3.0
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_MAX_TRIES = 3
DEFAULT_BACKOFF_BASE_S = 0.5
DEFAULT_RETRY_AFTER_S = 60.0  # when a 429 comes without a usable Retry-After header
_BODY_SNIPPET_CHARS = 200


class HttpStatusError(ProviderError):
    """The server answered with an HTTP error status that is not worth retrying (4xx)."""

    def __init__(self, provider: str, message: str, status: int, *, retry_after_s: float | None = None):
        super().__init__(provider, message, retry_after_s=retry_after_s)
        self.status = status


def parse_retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds to wait according to a Retry-After header value, or None if absent/unparseable."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


class HttpClient:
    """GETs JSON from one provider's API root under the policy in the module docstring."""

    def __init__(
        self,
        provider: str,
        base_url: str,
        *,
        clock: Clock = default_clock,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        session: requests.Session | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        max_tries: int = DEFAULT_MAX_TRIES,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
    ) -> None:
        self.provider = provider
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.session = session or requests.Session()
        self.timeout_s = (connect_timeout_s, read_timeout_s)
        self.max_tries = max(1, max_tries)
        self.backoff_base_s = backoff_base_s
        self.calls = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.not_before: datetime | None = None
        self._secrets: list[str] = []

    def add_secret(self, secret: str | None) -> None:
        """Register a value (token, password) that must never appear in messages."""
        if secret and secret not in self._secrets:
            self._secrets.append(secret)

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def get_json(
        self,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> Any:
        """GET ``base_url + path`` and return the decoded JSON body; raise ProviderError otherwise."""
        now = self.clock()
        if self.not_before is not None and now < self.not_before:
            wait_s = (self.not_before - now).total_seconds()
            raise ProviderError(
                self.provider, f"rate limited; not calling again for {wait_s:.0f} s", retry_after_s=wait_s
            )
        url = self.base_url + path
        for attempt in range(1, self.max_tries + 1):
            retryable: str | None = None
            try:
                self.calls += 1
                response = self.session.get(
                    url, params=params, headers=dict(headers or {}), auth=auth, timeout=self.timeout_s
                )
            except requests.Timeout:
                retryable = f"timeout calling {path}"
            except requests.ConnectionError as exc:
                retryable = f"connection error calling {path}: {type(exc).__name__}"
            except requests.RequestException as exc:
                self._fail(f"request to {path} failed: {exc}")
            else:
                if response.status_code >= 500:
                    retryable = f"HTTP {response.status_code} from {path}"
                elif response.status_code == 429:
                    self._rate_limited(path, response)
                elif response.status_code >= 400:
                    self._fail(
                        f"HTTP {response.status_code} from {path}: {self._snippet(response.text)}",
                        status=response.status_code,
                    )
                else:
                    return self._decode(path, response)
            if attempt < self.max_tries:
                delay_s = self.rng.uniform(0, self.backoff_base_s * 2 ** (attempt - 1))
                log.warning("%s: %s; retry %d/%d in %.2f s", self.provider, self.redact(retryable),
                            attempt, self.max_tries - 1, delay_s)
                self.sleep(delay_s)
        self._fail(f"{retryable} (gave up after {self.max_tries} tries)")

    def _decode(self, path: str, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            self._fail(f"malformed JSON from {path}: {self._snippet(response.text)}")

    def _rate_limited(self, path: str, response: requests.Response) -> None:
        now = self.clock()
        retry_after_s = parse_retry_after_s(response.headers.get("Retry-After"), now)
        if retry_after_s is None:
            retry_after_s = DEFAULT_RETRY_AFTER_S
        self.not_before = now + timedelta(seconds=retry_after_s)
        self._fail(f"HTTP 429 (rate limited) from {path}; retry after {retry_after_s:.0f} s",
                   status=429, retry_after_s=retry_after_s)

    def _fail(self, message: str, *, status: int | None = None, retry_after_s: float | None = None):
        message = self.redact(message)
        self.last_error = message
        self.last_error_at = self.clock()
        if status is None:
            raise ProviderError(self.provider, message, retry_after_s=retry_after_s)
        raise HttpStatusError(self.provider, message, status, retry_after_s=retry_after_s)

    def _snippet(self, body: str) -> str:
        """The start of a response body for an error message, redacted before it is cut short."""
        text = self.redact(" ".join(body.split()))
        return text[:_BODY_SNIPPET_CHARS] + ("…" if len(text) > _BODY_SNIPPET_CHARS else "")

    def describe(self) -> dict:
        return {
            "base_url": self.base_url,
            "calls": self.calls,
            "last_http_error": self.last_error,
            "rate_limited_until": iso_utc(self.not_before),
        }


