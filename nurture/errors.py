"""Every exception nurture raises on purpose, in one place.

Each one carries a message written for the person who caused it (an operator,
a marketer, an API client): the boundary (CLI, web, API) shows ``str(error)``
and nothing else.
"""


class NurtureError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ConfigError(NurtureError):
    """A setting is missing, malformed or unsafe."""


class NotMigratedError(NurtureError):
    """The database schema is older than the code."""


class SequenceFileError(NurtureError):
    """A file in campaigns/ is invalid; the message names file, step and field."""


class TemplateError(NurtureError):
    """An email template does not compile (MJML) or render (Jinja)."""


class ImportFileError(NurtureError):
    """A CSV file cannot be read at all (encoding, header, no valid rows)."""


class EnrollmentError(NurtureError):
    """An enrollment request cannot be carried out (unknown sequence, bad filter)."""


class TransientSendError(NurtureError):
    """The SMTP server refused for now (4xx or a dropped connection): retry later."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class PermanentSendError(NurtureError):
    """The SMTP server refused for good (5xx).

    ``stage`` says what it refused: ``"rcpt"`` (the address: a hard bounce) or
    ``"data"`` (this message's content: the address may still be fine).
    """

    def __init__(self, message: str, code: int | None = None, stage: str = "rcpt"):
        super().__init__(message)
        self.code = code
        self.stage = stage
