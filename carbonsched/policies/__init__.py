"""ρ policies: TOML files that map grid carbon intensity, forecast, GPU power and carbon budgets to ρ."""

from carbonsched.policies.base import GpuPowerRule, Policy, Target
from carbonsched.policies.fields import FieldReader
from carbonsched.policies.loader import (ENTRY_POINT_GROUP, available_kinds, check_policy_file,
                                         default_policy_path, load_policy, policy_entry_points,
                                         policy_from_source)
from carbonsched.policies.problems import PolicyFileError, PolicyFileUnreadable, PolicyProblem
from carbonsched.policies.source import PolicySource

__all__ = ["ENTRY_POINT_GROUP", "FieldReader", "GpuPowerRule", "Policy", "PolicyFileError",
           "PolicyFileUnreadable", "PolicyProblem", "PolicySource", "Target", "available_kinds",
           "check_policy_file", "default_policy_path", "load_policy", "policy_entry_points",
           "policy_from_source"]
