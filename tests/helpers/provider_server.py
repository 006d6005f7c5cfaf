"""A local HTTP server that answers like Electricity Maps v3, WattTime v3 and the UK Carbon Intensity API.

Use the ``provider_server`` fixture (import it into a test module) or ``FakeProviderServer()``
as a context manager. Each provider's default answers use the real JSON shapes, built from
attributes a test may change (``em_value_g_per_kwh``, ``wt_value_lbs_per_mwh``, ``uk_actual`` …).
Faults are injected per path with ``queue(path, Reply(...), ...)``: queued replies are served
first, in order, then the default answer resumes. ``Reply`` can set a status, headers (e.g.
Retry-After), a raw body (malformed JSON), a delay (to trigger client timeouts) or a body computed
from the request (``echo_auth=True`` echoes the credentials back, to test redaction).
Every request is recorded in ``hits``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

import pytest

EM_TOKEN = "em-SEKRET-4f1c9a7e2b"
WT_USERNAME = "wt-user-SEKRET-77"
WT_PASSWORD = "wt-pass-SEKRET-8d3e"
NOW = datetime(2026, 10, 18, 2, 10, tzinfo=timezone.utc)


@dataclass
class Hit:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list → JSON; str/bytes → sent as is; None → the default answer's body
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    echo_auth: bool = False  # body echoes the request's credentials (a badly behaved server)


class FakeClock:
    """An injectable clock: returns ``now``; ``advance(seconds)`` moves it; ``sleep`` records and advances."""

    def __init__(self, start: datetime = NOW) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)


def _iso_z(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _floor(when: datetime, seconds: int) -> datetime:
    epoch = int(when.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=timezone.utc)


class FakeProviderServer:
    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.now = NOW  # the server's idea of the current time (for datetimes in replies)
        self.em_token = EM_TOKEN
        self.em_value_g_per_kwh: Any = 302
        self.em_estimated = False
        self.wt_username, self.wt_password = WT_USERNAME, WT_PASSWORD
        self.wt_value_lbs_per_mwh: Any = 1000.0
        self.wt_units = "lbs_co2_per_mwh"
        self.wt_tokens: set[str] = set()
        self.wt_logins = 0
        self.uk_actual: Any = 149
        self.uk_forecast: Any = 156
        self.uk_regional_forecast: Any = 88
        self._queued: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeProviderServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def queue(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._queued.setdefault(path, deque()).extend(replies)

    def count(self, path: str) -> int:
        return sum(1 for hit in self.hits if hit.path == path)

    def expire_watttime_tokens(self) -> None:
        self.wt_tokens.clear()

    # --- request handling ---------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                parts = urlsplit(self.path)
                hit = Hit("GET", parts.path, dict(parse_qsl(parts.query)), {k.lower(): v for k, v in self.headers.items()})
                with server._lock:
                    server.hits.append(hit)
                    queued = server._queued.get(parts.path)
                    reply = queued.popleft() if queued else None
                status, body, headers = server._default(hit)
                if reply is not None:
                    status = reply.status
                    headers = {**headers, **reply.headers}
                    if reply.echo_auth:
                        credentials = {k: v for k, v in hit.headers.items() if k in ("auth-token", "authorization")}
                        body = {"error": "internal", "credentials": credentials, "request_headers": hit.headers}
                    elif reply.body is not None:
                        body = reply.body
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                raw = body if isinstance(body, bytes) else (
                    body.encode() if isinstance(body, str) else json.dumps(body).encode()
                )
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def _default(self, hit: Hit) -> tuple[int, Any, dict[str, str]]:
        path = hit.path
        routes: list[tuple[Callable[[str], bool], Callable[[Hit], tuple[int, Any]]]] = [
            (lambda p: p == "/v3/carbon-intensity/latest", self._em_latest),
            (lambda p: p == "/v3/carbon-intensity/forecast", self._em_forecast),
            (lambda p: p == "/login", self._wt_login),
            (lambda p: p in ("/v3/forecast", "/v3/historical", "/v3/signal-index"), self._wt_data),
            (lambda p: p == "/intensity", self._uk_national),
            (lambda p: p.startswith("/intensity/") and p.endswith(("/fw24h", "/fw48h")), self._uk_national_forecast),
            (lambda p: p.startswith("/regional/intensity/"), self._uk_regional_forecast),
            (lambda p: p.startswith("/regional/"), self._uk_regional),
        ]
        for matches, handler in routes:
            if matches(path):
                status, body = handler(hit)
                return status, body, {}
        return 404, {"error": f"no route {path}"}, {}

    # Electricity Maps v3
    def _em_auth_ok(self, hit: Hit) -> bool:
        return hit.headers.get("auth-token") == self.em_token

    def _em_latest(self, hit: Hit) -> tuple[int, Any]:
        if not self._em_auth_ok(hit):
            return 401, {"error": "Invalid authentication token"}
        hour = _floor(self.now, 3600)
        return 200, {
            "zone": hit.query.get("zone", "DE"),
            "carbonIntensity": self.em_value_g_per_kwh,
            "datetime": _iso_z(hour),
            "updatedAt": _iso_z(self.now),
            "createdAt": _iso_z(hour - timedelta(days=3)),
            "emissionFactorType": hit.query.get("emissionFactorType", "lifecycle"),
            "isEstimated": self.em_estimated,
            "estimationMethod": "TIME_SLICER_AVERAGE" if self.em_estimated else None,
        }

    def _em_forecast(self, hit: Hit) -> tuple[int, Any]:
        if not self._em_auth_ok(hit):
            return 401, {"error": "Invalid authentication token"}
        hour = _floor(self.now, 3600)
        hours = int(hit.query.get("horizonHours", "24"))  # the API's default horizon is 24 h
        return 200, {
            "zone": hit.query.get("zone", "DE"),
            "forecast": [
                {"carbonIntensity": 250 + 5 * i, "datetime": _iso_z(hour + timedelta(hours=i + 1))} for i in range(hours)
            ],
            "updatedAt": _iso_z(self.now),
        }

    # WattTime v3
    def _wt_login(self, hit: Hit) -> tuple[int, Any]:
        expected = base64.b64encode(f"{self.wt_username}:{self.wt_password}".encode()).decode()
        if hit.headers.get("authorization") != f"Basic {expected}":
            return 403, {"error": "invalid credentials"}
        self.wt_logins += 1
        token = f"wt-token-SEKRET-{self.wt_logins:04d}"
        self.wt_tokens.add(token)
        return 200, {"token": token}

    def _wt_data(self, hit: Hit) -> tuple[int, Any]:
        auth = hit.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer "):] not in self.wt_tokens:
            return 401, {"error": "token expired or invalid"}
        region = hit.query.get("region", "CAISO_NORTH")
        signal_type = hit.query.get("signal_type", "co2_moer")
        start = _floor(self.now, 300)
        if hit.path == "/v3/signal-index":
            data = [{"point_time": start.isoformat(), "value": 42.0}]
            units = "percentile"
        else:
            count = 12 * int(hit.query.get("horizon_hours", "24")) if hit.path == "/v3/forecast" else 12
            step = 1 if hit.path == "/v3/forecast" else -1
            value = self.wt_value_lbs_per_mwh
            data = [
                {"point_time": (start + timedelta(minutes=5 * i * step)).isoformat(),
                 "value": value if i == 0 else (value + i if isinstance(value, (int, float)) else value)}
                for i in range(count)
            ]
            units = self.wt_units
        meta = {"region": region, "signal_type": signal_type, "units": units, "model": {"date": "2026-03-01"}}
        if hit.path == "/v3/forecast":
            meta["generated_at"] = start.isoformat()
            meta["generated_at_period_seconds"] = 300
            meta["data_point_period_seconds"] = 300
        return 200, {"data": data, "meta": meta}

    # UK Carbon Intensity API
    def _uk_slot(self, start: datetime, forecast: Any, actual: Any, *, regional: bool = False) -> dict:
        intensity = {"forecast": forecast, "index": "moderate"}
        if not regional:
            intensity["actual"] = actual
        slot = {"from": start.strftime("%Y-%m-%dT%H:%MZ"), "to": (start + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%MZ"),
                "intensity": intensity}
        if regional:
            slot["generationmix"] = [{"fuel": "gas", "perc": 30.1}, {"fuel": "wind", "perc": 40.2}]
        return slot

    def _uk_national(self, hit: Hit) -> tuple[int, Any]:
        return 200, {"data": [self._uk_slot(_floor(self.now, 1800), self.uk_forecast, self.uk_actual)]}

    @staticmethod
    def _uk_half_hours(hit: Hit) -> int:
        """48 half-hours for a fw24h window, 96 for fw48h."""
        return 96 if "/fw48h" in hit.path else 48

    def _uk_national_forecast(self, hit: Hit) -> tuple[int, Any]:
        start = _floor(self.now, 1800)
        return 200, {"data": [self._uk_slot(start + timedelta(minutes=30 * i), 150 + i, None)
                              for i in range(self._uk_half_hours(hit))]}

    def _uk_region_header(self, hit: Hit) -> dict:
        tail = hit.path.rstrip("/").split("/")
        if "postcode" in tail:
            return {"regionid": 12, "dnoregion": "SSE South", "shortname": "South England", "postcode": tail[-1]}
        return {"regionid": int(tail[-1]), "dnoregion": "UKPN London", "shortname": "London"}

    def _uk_regional(self, hit: Hit) -> tuple[int, Any]:
        slot = self._uk_slot(_floor(self.now, 1800), self.uk_regional_forecast, None, regional=True)
        return 200, {"data": [{**self._uk_region_header(hit), "data": [slot]}]}

    def _uk_regional_forecast(self, hit: Hit) -> tuple[int, Any]:
        start = _floor(self.now, 1800)
        slots = [self._uk_slot(start + timedelta(minutes=30 * i), 80 + i, None, regional=True)
                 for i in range(self._uk_half_hours(hit))]
        return 200, {"data": {**self._uk_region_header(hit), "data": slots}}


@pytest.fixture
def provider_server():
    with FakeProviderServer() as server:
        yield server


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


def provider_env(server: FakeProviderServer, **extra: str) -> dict[str, str]:
    """An environment pointing every network provider at ``server`` with the fake credentials."""
    return {
        "CARBONSCHED_ELECTRICITYMAPS_URL": server.url,
        "CARBONSCHED_WATTTIME_URL": server.url,
        "CARBONSCHED_UKGRID_URL": server.url,
        "ELECTRICITYMAPS_TOKEN": EM_TOKEN,
        "WATTTIME_USERNAME": WT_USERNAME,
        "WATTTIME_PASSWORD": WT_PASSWORD,
        **extra,
    }
