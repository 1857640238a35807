"""The two replacements proposed by the fix guide, kept verbatim (defects included)."""
