import pytest

from carbonsched.power import GpuMeter, job_gpu_indices
from carbonsched.power.devices import resolve_job_devices
from fake_pynvml import NVML_ERROR_LIBRARY_NOT_FOUND, FakeGpu, make_fake_nvml

A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
B = "GPU-bbbbbbbb-1111-2222-3333-444444444444"
C = "GPU-cccccccc-1111-2222-3333-444444444444"
MIG_ON_C = "MIG-dddddddd-1111-2222-3333-444444444444"


@pytest.fixture
def nvml():
    # NVML index order is deliberately not PCI order: CUDA ordinals follow the bus ids.
    return make_fake_nvml([
        FakeGpu(uuid=A, bus_id="00000000:3B:00.0"),
        FakeGpu(uuid=B, bus_id="00000000:07:00.0"),
        FakeGpu(uuid=C, bus_id="00000000:B1:00.0", mig_uuids=(MIG_ON_C,)),
    ])


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [0, 1, 2]),
        ("", []),
        ("  ", []),
        ("0", [1]),
        ("2,0", [2, 1]),
        ("1, 1", [0]),
        (B, [1]),
        (f"{C},{A}", [2, 0]),
        ("GPU-cccc", [2]),
        (MIG_ON_C, [2]),
        (f"MIG-{A}/1/0", [0]),
        ("0,7,1", [1]),
        ("-1", []),
        ("GPU-ffff", []),
        ("0,,2", [1]),
    ],
)
def test_cuda_visible_devices_map_to_nvml_indices(nvml, visible, expected):
    assert job_gpu_indices(visible, nvml_module=nvml) == expected
    assert nvml.state["init_count"] == 0


def test_ambiguous_uuid_prefix_names_no_gpu(nvml):
    nvml.gpus[1].uuid = "GPU-aaaaaaaa-9999-2222-3333-444444444444"
    assert job_gpu_indices("GPU-aaaaaaaa", nvml_module=nvml) == []


def test_no_nvml_means_no_gpus():
    nvml = make_fake_nvml([FakeGpu()], init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
    assert job_gpu_indices(None, nvml_module=nvml) == []
    assert job_gpu_indices("0", nvml_module=nvml) == []


@pytest.fixture
def meter_devices(nvml):
    """The GPUs as the daemon's meter holds them (``meter.gpu.devices``)."""
    meter = GpuMeter(nvml)
    yield meter.devices
    meter.close()


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ([], []),
        (["gpu:0", "gpu:2"], ["gpu:0", "gpu:2"]),
        (["0"], ["gpu:1"]),  # a CUDA ordinal, in PCI bus id order
        (["2", "0"], ["gpu:2", "gpu:1"]),
        ([B], ["gpu:1"]),
        ([C.lower(), A], ["gpu:2", "gpu:0"]),
        (["GPU-cccc"], ["gpu:2"]),
        ([f"MIG-{A}/1/0"], ["gpu:0"]),
        (["0000:3b:00.0"], ["gpu:0"]),
        (["00000000:B1:00.0", "07:00.0"], ["gpu:2", "gpu:1"]),
        (["gpu:1", B, "0", "00000000:07:00.0"], ["gpu:1"]),
        (["gpu:7", "7", "GPU-ffff", "0000:99:00.0", "cpu", "MIG-GPU-ffff/1/0"],
         ["gpu:7", "7", "GPU-ffff", "0000:99:00.0", "cpu", "MIG-GPU-ffff/1/0"]),
        (["GPU-ffff", B, "GPU-ffff"], ["GPU-ffff", "gpu:1"]),
        (f"{A},1", ["gpu:0"]),  # a CUDA_VISIBLE_DEVICES string, not a list
    ],
)
def test_job_devices_resolve_to_the_daemons_gpu_names(nvml, meter_devices, sent, expected):
    assert resolve_job_devices(sent, meter_devices, nvml_module=nvml) == expected
    assert nvml.state["init_count"] == 1  # only the meter's own init; no lookup was needed


def test_new_style_mig_id_is_looked_up_over_nvml_and_nvml_released(nvml, meter_devices):
    assert resolve_job_devices([MIG_ON_C, "MIG-eeeeeeee-0000"], meter_devices, nvml_module=nvml) == [
        "gpu:2", "MIG-eeeeeeee-0000"]
    assert nvml.state["init_count"] == 1


def test_mig_id_without_nvml_is_kept(meter_devices):
    broken = make_fake_nvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND)
    assert resolve_job_devices([MIG_ON_C, B], meter_devices, nvml_module=broken) == [MIG_ON_C, "gpu:1"]


def test_without_gpus_every_entry_is_kept_as_sent(nvml):
    assert resolve_job_devices(["0", B, "gpu:0"], [], nvml_module=nvml) == ["0", B, "gpu:0"]
    assert nvml.state["init_count"] == 0


@pytest.mark.parametrize("junk", [
    None, 5, [None, 3, b"GPU-aaaa", "", "   ", ":", "0:0", "MIG-\ud800", "gpu:", "gpu:-1", "٣", "x" * 10_000],
    ["0000:zz:00.0", "1e3", "GPU-", "MIG-", "MIG-GPU-/1/0", "gpu:00"],
])
def test_junk_never_raises(nvml, meter_devices, junk):
    resolved = resolve_job_devices(junk, meter_devices, nvml_module=nvml)
    assert isinstance(resolved, list)
    assert nvml.state["init_count"] == 1
