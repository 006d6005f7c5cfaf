"""The daemon's CPU/RAM estimates (carbonsched.power.codecarbon_models, no pandas) equal
CodeCarbon's own: the CPU table match and TDP for a set of CPU names, the load model, the
machine's assumptions and the RAM model. CodeCarbon is imported here, in the test process only."""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple

import pytest

from carbonsched.power import codecarbon_models as models

codecarbon_cpu = pytest.importorskip("codecarbon.core.cpu")
from codecarbon.core.util import count_cpus, count_physical_cpus  # noqa: E402
from codecarbon.external import hardware as codecarbon_hardware  # noqa: E402
from codecarbon.external.ram import RAM  # noqa: E402
from codecarbon.input import DataSource  # noqa: E402

CPU_NAMES = [
    "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz",  # the table's name after removing (R), CPU, clock
    "AMD EPYC 7763 64-Core Processor",  # words contain one table name
    "AMD Ryzen 9 5950X 16-Core Processor",
    "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz",
    "Intel Xeon Platinum 8380",  # exactly a table name
    "intel xeon platinum 8380",  # case differs
    "AMD EPYC",  # words contained in many names: no match
    "Intel(R) Xeon(R) Processor",  # this machine's (a VM): no match
    "Apple M2 Pro",
    "Some Future CPU 9000",
    "Intel Celeron 1000A",  # a malformed TDP in the table ("27.29.5")
]


def codecarbon_tdp(name: str) -> tuple[str | None, float | None] | type[ValueError]:
    tdp = codecarbon_cpu.TDP.__new__(codecarbon_cpu.TDP)
    match = tdp._get_matching_cpu(name, DataSource().get_cpu_power_data())
    try:
        return match, tdp._get_cpu_power_from_registry(name)
    except ValueError:
        return ValueError


def ours(name: str) -> tuple[str | None, float | None] | type[ValueError]:
    match = models.match_cpu_model(name)
    try:
        return match, models.table_tdp_w(match) if match else None
    except ValueError:
        return ValueError


@pytest.mark.parametrize("name", CPU_NAMES)
def test_cpu_table_match_and_tdp_equal_codecarbons(name):
    assert ours(name) == codecarbon_tdp(name)


def test_the_names_cover_matches_misses_and_a_malformed_row():
    results = [ours(name) for name in CPU_NAMES]
    assert sum(1 for r in results if r is not ValueError and r[0] is not None) >= 5
    assert sum(1 for r in results if r is not ValueError and r[0] is None) >= 3
    assert ValueError in results


@pytest.mark.parametrize("load_percent", [0.0, 12.5, 50.0, 87.0, 100.0])
def test_load_model_equals_codecarbons(load_percent):
    cpu = codecarbon_hardware.CPU("/tmp", codecarbon_hardware.MODE_CPU_LOAD, "test", 125, tracking_mode="machine")
    cpu._cpu_load_meter.percent = lambda: load_percent
    assert models.load_power_w(125, load_percent) == pytest.approx(cpu._get_power_from_cpu_load().W, rel=1e-12)


Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_busy_share_of_cpu_time_equals_codecarbons(monkeypatch):
    readings = [Times(100, 5, 50, 800, 20, 1, 1, 0, 10, 0), Times(160, 5, 70, 860, 30, 2, 1, 0, 30, 0)]
    meter = codecarbon_hardware.SystemCPULoadMeter()
    pending = list(readings)
    monkeypatch.setattr(codecarbon_hardware.psutil, "cpu_times", lambda: pending.pop(0))
    meter.reset()
    assert models.busy_percent(*readings) == pytest.approx(meter.percent(), rel=1e-12)
    assert 0 < models.busy_percent(*readings) < 100


def test_this_machines_cpu_assumptions_equal_codecarbons():
    tdp = codecarbon_cpu.TDP()
    threads, sockets = count_cpus(), count_physical_cpus()
    expected_w = float(tdp.tdp) * sockets if tdp.tdp is not None else codecarbon_hardware.POWER_CONSTANT
    assumptions = models.cpu_assumptions()
    assert assumptions["cpu_model"] == tdp.model
    assert assumptions["tdp_w"] == expected_w
    assert threads == models.thread_count()


@pytest.mark.parametrize("memory_gb", [1.5, 3.8, 7.7, 15.6, 31.3, 62.8, 125.7, 250.0, 500.0, 1024.0, 4096.0])
@pytest.mark.parametrize("arm", [False, True])
def test_ram_model_equals_codecarbons(memory_gb, arm):
    ram = RAM(tracking_mode="machine")
    ram.is_arm_cpu = arm
    assert models.ram_power_w(memory_gb, arm) == ram._calculate_ram_power(memory_gb)


def test_this_machines_ram_power_equals_codecarbons():
    power_w, basis = models.ram_assumptions()
    assert power_w == pytest.approx(RAM(tracking_mode="machine").total_power().W, rel=1e-12)
    assert basis["power_w"] == round(power_w, 2)


def test_the_estimates_load_neither_codecarbon_nor_pandas():
    code = ("import sys; from carbonsched.power.cpu import CpuRamMeter; m = CpuRamMeter(powercap_root='/nonexistent'); "
            "assert m.status()['cpu']['source'] == 'tdp_estimate', m.status(); "
            "print(sorted(k for k in ('pandas', 'numpy', 'codecarbon') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_cpu_name_comes_from_the_kernel_without_py_cpuinfos_subprocess(monkeypatch):
    import cpuinfo

    kernel_names = [line.partition(":")[2].strip() for line in open("/proc/cpuinfo", encoding="utf-8")
                    if line.partition(":")[0].strip() == "model name"]
    if not kernel_names:
        pytest.skip("no 'model name' in /proc/cpuinfo on this machine")
    expected = cpuinfo.get_cpu_info().get("brand_raw")
    monkeypatch.setattr(cpuinfo, "get_cpu_info", lambda: pytest.fail("py-cpuinfo's subprocess was started"))
    assert models.cpu_model_name() == kernel_names[0] == expected
