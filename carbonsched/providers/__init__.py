"""Grid carbon-intensity providers for the carbonsched daemon (all values in gCO2e/kWh).

Usage::

    provider = build_provider("electricitymaps:DE,static:DEU", env=os.environ)
    reading = provider.current()   # IntensityReading, or ProviderError when nothing is usable
    provider.name                  # "chain(electricitymaps:DE,static:DEU)"
    provider.describe()            # dict for `status`; never contains secrets

Spec grammar
------------
A spec is one or more providers separated by commas; the later ones are fallbacks::

    spec     := provider ("," provider)*
    provider := kind [":" zone] ["?" key "=" value ("&" key "=" value)*]

Kinds:

``trace``, ``trace:/path/file.csv``
    Replays a CSV trace (default: the bundled synthetic week) from the moment the provider is
    built, looping at the end. ``?speedup=600`` plays 600 trace seconds per wall second
    (default 1). Column names of common exports are recognised; ``?time_column=`` and
    ``?intensity_column=`` name them otherwise. The forecast is the trace's next
    ``forecast_hours=`` (default 24) trace hours; ``forecast_noise=0.1&forecast_seed=7`` multiplies
    each forecast sample by ``1 + 0.1·N(0, 1)``, the same error for the same sample at every ask;
    ``noise_model=FILE.json`` instead applies the lead-time error model of
    :mod:`carbonsched.planning.noise_model` (``carbonsched forecast-error --write-model`` writes one).
    No network.
``static:FRA``
    CodeCarbon's bundled yearly average for an ISO 3166-1 alpha-3 country. No network.
    List codes: ``python -m carbonsched.providers.static``.
``electricitymaps:DE``, ``electricitymaps?lat=48.1&lon=11.6``
    Electricity Maps v3, average signal, hourly. Options ``emission_factor_type=lifecycle|direct``,
    ``disable_estimations=true``, ``forecast_hours=6|24|48|72`` (the forecast's ``horizonHours``). Token: ``ELECTRICITYMAPS_TOKEN`` or the systemd credential
    ``electricitymaps_token``.
``watttime:CAISO_NORTH``
    WattTime v3 MOER, marginal signal, 5-minute; ``forecast_hours=1..72`` (``horizon_hours``). Credentials: ``WATTTIME_USERNAME`` /
    ``WATTTIME_PASSWORD`` or the systemd credentials ``watttime_username`` / ``watttime_password``.
``ukgrid``, ``ukgrid:region=13``, ``ukgrid:postcode=RG10``
    UK Carbon Intensity API (Great Britain), average signal, half-hourly; national, by region
    id 1-17, or by outward postcode. Forecast ``forecast_hours=48`` (default, ``fw48h``) or ``24``.
    No key.

Options for every network provider: ``base_url=`` (API root; also ``CARBONSCHED_ELECTRICITYMAPS_URL``,
``CARBONSCHED_WATTTIME_URL``, ``CARBONSCHED_UKGRID_URL``), ``connect_timeout_s=`` (default 3),
``read_timeout_s=`` (default 10), ``max_tries=`` (default 3), ``forecast=false`` (skip the forecast
request), ``cooldown_s=`` (seconds without upstream calls after a failure, default 30; doubles with
each consecutive failure), ``max_cooldown_s=`` (ceiling of that doubling, default 300, at least
``cooldown_s``), ``max_age_s=`` (seconds a fetched value is reused before upstream is asked again;
default the data interval: 3600 Electricity Maps, 300 WattTime, 1800 UK grid). A Retry-After
longer than the cool-down still wins. Example: ``electricitymaps:DE?cooldown_s=10&max_age_s=900``.
Option for every provider: ``forecast_file=PATH``, a CSV forecast (trace columns, absolute
timestamps, naive = UTC) that replaces the provider's forecast with its points after now, or a
vintages file (forecasts as issued, :mod:`carbonsched.planning.vintages`) whose newest issue at or
before now is used; re-read when the file changes; a bad file is logged and the provider's own forecast is used
(:mod:`carbonsched.providers.forecast_file`). ``describe()`` gives ``forecast_source`` and
``forecast_hours``.
A bad spec raises :class:`ProviderSpecError` with a one-line message naming the bad part.

Behaviour: each provider is cached per (provider, zone) for its data interval or ``max_age_s``
(one upstream call per interval), cools down after errors, and a chain falls back in order, returns
to the primary when it recovers, and serves the last good value marked ``detail["stale"]`` when all
fail.
"""

from carbonsched.providers.base import IntensityProvider, ProviderSpecError
from carbonsched.providers.build import build_provider
from carbonsched.providers.cache import CachedProvider, ReadingCache
from carbonsched.providers.chain import FallbackChain

DEFAULT_PROVIDER_SPEC = "trace"

__all__ = [
    "DEFAULT_PROVIDER_SPEC",
    "CachedProvider",
    "FallbackChain",
    "IntensityProvider",
    "ProviderSpecError",
    "ReadingCache",
    "build_provider",
]
