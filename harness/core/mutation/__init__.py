"""Mutation testing of a model's source file: would the gate notice a change to it?

The engine is mutmut (3.8); the harness extends it where it lacks, one module per job:

- ``mutants``: the mutants of a file, named and numbered as mutmut names them, and the
  declared equivalent ones (``Equivalence``: not run, never dropped: reported with the reason);
- ``operators``: the model operators, appended to mutmut's operator table;
- ``sampling``: ``--max-mutants N``, a deterministic sample spread evenly across functions;
- ``workspace``: ``mutants/``, made only by the harness, and the staging of a model file
  that lies outside the project (a team's own repository);
- ``config``: ``MutationRun``, a run's settings, each number checked when it is made;
- ``engine``: the clean run (the selection must pass unmutated), then the mutants (function
  ones through ``mutmut_driver``, module-level ones by the harness), within a time budget;
- ``plugin``: the pytest plugin of every run (fastest tests first, the first killer, the
  clean run's tests and durations);
- ``attribution``: which contract should have caught each survivor, from the tests that
  reach its function;
- ``report``: ``mutation-report.json`` (``MUTATION_REPORT_SCHEMA``), partial while a run
  goes on, and the summary.

Nothing here knows a particular model: which tests judge a file, which mutants are
equivalent and which contracts exist come from the caller (``harness.rawnet2.mutation``).
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
