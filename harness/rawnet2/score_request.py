"""What a ``score`` run is asked to do, as plain values: the files, the model and its weights, the form
and device, and where the scores go. The command line (``harness.cli.score``) fills one in; the model
path (``harness.rawnet2.score_command``) and the cache path (``harness.rawnet2.score_cached``) read it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The int8 form changes scores (it is judged by decisions): ``auto`` never picks it.
INT8_FORM = "onnxruntime-int8"
# What ``--form`` takes (harness.rawnet2.deploy builds each; spelled here, where no torch is needed).
SCORE_FORMS = ("auto", "eager", "optimized", "onnxruntime", INT8_FORM)


@dataclass(frozen=True)
class ScoreRequest:
    files: Sequence[str]
    variant: str = "skip_modules"
    checkpoint: str | None = None
    policy: str = "preserve-function"
    kwargs: Mapping[str, object] | None = None  # the constructor arguments, parsed
    kwargs_text: str | None = None  # as given: inline JSON, or @FILE (a file the run reads)
    score: str | None = None  # a score transform overriding the variant's declared one
    score_means: str | None = None
    input_shape: str | None = None  # one clip's input without the batch axis, as given ("1,64600")
    form: str = "auto"
    device: str = "cpu"
    batch_size: int = 8
    format: str | None = None  # stdout's: table or json
    output: str | None = None  # the score log
    resume: bool = False
    force: bool = False
    cache_dir: str | None = None
    no_cache: bool = False
    registry: str | None = None  # the --registry file the variant may come from
    calibrate_on: Sequence[str] | None = None  # the int8 form's calibration files (default: bundled audio)

    @property
    def kwargs_file(self) -> str | None:
        """The ``--kwargs @FILE`` the constructor arguments were read from, else None."""
        text = self.kwargs_text
        return text[1:] if text is not None and text.startswith("@") else None
