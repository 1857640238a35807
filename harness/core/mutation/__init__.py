"""Mutation testing of a model's source file: would the gate notice a change to it?

mutmut (3.8) is the engine; the harness extends it, one module per job: ``mutants``,
``operators``, ``sampling``, ``workspace``, ``config``, ``engine`` (with ``mutmut_driver``),
``plugin``, ``attribution`` and ``report``. Entry points: ``MutationRun`` (a run's settings),
``run_mutation`` and ``build_report`` / ``render_summary``. Nothing here knows a particular
model: the tests, equivalents and contracts come from the caller (``harness.rawnet2.mutation``).
Each module's job: docs/mutation.md, "The modules".
"""

from harness.core.mutation.attribution import Contract, attribute
from harness.core.mutation.config import TIMEOUT_CONSTANT_S, TIMEOUT_FACTOR, MutationRun
from harness.core.mutation.engine import BUDGET_SPENT, NOT_SAMPLED, RECORDS, check_clean, run_mutation
from harness.core.mutation.mutants import (
    MODULE_LEVEL,
    TOOL,
    TOOL_SPEC,
    Equivalence,
    Mutant,
    enumerate_mutants,
    equivalence_of,
    operator_table,
    read_source,
    relative_path,
    tool_version,
)
from harness.core.mutation.report import (
    DETECTED,
    MUTATION_REPORT_SCHEMA,
    REPORT_VERSION,
    STATUSES,
    ReportWriter,
    build_report,
    file_section,
    render_summary,
    summarize,
)
from harness.core.mutation.sampling import sample_evenly
from harness.core.mutation.workspace import (
    CONFIG_FILES,
    MARKER,
    PLUGIN,
    WORKSPACE,
    StagedFile,
    prepare_workspace,
    project_entries,
    stage_outside_file,
)

__all__ = [
    "BUDGET_SPENT", "CONFIG_FILES", "DETECTED", "MARKER", "MODULE_LEVEL", "MUTATION_REPORT_SCHEMA",
    "NOT_SAMPLED", "PLUGIN", "RECORDS", "REPORT_VERSION", "STATUSES", "TIMEOUT_CONSTANT_S", "TIMEOUT_FACTOR",
    "TOOL", "TOOL_SPEC", "WORKSPACE", "Contract", "Equivalence", "Mutant", "MutationRun", "ReportWriter",
    "StagedFile", "attribute", "build_report", "check_clean", "enumerate_mutants", "equivalence_of",
    "file_section", "operator_table", "prepare_workspace", "project_entries", "read_source", "relative_path",
    "render_summary", "run_mutation", "sample_evenly", "stage_outside_file", "summarize", "tool_version",
]
