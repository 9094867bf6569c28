"""Errors that reach the user as one line (the CLI catches them); importable without torch."""

from __future__ import annotations


class ModalityNotFound(LookupError):
    """No installed plugin provides the requested modality."""
