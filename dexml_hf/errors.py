"""The package's user-facing errors: what went wrong, where (file, line, field), and the CLI exit status.

Library code raises these (they subclass ``ValueError`` so existing ``except ValueError`` keeps working); the
``dexml-hf`` entry point prints one line to stderr and exits with ``exit_code`` (a traceback only with ``--debug``).
"""

from __future__ import annotations

__all__ = ["DEXMLError", "DataError", "UsageError"]


class DEXMLError(ValueError):
    """Base of the errors a user can fix (bad data, bad option, bad model files)."""

    exit_code = 1


class DataError(DEXMLError):
    """A data, model, index or checkpoint file is missing or malformed; the message names the file (line, field)."""

    exit_code = 1


class UsageError(DEXMLError):
    """An option or a combination of options cannot work; the message names the option."""

    exit_code = 2
