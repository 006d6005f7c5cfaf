"""The provider registry: a third-party provider, one module plus one entry point, is used from a
spec string like a built-in one (parsing, building, readings, fallback, doctor, redaction), and a
broken plugin is a spec error rather than a crash. The plugin is a real distribution (a module and
a dist-info) on sys.path; nothing is installed."""

import sys
from pathlib import Path

import pytest

from carbonsched.service.doctor import check_provider, redact
from carbonsched.providers import ProviderSpecError, build_provider
from carbonsched.providers.registry import BUILTIN_PROVIDERS, ENTRY_POINT_GROUP, available_kinds
from carbonsched.providers.spec import parse_specs

TOKEN = "fixedgrid-secret-51c2"

REPO_ROOT = Path(__file__).resolve().parents[3]
# The whole of a new provider (its class, zone check, builder and declaration), as the docs show it.
PLUGIN_MODULE = (REPO_ROOT / "docs" / "examples" / "fixedgrid_provider" / "fixedgrid_provider.py").read_text(
    encoding="utf-8")


def install_plugin(tmp_path: Path, monkeypatch, module: str, body: str, target: str = "PROVIDER",
                   kind: str = "fixedgrid") -> None:
    """A real distribution on sys.path: one module and a dist-info with one entry point."""
    (tmp_path / f"{module}.py").write_text(body, encoding="utf-8")
    dist_info = tmp_path / f"{module}-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n", encoding="utf-8")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{kind} = {module}:{target}\n",
                                                encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)


@pytest.fixture
def fixedgrid(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "fixedgrid_provider", PLUGIN_MODULE)


def test_plugin_provider_is_used_from_a_spec_string_end_to_end(fixedgrid):
    chain = build_provider("fixedgrid:XX?value_g_per_kwh=123.5", env={"FIXEDGRID_TOKEN": TOKEN})
    reading = chain.current()
    assert (reading.provider, reading.zone, reading.intensity_g_per_kwh) == ("fixedgrid:XX", "XX", 123.5)
    assert chain.name == "fixedgrid:XX"
    assert "fixedgrid" in available_kinds()


def test_plugin_provider_takes_part_in_a_fallback_chain(fixedgrid):
    chain = build_provider("fixedgrid:DOWN,static:FRA", env={"FIXEDGRID_TOKEN": TOKEN})
    assert chain.current().provider == "static:FRA"
    # Its builder's refusal is a spec error, as for electricitymaps without ELECTRICITYMAPS_TOKEN.
    with pytest.raises(ProviderSpecError, match="no fixedgrid token; set FIXEDGRID_TOKEN or provide the systemd"):
        build_provider("fixedgrid:XX,static:FRA", env={})


@pytest.mark.parametrize(("spec", "message"), [
    ("fixedgrid:xx", "fixedgrid needs an upper-case zone"),
    ("fixedgrid:XX?value_g_per_kwh=-3", "value_g_per_kwh='-3' is not a positive number"),
    ("fixedgrid:XX?speedup=2", "unknown option 'speedup' for fixedgrid (allowed: forecast_file, value_g_per_kwh)"),
    ("fixedgrid:XX?forecast_hours=24", "unknown option 'forecast_hours'"),
])
def test_plugin_options_and_zone_are_checked_by_its_declaration(fixedgrid, spec, message):
    with pytest.raises(ProviderSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_specs(spec)


def test_doctor_checks_a_plugin_provider_and_redacts_its_credential(fixedgrid):
    missing = check_provider("fixedgrid:XX", env={})
    assert [(c.name, c.status, c.message) for c in missing] == [
        ("provider:fixedgrid:XX", "fail", "fixedgrid credentials missing: FIXEDGRID_TOKEN"),
        ("location", "warn", "'fixedgrid:XX' is a fixed value"),
    ]
    env = {"FIXEDGRID_TOKEN": TOKEN}
    found = check_provider("fixedgrid:XX", env=env, check_network=True)
    assert [(c.name, c.status) for c in found] == [("provider:fixedgrid:XX", "ok"), ("location", "warn"),
                                                   ("provider_fetch", "ok")]
    assert found[0].message == "fixedgrid: FIXEDGRID_TOKEN set"
    assert redact(f"token is {TOKEN}", env) == "token is ***"


def test_unknown_kind_lists_the_plugins_too(fixedgrid):
    with pytest.raises(ProviderSpecError, match="known: trace, static, electricitymaps, watttime, ukgrid, fixedgrid$"):
        parse_specs("nogrid:XX")


def test_a_plugin_cannot_shadow_a_builtin_kind(tmp_path, monkeypatch):
    install_plugin(tmp_path, monkeypatch, "shadow_provider", PLUGIN_MODULE.replace('"fixedgrid"', '"static"'),
                   kind="static")
    assert available_kinds().count("static") == 1
    assert build_provider("static:FRA", env={}).current().provider == "static:FRA"


@pytest.mark.parametrize(("body", "target", "message"), [
    ("raise RuntimeError('no network here')\n", "PROVIDER", "failed to load: RuntimeError: no network here"),
    ("PROVIDER = 'fixedgrid'\n", "PROVIDER", "is a str, not a ProviderKind"),
    (PLUGIN_MODULE, "PROVIDER", None),
    (PLUGIN_MODULE.replace('name="fixedgrid"', 'name="othergrid"'), "PROVIDER",
     "declares the kind 'othergrid'; the names must match"),
])
def test_a_broken_plugin_is_a_spec_error_naming_it(tmp_path, monkeypatch, body, target, message):
    install_plugin(tmp_path, monkeypatch, "broken_provider", body, target)
    if message is None:  # the same entry point with a sound module loads: the failures are the module's
        assert parse_specs("fixedgrid:XX")[0].kind == "fixedgrid"
        return
    with pytest.raises(ProviderSpecError, match=f"provider plugin 'fixedgrid' \\(broken_provider:PROVIDER\\) {message}"):
        parse_specs("fixedgrid:XX")
    assert check_provider("fixedgrid:XX", env={})[0].status == "fail"  # doctor reports it, does not crash
    assert redact("nothing secret", {}) == "nothing secret"  # redaction skips the broken plugin


def test_every_builtin_kind_and_option_is_documented():
    doc = (REPO_ROOT / "docs" / "providers.md").read_text(encoding="utf-8")
    for kind in BUILTIN_PROVIDERS:
        assert f"`{kind.name}" in doc, kind.name
        for key in kind.options | kind.keys:
            assert f"`{key}=" in doc, (kind.name, key)
        for credential in kind.credentials:
            assert credential.env_var in doc and credential.name in doc, credential
        if kind.http is not None:
            assert kind.http.root_env in doc, kind.name
