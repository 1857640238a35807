"""What is special to the RawNet2 family: the registry of variants and their specs, declared
checkpoint layouts, the family's block observer, the golden functional reference, the
16 kHz / 64600-sample input convention and audio scoring. Built on ``harness.core``."""
