"""The one error type for bad user input (a one-line message: the problem and its fix)."""

__all__ = ["DataValidationError"]


class DataValidationError(ValueError):
    """Input data the pipeline cannot use; the message says what is wrong and how to fix it."""
