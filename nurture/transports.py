"""Hand messages to a mail server: the ``Transport`` protocol and SMTP.

``SmtpTransport`` keeps one connection open for a whole batch (reconnecting
when the server closes it between messages) and turns every outcome into one
of three answers: the server's acceptance text, ``TransientSendError`` (4xx,
dropped connection before DATA: try again later) or ``PermanentSendError``
(5xx: this recipient will not work). ``UnknownOutcomeError`` means the
connection broke after the message data was sent: it may have been delivered,
so it must not be sent again.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from typing import Protocol

from .config import SmtpSettings
from .errors import NurtureError, PermanentSendError, TransientSendError


class UnknownOutcomeError(NurtureError):
    """The connection broke during DATA: the server may or may not have the message."""


class Transport(Protocol):
    def send(self, sender: str, recipient: str, data: bytes) -> str: ...
    def close(self) -> None: ...


class SmtpTransport:
    """One SMTP connection reused across ``send`` calls; use as a context manager."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def __enter__(self) -> "SmtpTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        try:
            if s.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            smtp.ehlo()
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise TransientSendError(f"SMTP login refused by {s.host}:{s.port}: {exc.smtp_code} {_text(exc.smtp_error)}", exc.smtp_code) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientSendError(f"cannot connect to SMTP server {s.host}:{s.port}: {exc}") from None
        return smtp

    def send(self, sender: str, recipient: str, data: bytes) -> str:
        """Send one message; return the server's acceptance ("250 ...")."""
        for attempt in (1, 2):
            if self._smtp is None:
                self._smtp = self._connect()
            try:
                return self._transaction(self._smtp, sender, recipient, data)
            except _Reconnect:
                self._drop()
                if attempt == 2:
                    raise TransientSendError("the SMTP server closed the connection twice in a row") from None
        raise AssertionError("unreachable")

    def _transaction(self, smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> str:
        try:
            code, reply = smtp.mail(sender)
            if code != 250:
                smtp.rset()
                if code == 421:
                    raise _Reconnect()
                raise TransientSendError(f"sender refused: {code} {_text(reply)}", code)
            code, reply = smtp.rcpt(recipient)
            if code not in (250, 251):
                smtp.rset()
                error = PermanentSendError if 500 <= code < 600 else TransientSendError
                raise error(f"{code} {_text(reply)}", code)
        except (smtplib.SMTPServerDisconnected, ConnectionError, socket.timeout):
            raise _Reconnect() from None  # nothing was handed over yet: safe to retry
        try:
            code, reply = smtp.data(data)
        except (smtplib.SMTPServerDisconnected, ConnectionError, socket.timeout) as exc:
            self._drop()
            raise UnknownOutcomeError(f"connection lost during DATA: {exc}") from None
        if code != 250:
            if 500 <= code < 600:
                raise PermanentSendError(f"{code} {_text(reply)}", code, stage="data")
            raise TransientSendError(f"{code} {_text(reply)}", code)
        return f"{code} {_text(reply)}"

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._drop()


class _Reconnect(Exception):
    """Internal: the connection went away before any data was handed over."""


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
