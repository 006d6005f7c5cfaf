"""Power and energy measurement: GPUs over NVML, CPU/RAM over RAPL or CodeCarbon's estimates."""

from carbonsched.power.cpu import CpuRamMeter, scan_rapl
from carbonsched.power.devices import job_gpu_indices
from carbonsched.power.meter import NodeEnergyMeter
from carbonsched.power.nvml import GpuMeter

__all__ = ["CpuRamMeter", "GpuMeter", "NodeEnergyMeter", "job_gpu_indices", "scan_rapl"]
