"""What an audit returns: each check's result (pass / fail / n/a), the findings that name
where a contract is broken, and the plain-text table a terminal shows.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.core.text import counted

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "n/a"


@dataclass(frozen=True)
class Finding:
    """One broken contract: which check, a message naming where, and every path concerned.

    ``paths`` lists in full the module paths, tensors or blocks the (compact) message
    names, e.g. ``res_block2[0].0.weight``; empty when the finding concerns the whole model.
    """

    check: str
    message: str
    paths: tuple[str, ...] = ()


@dataclass
class AuditReport:
    """Result of ``audit``: ``results`` maps each check run to pass / fail / n/a.

    ``notes`` holds the reason for every "n/a", and what a check could not cover
    when it still ran (e.g. a block whose output no module observes).
    """

    results: dict[str, str]
    findings: list[Finding] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return FAIL not in self.results.values()

    @property
    def failed(self) -> list[str]:
        return [check for check, result in self.results.items() if result == FAIL]

    def as_json(self) -> dict[str, object]:
        """``{"ok", "results": {check: result}, "findings": [{"check", "message", "paths"}], "notes"}``.

        Plain dicts, lists, strings and a bool: ``json.dumps`` takes it as it is.
        """
        return {
            "ok": self.ok,
            "results": dict(self.results),
            "findings": [{"check": f.check, "message": f.message, "paths": list(f.paths)}
                         for f in self.findings],
            "notes": dict(self.notes),
        }

    def messages(self, check: str) -> list[str]:
        return [f.message for f in self.findings if f.check == check]

    def render(self, title: str = "", declared: Mapping[str, str] | None = None) -> str:
        """A plain-text table, then every finding and note, wrapped to be read in a terminal.

        ``declared`` (check -> expected result) adds a column comparing each result
        with a variant's declaration.
        """
        width = max(len(c) for c in (*self.results, "check"))
        header = f"{'check':<{width}}  result"
        if declared is not None:
            header += "  declared"
        header += "  detail"
        lines = [title] if title else []
        lines += [header, "-" * len(header)]
        for check, result in self.results.items():
            row = f"{check:<{width}}  {result:<6}"
            if declared is not None:
                expected = declared.get(check, PASS)
                mark = "" if matches_declaration(result, expected) else " !"
                row += f"  {expected + mark:<8}"
            count = len(self.messages(check))
            detail = counted(count, "finding") if count else self.notes.get(check, "")
            lines.append(f"{row}  {_shorten(detail)}")
        if self.findings:
            lines += ["", "findings:"]
            lines += [_wrap(f"[{f.check}] {f.message}") for f in self.findings]
        notes = {c: n for c, n in self.notes.items() if self.results.get(c) != NOT_APPLICABLE}
        na = {c: n for c, n in self.notes.items() if self.results.get(c) == NOT_APPLICABLE}
        if na:
            lines += ["", "not applicable:"] + [_wrap(f"[{c}] {n}") for c, n in na.items()]
        if notes:
            lines += ["", "notes:"] + [_wrap(f"[{c}] {n}") for c, n in notes.items()]
        return "\n".join(lines) + "\n"


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=110, initial_indent="  ", subsequent_indent="      ",
                         break_on_hyphens=False)


def _shorten(text: str) -> str:
    return textwrap.shorten(text, width=70, placeholder=" ...") if text else ""


def matches_declaration(result: str, expected: str) -> bool:
    # A declaration lists the checks expected to fail; anything else may pass or not apply.
    return (result == FAIL) == (expected == FAIL)

