"""One exception type for every error a user can cause (bad file, bad spec, missing data, offline hub).

The CLI prints its message and exits with status 2; the app shows it with ``gr.Warning``/``gr.Error``.
"""
from __future__ import annotations


class VPError(Exception):
    """An error with a plain message meant for the person using the tool, not a stack trace."""
