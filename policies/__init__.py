"""Policies as data: named YAML presets (``default``, ``fast``) validated by :mod:`policies.schema`."""

from policies.schema import (
    Budgets,
    Candidate,
    Limits,
    Policy,
    PolicyError,
    Thresholds,
    list_policies,
    load_policy,
    policy_from_mapping,
    validate_tools,
)

__all__ = [
    "Budgets",
    "Candidate",
    "Limits",
    "Policy",
    "PolicyError",
    "Thresholds",
    "list_policies",
    "load_policy",
    "policy_from_mapping",
    "validate_tools",
]
