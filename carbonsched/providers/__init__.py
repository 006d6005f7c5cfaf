"""Grid carbon-intensity providers for the carbonsched daemon (all values in gCO2e/kWh).

Usage::

    provider = build_provider("electricitymaps:DE,static:DEU", env=os.environ)
    reading = provider.current()   # IntensityReading, or ProviderError when nothing is usable
    provider.name                  # "chain(electricitymaps:DE,static:DEU)"
    provider.describe()            # dict for `status`; never contains secrets

A spec is one or more providers separated by commas; the later ones are fallbacks::

    spec     := provider ("," provider)*
    provider := kind [":" zone] ["?" key "=" value ("&" key "=" value)*]

The kinds, their zones, options and credentials are listed in docs/providers.md; each kind is one
module here whose docstring describes its API. A bad spec raises :class:`ProviderSpecError` with a
one-line message naming the bad part.

Behaviour: each provider is cached per (provider, zone) for its data interval or ``max_age_s``
(one upstream call per interval), cools down after errors, and a chain falls back in order, returns
to the primary when it recovers, and serves the last good value marked ``detail["stale"]`` when all
fail.

Adding a provider
-----------------
Write one module whose last statement declares it, ``PROVIDER = ProviderKind(...)``
(:mod:`carbonsched.providers.declaration`): its name, spec options, forecast horizons, API root,
credentials, zone check, builder and doctor note. Spec parsing (:mod:`.spec`), building
(:mod:`.build`) and ``carbonsched doctor`` read only these declarations. Then either add its
``PROVIDER`` to ``BUILTIN_PROVIDERS`` in :mod:`carbonsched.providers.registry`, or, from another
package, name it under the entry-point group ``carbonsched.providers``::

    [project.entry-points."carbonsched.providers"]
    fixedgrid = "fixedgrid_provider:PROVIDER"

docs/examples/fixedgrid_provider/ is a complete one.
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
