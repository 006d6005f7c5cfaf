import os
from pathlib import Path

import pytest

from carbonsched.power import CpuRamMeter, scan_rapl
from power_helpers import FakeClock, read_files_as_unprivileged_user


def add_domain(root: Path, dirname: str, name: str, energy_uJ: int, max_range_uJ: int = 262_143_328_850) -> Path:
    path = root / dirname if dirname.count(":") == 1 else root / dirname.rsplit(":", 1)[0] / dirname
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uJ}\n")
    (path / "max_energy_range_uj").write_text(f"{max_range_uJ}\n")
    return path


def set_energy(domain: Path, energy_uJ: int) -> None:
    (domain / "energy_uj").write_text(f"{energy_uJ}\n")


@pytest.fixture
def powercap(tmp_path):
    root = tmp_path / "powercap"
    domains = {
        "pkg0": add_domain(root, "intel-rapl:0", "package-0", 1_000_000),
        "core0": add_domain(root, "intel-rapl:0:0", "core", 500_000),
        "dram0": add_domain(root, "intel-rapl:0:1", "dram", 200_000),
        "pkg1": add_domain(root, "intel-rapl:1", "package-1", 3_000_000, max_range_uJ=4_000_000),
        "psys": add_domain(root, "intel-rapl:2", "psys", 9_000_000),
    }
    return root, domains


@pytest.fixture
def rapl_meter(powercap):
    """A CPU/RAM meter on the fake powercap tree, its clock and the tree's domains."""
    root, domains = powercap
    clock = FakeClock()
    return CpuRamMeter(clock, powercap_root=root), clock, domains


def test_rapl_packages_and_dram_from_sysfs(rapl_meter):
    meter, clock, d = rapl_meter
    assert meter.status()["cpu"] == {"available": True, "source": "rapl", "domains": ["package-0", "package-1"]}
    assert meter.status()["ram"]["source"] == "rapl"
    assert meter.poll() == []
    set_energy(d["pkg0"], 1_000_000 + 30_000_000)
    set_energy(d["pkg1"], 3_500_000)
    set_energy(d["core0"], 99_000_000)  # sub-domain of package-0: must not be added again
    set_energy(d["psys"], 99_000_000)  # platform domain overlaps the packages
    set_energy(d["dram0"], 200_000 + 4_000_000)
    clock.advance(10)
    readings = {r.device: r for r in meter.poll()}
    assert readings["cpu"].source == "rapl"
    assert readings["cpu"].energy_j == pytest.approx(30.5)
    assert readings["cpu"].power_w == pytest.approx(3.05)
    assert readings["ram"].source == "rapl"
    assert readings["ram"].energy_j == pytest.approx(4.0)


def test_rapl_wraparound_uses_max_energy_range(rapl_meter):
    meter, clock, d = rapl_meter
    meter.poll()
    set_energy(d["pkg1"], 500_000)  # wrapped: 3.0 J → 4.0 J (range) → 0.5 J
    clock.advance(1)
    readings = {r.device: r for r in meter.poll()}
    assert readings["cpu"].energy_j == pytest.approx(1.5)


def test_sample_between_polls_catches_each_wrap(rapl_meter):
    meter, clock, d = rapl_meter
    meter.poll()
    set_energy(d["pkg1"], 1_000_000)  # first wrap: +2.0 J
    meter.sample()
    set_energy(d["pkg1"], 2_000_000)  # +1.0 J
    meter.sample()
    set_energy(d["pkg1"], 500_000)  # second wrap: +2.5 J
    clock.advance(60)
    readings = {r.device: r for r in meter.poll()}
    assert readings["cpu"].energy_j == pytest.approx(5.5)


def test_unreadable_rapl_says_permission(powercap, monkeypatch):
    root, d = powercap
    for domain in (d["pkg0"], d["pkg1"]):
        os.chmod(domain / "energy_uj", 0)
    read_files_as_unprivileged_user(monkeypatch)
    scan = scan_rapl(root)
    assert scan.permission_denied
    assert scan.problem == f"RAPL files not readable (permission): {d['pkg0'] / 'energy_uj'}"
    meter = CpuRamMeter(FakeClock(), powercap_root=root)
    cpu = meter.status()["cpu"]
    assert cpu["source"] == "tdp_estimate" and "permission" in cpu["rapl"]


def test_no_rapl_falls_back_to_codecarbon_estimates(tmp_path):
    clock = FakeClock()
    meter = CpuRamMeter(clock, powercap_root=tmp_path)
    status = meter.status()
    assert status["cpu"]["source"] == "tdp_estimate"
    assert "not present" in status["cpu"]["rapl"]
    assumptions = status["cpu"]["assumptions"]
    assert assumptions["tdp_w"] > 0 and assumptions["cpu_model"] and assumptions["tdp_basis"]
    assert status["ram"]["source"] == "codecarbon" and status["ram"]["assumptions"]["memory_gb"] > 0
    assert meter.poll() == []
    clock.advance(30)
    meter.sample()
    clock.advance(30)
    readings = {r.device: r for r in meter.poll()}
    assert readings["cpu"].source == "tdp_estimate"
    assert readings["cpu"].energy_j > 0
    # CodeCarbon's load model stays between 10 % of TDP and TDP
    assert 0.1 * assumptions["tdp_w"] * 60 - 1e-9 <= readings["cpu"].energy_j <= assumptions["tdp_w"] * 60 + 1e-9
    assert readings["ram"].source == "codecarbon"
    assert readings["ram"].energy_j == pytest.approx(status["ram"]["assumptions"]["power_w"] * 60, rel=0.01)


def test_zero_length_window_gives_no_reading(tmp_path):
    clock = FakeClock()
    meter = CpuRamMeter(clock, powercap_root=tmp_path)
    meter.poll()
    assert meter.poll() == []
