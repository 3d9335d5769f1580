"""The demo's SMTP server: accepts every message and stores it as an .eml file.

Built on aiosmtpd. ``read_caught(directory)`` parses the stored files for the
``/caught`` pages and the demo's terminal table.
"""

from __future__ import annotations

import email
import email.policy
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.controller import Controller


class _StoreHandler:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.counter = itertools.count(1)

    async def handle_DATA(self, server, session, envelope):
        name = f"{time.time_ns()}-{next(self.counter):06d}.eml"
        (self.directory / (name + ".tmp")).write_bytes(envelope.original_content or envelope.content)
        (self.directory / (name + ".tmp")).rename(self.directory / name)  # readers never see half a file
        return "250 OK caught"


def start_catcher(directory: Path, port: int) -> Controller:
    directory.mkdir(parents=True, exist_ok=True)
    controller = Controller(_StoreHandler(directory), hostname="127.0.0.1", port=port)
    controller.start()
    return controller


@dataclass(frozen=True)
class CaughtMail:
    name: str
    to: str
    subject: str
    date: str
    message_id: str
    text: str
    html: str


def parse_caught(path: Path) -> CaughtMail:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    return CaughtMail(path.name, str(message["To"]), str(message["Subject"]), str(message["Date"]),
                      str(message["Message-ID"]), text.get_content() if text else "", html.get_content() if html else "")


def caught_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.eml"), reverse=True)
