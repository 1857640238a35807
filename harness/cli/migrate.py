"""``python -m harness migrate SRC DST --to TARGET``: convert a checkpoint to another layout or model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.options import MODEL_HELP, POLICIES, add_model_options, kwargs_file_read, resolve_model
from harness.core.errors import HarnessError

if TYPE_CHECKING:
    from harness.rawnet2.registry import VariantSpec


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("migrate", help="convert a checkpoint to another layout or model")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    # Layout names are validated by harness.rawnet2.checkpoints, which explains each refusal in one line.
    p.add_argument("--to", required=True, metavar="TARGET",
                   help="a declared layout (skip_modules, legacy; tuple_blocks cannot hold a checkpoint), "
                        f"or {MODEL_HELP}: the weights are matched into it by structure and proven")
    p.add_argument("--from", dest="source", default="auto", metavar="SOURCE",
                   help="what SRC is a checkpoint of: auto (default: a declared layout detected from the "
                        "keys, else the registered variant whose own state_dict has exactly its keys), a "
                        f"layout (legacy, skip_modules), or {MODEL_HELP} whose own state_dict SRC holds")
    p.add_argument("--policy", default="preserve-function", choices=POLICIES,
                   help="preserve-function (default): the result computes what the source computed; "
                        "preserve-weights: carry every weight that has a place")
    add_model_options(p, weights=False)
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing DST file, or replace a symbolic link DST (the link itself, "
                        "never what it points to); never SRC itself")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert, report, write atomically: 0 written, 2 refused (nothing written).

    TARGET is a declared layout (``convert_state_dict``), or any registered variant or
    ``MODULE:ATTR``: then the checkpoint is loaded into that model (``load_into``, the
    pairing proven) and its own state_dict is written. SOURCE (default: detected, the
    detected variant named on stderr) is a declared layout or a variant whose own
    state_dict SRC holds. DST is never a file the run reads.
    """
    from harness.core.checkpoints import read_checkpoint, save_checkpoint
    from harness.core.fileio import check_output_path
    from harness.rawnet2.checkpoints import about_file, detect_source, in_declared_layout, load_into
    from harness.rawnet2.conversion import convert_state_dict
    from harness.rawnet2.layouts import CANONICAL_LAYOUT, declared_layouts, own_shapes
    from harness.rawnet2.registry import SUBJECTS, VariantSpec

    src, dst = Path(args.src), Path(args.dst)
    to_layout = args.to in declared_layouts() or ":" not in args.to and args.to not in SUBJECTS
    target = None if to_layout else resolve_model(args.to, args.kwargs)
    named = None if args.source == "auto" else resolve_model(args.source)
    reads = [("the source checkpoint", src), *_files_read(target), *_files_read(named)]
    registry = args.registry or Path.cwd() / "pyproject.toml"  # load_project_registry's
    reads += [("the registry", Path(registry))]
    reads += [(what, Path(path)) for what, path in kwargs_file_read(args.kwargs)]
    _refuse_overwriting(dst, reads)
    # Before reading anything: DST must be a new path or a regular file (--force), never a
    # directory, device, FIFO or socket, nor a symlink without --force (the raw spelling, so
    # that a trailing separator still names a directory).
    check_output_path(args.dst, force=args.force, overwrite=False)
    state, notes = read_checkpoint(src)
    with about_file(str(src)):
        source = named
        if source is None and (target is None or target.layout is not None or
                               own_shapes(target.build().state_dict()) != own_shapes(state)):
            found = detect_source(state)
            if isinstance(found, VariantSpec):
                _refuse_overwriting(dst, _files_read(found))
                print(f"{src}: its keys are {found.name}'s own state_dict (detected; --from {found.name} "
                      "says so)", file=sys.stderr)
                source = found
        if target is None:
            layout = None if source is None else source.layout or CANONICAL_LAYOUT
            if source is not None and source.layout is None:
                state = in_declared_layout(source, state)
            converted, report = convert_state_dict(state, args.to, source=layout, policy=args.policy)
            lines = report.lines()
        else:
            model, lines = load_into(target, state, policy=args.policy, source=source)
            converted = {k: v.detach() for k, v in model.state_dict().items()}
    save_checkpoint(converted, args.dst, force=args.force)
    for note in notes:
        print(f"{src}: {note}")
    print("\n".join(lines))
    print(f"wrote {dst} ({len(converted)} keys)")
    return 0


def _files_read(variant: VariantSpec | None) -> list[tuple[str, Path]]:
    paths = [] if variant is None else variant.files_read()
    return [(f"a file {variant.name} is built from", path) for path in paths]


def _refuse_overwriting(dst: Path, reads: list[tuple[str, Path]]) -> None:
    """Refuse a DST that is any file the run reads, in any spelling (``_same_file``), even with --force."""
    for what, path in reads:
        if _same_file(path, dst):
            raise HarnessError(f"{dst}: is {what} {path}; write the migration to a new file")


def _same_file(src: Path, dst: Path) -> bool:
    """True for the same path in any spelling, through symlinks, or a hard link to it."""
    if os.path.realpath(src) == os.path.realpath(dst):
        return True
    try:
        return os.path.samefile(src, dst)
    except OSError:
        return False
