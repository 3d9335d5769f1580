"""The people of ``nurture demo``: leads who open, click, reply, go on holiday, bounce
and unsubscribe, and reps who close deals.

Each mail the demo's catcher holds is answered the way a person would answer it,
over HTTP against the demo's own web app: the open pixel and a tracked link with
a browser's User-Agent, a security gateway that fetches every link (flagged as a
machine), the one-click unsubscribe, and ``POST /inbound/raw`` for replies,
out-of-office answers and a bounce. So every reaction travels the real tracking
and inbound pipeline, and the stages, probabilities and warm-up notices the demo
shows are the engine's own. Who does what is fixed per lead (a persona chosen
by its id), so runs look alike. Reps act like ``nurture leads
stage``: they qualify leads who replied and, some days later, win them or lose
them with a reason (which starts the follow-up after a refusal).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from sqlmodel import Session, select

from . import db
from .config import Settings
from .models import Lead
from .stages import move_stage
from .tracking import TRAP_URL

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
GATEWAY = "Mimecast Security Gateway/1.0"
PERSONAS = (  # by lead id: the sample file's leads get one of each
    "bounces", "unsubscribes", "on_holiday", "replies_and_wins", "replies_and_loses", "replies",
    "clicks", "clicks", "clicks", "clicks_behind_a_gateway", "opens", "opens", "opens", "opens", "opens",
    "silent", "silent", "silent", "silent", "silent",
)
REPLIES = {
    "ru": "Добрый день! Интересно, давайте созвонимся на следующей неделе. Во вторник после обеда удобно?",
    "en": "Hi, this looks relevant for us. Could we have a call next week? Tuesday afternoon works for me.",
}
_LINK = re.compile(r'href="([^"]+/c/[^"]+)"')
_PIXEL = re.compile(r'src="([^"]+/o/[^"]+\.gif)"')


def persona(lead: Lead) -> str:
    return PERSONAS[lead.id % len(PERSONAS)]


@dataclass
class CaughtMail:
    """What a person sees in one delivered message."""

    to: str
    subject: str
    message_id: str
    reply_to: str
    unsubscribe: str
    pixel: str | None
    links: list[str]

    @classmethod
    def read(cls, raw: bytes) -> "CaughtMail":
        message = BytesParser(policy=policy.default).parsebytes(raw)
        body = message.get_body(("html",))
        html = body.get_content() if body is not None else ""
        links = [url.replace("&amp;", "&") for url in _LINK.findall(html)]
        visible = [url for url in links if parse_qs(urlsplit(url).query).get("u", [""])[0] != TRAP_URL]
        pixel = _PIXEL.search(html)
        unsubscribe = re.search(r"<(https?://[^>]+)>", message.get("List-Unsubscribe", ""))
        return cls(to=parseaddr(message.get("To", ""))[1].lower(), subject=str(message.get("Subject", "")),
                   message_id=message.get("Message-ID", ""), reply_to=parseaddr(message.get("Reply-To", ""))[1],
                   unsubscribe=unsubscribe.group(1) if unsubscribe else "", pixel=pixel.group(1) if pixel else None,
                   links=visible)


@dataclass
class DemoPeople:
    """Answers new caught mail each ``step()``; ``done`` counts what everyone did."""

    settings: Settings
    catcher_dir: Path
    seen: set[str] = field(default_factory=set)
    mails_per_lead: Counter = field(default_factory=Counter)
    done: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.http = httpx.Client(timeout=10, headers={"User-Agent": BROWSER})
        self.secret = {"X-Nurture-Secret": self.settings.inbound_secret or ""}

    def step(self) -> None:
        with Session(db.engine_for(self.settings.database_url), expire_on_commit=False) as session:
            leads = {lead.email: lead for lead in session.exec(select(Lead)).all()}
        for path in sorted(self.catcher_dir.glob("*.eml")):
            if path.name in self.seen:
                continue
            self.seen.add(path.name)
            mail = CaughtMail.read(path.read_bytes())
            lead = leads.get(mail.to)
            if lead is not None:  # mail to reps (warm-up notices, digests) is for people to read
                self.mails_per_lead[lead.email] += 1
                self._answer(lead, mail, self.mails_per_lead[lead.email])
        self._reps_work()

    def summary(self) -> str:
        return "  ".join(f"{what} {count}" for what, count in sorted(self.done.items())) or "nobody has acted yet"

    # the leads
    def _answer(self, lead: Lead, mail: CaughtMail, nth: int) -> None:
        who = persona(lead)
        if who == "bounces":
            return self._inbound(self._bounce(lead, mail), "bounce")
        if who == "on_holiday" and nth == 1:
            return self._inbound(self._out_of_office(lead, mail), "out-of-office")
        if who == "silent":
            return None
        if who == "clicks_behind_a_gateway":
            for url in [mail.pixel, *mail.links]:
                self._get(url, "machine fetch", agent=GATEWAY)
        self._get(mail.pixel, "open")
        if who == "unsubscribes" and nth == 2:
            self.http.post(mail.unsubscribe, data={"List-Unsubscribe": "One-Click"})
            self.done["unsubscribe"] += 1
        elif who.startswith("clicks") or (who.startswith("replies") and nth == 1):
            self._get(mail.links[0] if mail.links else None, "click")
        elif who.startswith("replies") and nth == 2:
            self._inbound(self._reply(lead, mail), "reply")

    def _get(self, url: str | None, what: str, agent: str = BROWSER) -> None:
        if url:
            self.http.get(url, headers={"User-Agent": agent}, follow_redirects=False)
            self.done[what] += 1

    def _inbound(self, message: EmailMessage | bytes, what: str) -> None:
        raw = message if isinstance(message, bytes) else message.as_bytes()
        self.http.post(f"{self.settings.base_url.rstrip('/')}/inbound/raw", content=raw, headers=self.secret)
        self.done[what] += 1

    def _letter(self, lead: Lead, mail: CaughtMail, subject: str) -> EmailMessage:
        letter = EmailMessage(policy=policy.SMTP)
        letter["From"] = lead.email
        letter["To"] = mail.reply_to or self.settings.from_address
        letter["Subject"] = subject
        letter["Date"] = format_datetime(self.settings.clock.now())
        letter["Message-ID"] = make_msgid(domain=lead.email.rpartition("@")[2])
        letter["In-Reply-To"] = letter["References"] = mail.message_id
        return letter

    def _reply(self, lead: Lead, mail: CaughtMail) -> EmailMessage:
        letter = self._letter(lead, mail, f"Re: {mail.subject}")
        letter.set_content(f"{REPLIES.get(lead.language, REPLIES['en'])}\n\n{lead.first_name}\n")
        return letter

    def _out_of_office(self, lead: Lead, mail: CaughtMail) -> EmailMessage:
        back = self.settings.clock.now() + timedelta(days=10)
        letter = self._letter(lead, mail, f"Automatic reply: {mail.subject}")
        letter["Auto-Submitted"] = "auto-replied"
        letter.set_content(f"I am out of the office and will be back on {back:%B} {back.day}, {back.year}.\n")
        return letter

    def _bounce(self, lead: Lead, mail: CaughtMail) -> bytes:
        """A Postfix-style DSN: the recipient's server does not know the address."""
        boundary = f"bounce-{hashlib.sha256(mail.message_id.encode()).hexdigest()[:16]}"
        return (
            f"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
            f"To: {self.settings.from_address}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
            f"Date: {format_datetime(self.settings.clock.now())}\r\nMessage-ID: {make_msgid(domain='mx.example.net')}\r\n"
            f"MIME-Version: 1.0\r\nAuto-Submitted: auto-replied\r\n"
            f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
            f"I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
            f"<{lead.email}>: host mx.example.net said: 550 5.1.1 <{lead.email}>: Recipient address rejected: "
            f"User unknown in virtual mailbox table\r\n\r\n"
            f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
            f"Reporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; {lead.email}\r\n"
            f"Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\r\n\r\n"
            f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
            f"Message-ID: {mail.message_id}\r\nTo: {lead.email}\r\n\r\n--{boundary}--\r\n"
        ).encode()

    # the reps
    def _reps_work(self) -> None:
        """Qualify who replied; three days later propose; ten days later win or lose (by persona)."""
        now = self.settings.clock.now()
        with Session(db.engine_for(self.settings.database_url), expire_on_commit=False) as session:
            for lead in session.exec(select(Lead).where(Lead.stage.in_(("engaged", "qualified", "proposal")))).all():
                waited = now - (lead.stage_changed_at or now)
                who = persona(lead)
                if lead.stage == "engaged" and lead.status == "replied":
                    self._move(session, lead, "qualified", now, "replied: booked a call")
                elif lead.stage == "qualified" and waited > timedelta(days=3):
                    self._move(session, lead, "proposal", now, "proposal sent", deal_value=12000)
                elif lead.stage == "proposal" and waited > timedelta(days=10) and who == "replies_and_wins":
                    self._move(session, lead, "won", now, "signed")
                elif lead.stage == "proposal" and waited > timedelta(days=10) and who == "replies_and_loses":
                    self._move(session, lead, "lost", now, "too expensive for this year", lost_reason="price")
            session.commit()

    def _move(self, session: Session, lead: Lead, stage: str, now, note: str, **details) -> None:
        move_stage(session, lead, stage, source="manual", now=now, note=note, by_user_id=lead.owner_id, **details)
        self.done[f"rep: {stage}"] += 1
