"""Read the sending mailbox over IMAP and feed every new message to the inbound pipeline.

``NURTURE_IMAP_URL`` is ``imaps://user:pass@host:993/INBOX`` (or ``imap://`` on
a trusted network). The poller searches for messages without the
``$NurtureProcessed`` keyword from the last ``SINCE_DAYS`` days (not only
unseen ones: a rep may have read the reply already), reads them without
setting ``\\Seen`` (``BODY.PEEK[]``), processes each in its own transaction and
then sets the keyword. A crash between the two only causes a re-read, which
the pipeline recognises as a duplicate. A message that makes processing fail
gets ``$NurtureFailed`` so it cannot block the mailbox.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import unquote, urlsplit

from imapclient import IMAPClient
from sqlmodel import Session

from .config import Settings
from .errors import ConfigError
from .inbound import process_raw

log = logging.getLogger(__name__)
PROCESSED = "$NurtureProcessed"
FAILED = "$NurtureFailed"
SINCE_DAYS = 30
FETCH_CHUNK = 20


@dataclass
class PollReport:
    found: int = 0
    processed: int = 0
    duplicates: int = 0
    failed: int = 0


@dataclass(frozen=True)
class ImapSettings:
    host: str
    port: int
    username: str
    password: str
    folder: str
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> "ImapSettings":
        parts = urlsplit(url)
        if parts.scheme not in ("imap", "imaps") or not parts.hostname or not parts.username:
            raise ConfigError(f"NURTURE_IMAP_URL: expected imaps://user:pass@host:993/INBOX, got {url!r}")
        return cls(parts.hostname, parts.port or (993 if parts.scheme == "imaps" else 143), unquote(parts.username),
                   unquote(parts.password or ""), unquote(parts.path.lstrip("/")) or "INBOX", parts.scheme == "imaps")


def poll(session: Session, settings: Settings, now: datetime) -> PollReport:
    if not settings.imap_url:
        raise ConfigError("NURTURE_IMAP_URL is not set: nothing to poll")
    imap = ImapSettings.from_url(settings.imap_url)
    report = PollReport()
    context = ssl.create_default_context() if imap.tls else None
    with IMAPClient(imap.host, port=imap.port, ssl=imap.tls, ssl_context=context, timeout=60) as client:
        client.login(imap.username, imap.password)
        client.select_folder(imap.folder)
        since = (now - timedelta(days=SINCE_DAYS)).date()
        uids = client.search(["NOT", "KEYWORD", PROCESSED, "NOT", "KEYWORD", FAILED, "SINCE", since])
        report.found = len(uids)
        for start in range(0, len(uids), FETCH_CHUNK):
            chunk = uids[start:start + FETCH_CHUNK]
            for uid, data in client.fetch(chunk, ["BODY.PEEK[]"]).items():
                raw = data.get(b"BODY[]") or b""
                try:
                    result = process_raw(session, settings, raw, "imap", now)
                except Exception:
                    session.rollback()
                    log.exception("inbound message uid %s could not be processed", uid)
                    client.add_flags([uid], [FAILED])
                    report.failed += 1
                    continue
                client.add_flags([uid], [PROCESSED])
                report.duplicates += result.duplicate
                report.processed += not result.duplicate
        client.logout()
    return report
