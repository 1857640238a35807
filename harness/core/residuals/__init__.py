"""Residual blocks found by dataflow in a real forward, whatever the model calls them.

``dataflow`` records a forward as a graph (every op, every module call); ``blocks`` finds the
residual additions in it and the modules built like their blocks (``find_blocks``).
"""

from harness.core.residuals.blocks import Block, UnrepeatableForward, find_blocks

__all__ = ["Block", "UnrepeatableForward", "find_blocks"]
