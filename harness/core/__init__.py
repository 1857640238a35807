"""The generic core: knows any ``nn.Module`` and nothing of RawNet2.

Introspection, audits, weight matching, comparison, deployment forms, tolerances,
checkpoint I/O and atomic file output. Nothing here imports ``harness.rawnet2``,
``harness.report``, ``legacy`` or ``fixed`` (import-linter enforces it: ``make lint``).
"""
