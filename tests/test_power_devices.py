import pytest

from carbonsched.power import job_gpu_indices
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
