"""Domain errors: the CLI prints these as one red line and exits 1."""


class RagsoupError(Exception):
    """A user-facing error whose message says what went wrong and how to fix it."""
