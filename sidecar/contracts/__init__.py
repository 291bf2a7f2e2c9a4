"""Data contracts: a route's declared inputs and outputs, checked, imputed and documented.

A contract is a versioned YAML file (:func:`load_contract`); :func:`check_inputs` and
:func:`check_outputs` list :class:`Violation` values, :func:`impute` adds declared defaults to
a request, and :func:`contract_markdown` renders the human page.
"""

from __future__ import annotations

from sidecar.contracts.check import (
    Rule,
    Violation,
    check_inputs,
    check_outputs,
    hide_values,
    impute,
)
from sidecar.contracts.docs import contract_markdown
from sidecar.contracts.model import (
    Contract,
    FeatureSpec,
    InputSpec,
    OutputSpec,
    load_contract,
    parse_contract,
)

__all__ = [
    "Contract",
    "FeatureSpec",
    "InputSpec",
    "OutputSpec",
    "Rule",
    "Violation",
    "check_inputs",
    "check_outputs",
    "contract_markdown",
    "hide_values",
    "impute",
    "load_contract",
    "parse_contract",
]
