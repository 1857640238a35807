"""The original RawNet2 model, kept exactly as it was found (defects included)."""
