import sys

import pytest

from carbonsched.power import GpuMeter, NodeEnergyMeter
from fake_pynvml import NVML_ERROR_DRIVER_NOT_LOADED, FakeGpu, FakeProcess, make_fake_nvml
from power_helpers import FakeClock


@pytest.fixture
def clock():
    return FakeClock()


def test_counter_energy_is_counter_delta(clock):
    gpu = FakeGpu(energy_mJ=1_000_000, processes=[FakeProcess(4242, 1 << 30)])
    meter = GpuMeter(make_fake_nvml([gpu]), clock=clock)
    assert meter.poll() == []
    start = clock.now
    clock.advance(10)
    gpu.energy_mJ += 250_000
    (reading,) = meter.poll()
    assert reading.device == "gpu:0"
    assert reading.source == "nvml_counter"
    assert reading.energy_j == pytest.approx(250.0)
    assert reading.power_w == pytest.approx(25.0)
    assert (reading.start, reading.end) == (start, clock.now)
    assert reading.pids == (4242,)


def test_counter_reset_after_driver_reload_is_never_negative(clock):
    gpu = FakeGpu(energy_mJ=5_000_000)
    meter = GpuMeter(make_fake_nvml([gpu]), clock=clock)
    meter.poll()
    clock.advance(5)
    gpu.energy_mJ = 2_000  # driver reloaded: counter restarted
    (reading,) = meter.poll()
    assert reading.energy_j == pytest.approx(2.0)
    clock.advance(5)
    gpu.energy_mJ += 3_000
    (reading,) = meter.poll()
    assert reading.energy_j == pytest.approx(3.0)


def test_power_integration_without_counter_uses_trapezoids(clock):
    gpu = FakeGpu(energy_mJ=None, power_mW=100_000)
    meter = GpuMeter(make_fake_nvml([gpu]), clock=clock)
    assert meter.status()["devices"][0]["energy_source"] == "nvml_power_integrated"
    meter.poll()
    clock.advance(1)
    gpu.power_mW = 200_000
    meter.sample()
    clock.advance(1)
    (reading,) = meter.poll()
    assert reading.source == "nvml_power_integrated"
    assert reading.energy_j == pytest.approx((100 + 200) / 2 * 1 + 200 * 1)
    # the next window starts from the last sample, not from zero
    clock.advance(2)
    (reading,) = meter.poll()
    assert reading.energy_j == pytest.approx(400.0)


def test_power_integration_never_records_zero_with_power_reported(clock):
    gpu = FakeGpu(energy_mJ=None, power_mW=80_000)
    meter = GpuMeter(make_fake_nvml([gpu]), clock=clock)
    gpu.power_mW = None  # the read at window start fails
    meter.poll()
    gpu.power_mW = 80_000
    clock.advance(5)
    (reading,) = meter.poll()
    assert reading.energy_j == pytest.approx(400.0)
    gpu.power_mW = None  # now the read at window end fails
    clock.advance(5)
    (reading,) = meter.poll()
    assert reading.energy_j == pytest.approx(400.0)


def test_processes_and_pids_seen_during_the_window(clock):
    gpus = [
        FakeGpu(uuid="GPU-a", processes=[FakeProcess(10), FakeProcess(11)]),
        FakeGpu(uuid="GPU-b", processes=None),
    ]
    meter = GpuMeter(make_fake_nvml(gpus), clock=clock)
    assert meter.processes() == {0: [10, 11], 1: []}
    meter.poll()
    gpus[0].processes = [FakeProcess(12)]
    meter.sample()
    gpus[0].processes = []
    clock.advance(1)
    gpus[0].energy_mJ += 1000
    readings = {r.device: r for r in meter.poll()}
    assert readings["gpu:0"].pids == (10, 11, 12)
    assert readings["gpu:1"].pids == ()


def test_total_power_sums_all_gpus(clock):
    meter = GpuMeter(make_fake_nvml([FakeGpu(power_mW=100_000), FakeGpu(power_mW=250_500)]), clock=clock)
    assert meter.power_w() == pytest.approx(350.5)


def test_gpu_with_neither_counter_nor_power_is_listed_but_not_measured(clock):
    gpus = [FakeGpu(energy_mJ=None, power_mW=None), FakeGpu(energy_mJ=0)]
    meter = GpuMeter(make_fake_nvml(gpus), clock=clock)
    devices = meter.status()["devices"]
    assert devices[0]["energy_source"] == "absent" and "Not Supported" in devices[0]["reason"]
    meter.poll()
    clock.advance(1)
    assert [r.device for r in meter.poll()] == ["gpu:1"]


def test_nvml_import_failure_is_absent_with_reason(clock, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    meter = NodeEnergyMeter(cpu_ram=False, clock=clock)
    status = meter.status()["gpu"]
    assert status["available"] is False
    assert "pynvml not importable" in status["reason"] and "nvidia-ml-py" in status["reason"]
    assert meter.poll() == [] and meter.poll() == []
    assert meter.gpu_power_w() is None
    assert meter.gpu_processes() == {}


def test_nvml_init_failure_is_absent_with_reason(clock):
    nvml = make_fake_nvml([FakeGpu()], init_error=NVML_ERROR_DRIVER_NOT_LOADED)
    meter = GpuMeter(nvml, clock=clock)
    assert meter.status() == {"available": False, "reason": "NVML: Driver Not Loaded", "devices": []}
    meter.poll()
    clock.advance(1)
    assert meter.poll() == []
    assert meter.power_w() is None


def test_close_releases_nvml(clock):
    nvml = make_fake_nvml([FakeGpu()])
    meter = GpuMeter(nvml, clock=clock)
    assert nvml.state["init_count"] == 1
    meter.close()
    meter.close()
    assert nvml.state["init_count"] == 0
