"""ONNX Runtime sessions as the harness runs them: the one home for their options. No torch."""

from __future__ import annotations

import os


def cpu_threads() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def inference_session(onnx_bytes: bytes, *, threads: int | None = None) -> object:
    """An ``onnxruntime.InferenceSession`` on the CPU: ``threads`` intra-op threads (default: every
    core this process may use), one inter-op thread (the graph is one chain), every graph
    optimisation on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
