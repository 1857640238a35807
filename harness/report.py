"""The reviewer report: built as plain data, then rendered.

``build_report()`` returns a JSON-ready dict; ``render_markdown`` is one rendering
of it. Later sections (audits, equivalence, checkpoints, timing) add keys to the
same dict.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import torch

from harness.introspect import describe
from harness.variants import SUBJECTS

# Short input: structure does not depend on length, and the report must start fast.
STRUCTURE_INPUT_SHAPE = (2, 1, 4000)


def build_report() -> dict:
    """The report as plain data."""
    example = torch.zeros(STRUCTURE_INPUT_SHAPE)
    variants = {}
    for name, info in SUBJECTS.items():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            structure = describe(info.factory(), example)
        variants[name] = {"description": info.description, "source": info.source, **asdict(structure)}
    return {"variants": variants}


def render_markdown(report: dict) -> str:
    lines = [
        "# RawNet2 variants side by side",
        "",
        "| variant | registered params | used params | state_dict keys "
        "| BatchNorms reached by eval | fresh forward |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, v in report["variants"].items():
        used = "n/a" if v["used_parameters"] is None else f"{v['used_parameters']:,}"
        forward = "runs" if v["forward_error"] is None else f"raises {v['forward_error']}"
        lines.append(
            f"| {name} | {v['registered_parameters']:,} | {used} | {v['state_dict_keys']} "
            f"| {v['batchnorms_reached_by_eval']}/{v['batchnorms']} | {forward} |"
        )
    return "\n".join(lines) + "\n"


def cli_report(args: argparse.Namespace) -> int:
    report = build_report()
    text = json.dumps(report, indent=2) if args.format == "json" else render_markdown(report)
    sys.stdout.write(text)
    return 0
