"""The provider kinds a spec may name: the built-in modules' declarations, then entry-point plugins.

A built-in kind is one line in :data:`BUILTIN_PROVIDERS` (its module's ``PROVIDER``). A package
outside this project adds a kind by declaring, in its own ``pyproject.toml``::

    [project.entry-points."carbonsched.providers"]
    mygrid = "mygrid_provider:PROVIDER"

where ``PROVIDER`` is a :class:`~carbonsched.providers.declaration.ProviderKind` named ``mygrid``.
Plugins are listed by name without being imported, and loaded when a spec names them; built-in
kinds cannot be shadowed by a plugin of the same name. A plugin that fails to load is a
ProviderSpecError naming it, never a crash.
"""

from __future__ import annotations

from importlib import metadata

from carbonsched.providers import electricitymaps, static, trace, ukgrid, watttime
from carbonsched.providers.base import ProviderSpecError
from carbonsched.providers.declaration import ProviderKind

ENTRY_POINT_GROUP = "carbonsched.providers"

BUILTIN_PROVIDERS: tuple[ProviderKind, ...] = (
    trace.PROVIDER,
    static.PROVIDER,
    electricitymaps.PROVIDER,
    watttime.PROVIDER,
    ukgrid.PROVIDER,
)
BUILTIN_BY_NAME: dict[str, ProviderKind] = {kind.name: kind for kind in BUILTIN_PROVIDERS}


def provider_entry_points() -> dict[str, metadata.EntryPoint]:
    """Entry points in the ``carbonsched.providers`` group, by kind name (not loaded)."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_kinds() -> tuple[str, ...]:
    """Every kind name: the built-in ones in their order, then the plugins' sorted."""
    plugins = sorted(set(provider_entry_points()) - set(BUILTIN_BY_NAME))
    return (*BUILTIN_BY_NAME, *plugins)


def find_kind(name: str) -> ProviderKind | None:
    """The declaration of kind ``name``; None if no kind has that name; ProviderSpecError if its plugin is broken."""
    if name in BUILTIN_BY_NAME:
        return BUILTIN_BY_NAME[name]
    entry_point = provider_entry_points().get(name)
    return None if entry_point is None else load_plugin(entry_point)


def declaration_of(kind: str, spec_text: str) -> ProviderKind:
    """The declaration of ``kind``; ProviderSpecError naming ``spec_text`` (the spec part) when there is none."""
    declared = find_kind(kind)
    if declared is None:
        raise ProviderSpecError(f"unknown provider kind {kind!r} in {spec_text!r}; known: "
                                f"{', '.join(available_kinds())}")
    return declared


def load_plugin(entry_point: metadata.EntryPoint) -> ProviderKind:
    """The ProviderKind an entry point names; ProviderSpecError (naming the plugin) when it is not one."""
    where = f"provider plugin {entry_point.name!r} ({entry_point.value})"
    try:
        declared = entry_point.load()
    except Exception as err:  # a broken plugin must not take the daemon down
        raise ProviderSpecError(f"{where} failed to load: {type(err).__name__}: {err}") from None
    if not isinstance(declared, ProviderKind):
        raise ProviderSpecError(f"{where} is a {type(declared).__name__}, not a ProviderKind")
    if declared.name != entry_point.name:
        raise ProviderSpecError(f"{where} declares the kind {declared.name!r}; the names must match")
    return declared


def loadable_kinds() -> list[ProviderKind]:
    """Every kind whose declaration loads (broken plugins are left out), e.g. to collect credentials."""
    kinds = list(BUILTIN_PROVIDERS)
    for name, entry_point in provider_entry_points().items():
        if name in BUILTIN_BY_NAME:
            continue
        try:
            kinds.append(load_plugin(entry_point))
        except ProviderSpecError:
            continue
    return kinds


__all__ = ["BUILTIN_BY_NAME", "BUILTIN_PROVIDERS", "ENTRY_POINT_GROUP", "available_kinds", "declaration_of",
           "find_kind",
           "load_plugin", "loadable_kinds", "provider_entry_points"]
