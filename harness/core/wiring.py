"""The ``skip_wiring`` check's names under a short path: the check itself lives with the other
audits in ``harness.core.audits.skip_wiring``.
"""

from harness.core.audits.skip_wiring import NO_RESIDUALS, check_skip_wiring, wiring_problems

__all__ = ["NO_RESIDUALS", "check_skip_wiring", "wiring_problems"]
