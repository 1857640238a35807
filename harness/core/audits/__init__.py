"""Contract audits: the checks that tell a sound ``nn.Module`` from a broken one.

``audit(factory, example_input, checks=None, output="any")`` runs the checks of a table
(``GENERIC_CHECKS``) on fresh instances built by ``factory`` and returns an ``AuditReport``:
one result per check ("pass" / "fail" / "n/a"), findings that name the module path, parameter,
block or output leaf concerned, and the reason for every "n/a". The forward may return one
tensor or any tuple, list, dict, namedtuple or dataclass of them; checks work leaf by leaf.

The modules: ``results`` (what an audit returns), ``context`` (what a check is handed),
``outputs`` (a forward's tensor leaves, ``OUTPUT_KINDS``), ``naming`` (paths in messages),
``module_checks``, ``forward_checks`` and ``skip_wiring`` (the checks), ``runner`` (``audit``,
``GENERIC_CHECKS``), ``cli_support`` (``--input-shape``).
"""

from harness.core.audits.cli_support import parse_shape
from harness.core.audits.context import (
    BUILD_SEED,
    OTHER_SEED,
    AuditContext,
    Check,
    CheckTable,
    ModelFailure,
    NotApplicable,
)
from harness.core.audits.forward_checks import (
    check_batch_independence,
    check_determinism,
    check_gradient_coverage,
    check_output_contract,
)
from harness.core.audits.module_checks import (
    check_device_transfer,
    check_mode_propagation,
    check_registration,
    check_state_dict_roundtrip,
)
from harness.core.audits.outputs import OUTPUT_KINDS, SCORE_KEYS, Outputs
from harness.core.audits.results import FAIL, NOT_APPLICABLE, PASS, AuditReport, Finding, matches_declaration
from harness.core.audits.runner import GENERIC_CHECKS, audit, declared_results, resolve_checks
from harness.core.audits.skip_wiring import check_skip_wiring
from harness.core.loading import load_attr, load_factory  # importing MODULE:ATTR, as the audit verb does

__all__ = [
    "BUILD_SEED",
    "FAIL",
    "GENERIC_CHECKS",
    "NOT_APPLICABLE",
    "OTHER_SEED",
    "OUTPUT_KINDS",
    "PASS",
    "SCORE_KEYS",
    "AuditContext",
    "AuditReport",
    "Check",
    "CheckTable",
    "Finding",
    "ModelFailure",
    "NotApplicable",
    "Outputs",
    "audit",
    "check_batch_independence",
    "check_determinism",
    "check_device_transfer",
    "check_gradient_coverage",
    "check_mode_propagation",
    "check_output_contract",
    "check_registration",
    "check_skip_wiring",
    "check_state_dict_roundtrip",
    "declared_results",
    "load_attr",
    "load_factory",
    "matches_declaration",
    "parse_shape",
    "resolve_checks",
]
