"""Machine or human? Opens and clicks on really sent mail, judged when the stream is drained.

Machine events are stored (with their reasons) but never count as engagement: the
stats report them apart, and only a human click exits a sequence that stops on click.
"""

from __future__ import annotations

import html as html_lib
import json
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlmodel import select

from nurture.models import Event, Message
from nurture.periodic import Periodic
from nurture.stats import step_figures
from nurture.tracking import TRAP_URL

from conftest import LINK_URLS, free_port, links_sequence, received_by, start_links

BROWSER = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15"
OUTLOOK = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.0.0"
GMAIL_PROXY = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
SCANNERS = [
    "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
    "python-requests/2.31.0",
    "curl/8.5.0",
    "Mozilla/5.0 (compatible; Mimecast URL Protect)",
    "Go-http-client/1.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
]


class Mail:
    """The tracking paths of one received message, and hits on them at chosen moments."""

    def __init__(self, n, web, message: Message, parsed) -> None:
        self.n, self.message = n, message
        self.app = web()
        html = parsed.get_body(("html",)).get_content()
        self.pixel = self._path(re.search(r'src="(https://nurture\.example\.com/o/[^"]+)"', html)[1])
        text = parsed.get_body(("plain",)).get_content()
        self.links = {}  # original URL -> click path; from the HTML links and the text part's links
        for url in re.findall(r'href="(https://nurture\.example\.com/c/[^"]+)"', html) + \
                re.findall(r"https://nurture\.example\.com/c/[^\s()]+", text):
            path = self._path(url)
            self.links[parse_qs(urlsplit(path).query)["u"][0]] = path

    @staticmethod
    def _path(url: str) -> str:
        parts = urlsplit(html_lib.unescape(url))
        return parts.path + "?" + parts.query if parts.query else parts.path

    def hit(self, path: str, after: float, ua: str | None = BROWSER, method: str = "GET") -> int:
        """A request ``after`` seconds after the message was sent."""
        self.app.at(self.message.sent_at + timedelta(seconds=after))
        # ua=None: no User-Agent header at all (the test client would otherwise send "Werkzeug/x.y")
        response = self.app.open(path, method=method, headers={} if ua is None else {"User-Agent": ua},
                                 environ_overrides={"HTTP_USER_AGENT": ""} if ua is None else {})
        assert response.status_code in (200, 204, 302), response.status_code
        return response.status_code

    def open(self, after: float, **kwargs) -> int:
        return self.hit(self.pixel, after, **kwargs)

    def click(self, url: str, after: float, **kwargs) -> int:
        return self.hit(self.links[url], after, **kwargs)


def drain(n) -> list[Event]:
    with n.session() as session:
        Periodic(n.settings, n.redis).run(session)
    return n.all(select(Event).order_by(Event.occurred_at, Event.id))


@pytest.fixture
def john(nurture, web, event_stream):
    n = nurture
    first = start_links(n)
    return Mail(n, web, first["john@example.net"], received_by(n)["john@example.net"][0])


def judged(events) -> list[tuple[str, bool]]:
    return [(e.kind, e.is_machine) for e in events]


def test_a_browser_open_and_click_a_minute_after_sending_are_human(john):
    john.open(60)
    assert john.click(LINK_URLS[0], 75) == 302
    events = drain(john.n)
    assert judged(events) == [("open", False), ("click", False)]
    assert all(e.data["reasons"] == [] and e.data["user_agent"] == BROWSER for e in events)


def test_head_requests_are_machine(john):
    john.open(60, method="HEAD")
    john.click(LINK_URLS[0], 60, method="HEAD")
    events = drain(john.n)
    assert judged(events) == [("open", True), ("click", True)]
    assert all(e.data["reasons"] == ["HEAD request"] for e in events)


def test_requests_without_a_user_agent_are_machine(john):
    john.open(60, ua=None)
    john.click(LINK_URLS[2], 61, ua="")
    events = drain(john.n)
    assert judged(events) == [("open", True), ("click", True)]
    assert all("no User-Agent" in e.data["reasons"][0] for e in events)


@pytest.mark.parametrize("agent", SCANNERS)
def test_scanner_and_http_library_user_agents_are_machine(john, agent):
    john.open(3600, ua=agent)
    john.click(LINK_URLS[0], 3600, ua=agent)
    events = drain(john.n)
    assert judged(events) == [("open", True), ("click", True)]
    assert all("bot or scanner" in e.data["reasons"][0] for e in events)


def test_apple_mail_privacy_protection_open_is_machine_but_gmail_proxy_is_human(john):
    john.open(600, ua="Mozilla/5.0")
    john.open(3600, ua=GMAIL_PROXY)
    events = drain(john.n)
    assert judged(events) == [("open", True), ("open", False)]
    assert "Apple Mail" in events[0].data["reasons"][0]


def test_an_open_within_two_seconds_of_sending_is_machine(john):
    john.open(1.5, ua=OUTLOOK)
    john.open(2.5, ua=OUTLOOK)
    events = drain(john.n)
    assert judged(events) == [("open", True), ("open", False)]


def test_a_click_within_ten_seconds_of_sending_is_machine(john):
    john.click(LINK_URLS[0], 9, ua=OUTLOOK)
    john.click(LINK_URLS[0], 70, ua=OUTLOOK)
    events = drain(john.n)
    assert judged(events) == [("click", True), ("click", False)]
    assert "after sending" in events[0].data["reasons"][0]


def test_a_click_on_the_hidden_trap_link_flags_the_other_clicks_of_the_message(john):
    assert john.click(TRAP_URL, 120, ua=OUTLOOK) == 204  # nowhere to go
    john.click(LINK_URLS[0], 121, ua=OUTLOOK)
    john.click(LINK_URLS[2], 180, ua=OUTLOOK)
    events = drain(john.n)
    assert judged(events) == [("click", True), ("click", True), ("click", True)]
    assert events[0].data["url"] == TRAP_URL


def test_a_scanner_following_every_link_in_document_order_is_machine_for_every_click(john):
    """The trap link is the last link of the body, so a scanner that walks the links in order
    clicks it last: the clicks just before it, in the same sweep, are the scanner's too."""
    john.click(LINK_URLS[0], 120.0, ua=OUTLOOK)
    john.click(LINK_URLS[2], 120.3, ua=OUTLOOK)
    john.click(TRAP_URL, 120.6, ua=OUTLOOK)
    events = drain(john.n)
    assert judged(events) == [("click", True)] * 3, [e.data["reasons"] for e in events]


def test_two_links_clicked_quickly_are_human_but_three_different_links_within_five_seconds_are_machine(john):
    john.click(LINK_URLS[0], 300, ua=OUTLOOK)
    john.click(LINK_URLS[2], 301, ua=OUTLOOK)
    john.click(LINK_URLS[0], 302, ua=OUTLOOK)  # the same link again: still two different links
    assert judged(drain(john.n)) == [("click", False)] * 3
    john.click(LINK_URLS[0], 7200.0, ua=BROWSER)
    john.click(LINK_URLS[1], 7201.0, ua=BROWSER)
    john.click(LINK_URLS[2], 7202.0, ua=BROWSER)
    events = drain(john.n)[3:]
    assert [e.data["url"] for e in events] == list(LINK_URLS)
    assert judged(events) == [("click", True)] * 3, [e.data["reasons"] for e in events]


def test_stats_count_human_and_machine_opens_and_clicks_apart(nurture, web, event_stream):
    n = nurture
    first = start_links(n)
    got = received_by(n)
    olga = Mail(n, web, first["olga@example.com"], got["olga@example.com"][0])
    john = Mail(n, web, first["john@example.net"], got["john@example.net"][0])
    olga.open(600, ua="Mozilla/5.0")        # Apple MPP: machine
    olga.click(LINK_URLS[0], 5, ua=OUTLOOK)  # too fast: machine
    john.open(1200, ua=OUTLOOK)              # human
    john.open(1300, ua=OUTLOOK)              # human again: still one opened message
    john.click(LINK_URLS[2], 1320, ua=OUTLOOK)  # human
    drain(n)
    with n.session() as session:
        rows = [f.as_dict() for f in step_figures(session, "links")]
    assert len(rows) == 1
    row = rows[0]
    assert (row["sequence"], row["step"], row["sent"]) == ("links", "hello", 2)
    assert (row["human_opens"], row["machine_opens"], row["human_clicks"], row["machine_clicks"]) == (1, 1, 1, 1)
    assert row["open_rate"] == 0.5 and row["click_rate"] == 0.5
    # the command line gives the same figures as JSON
    proc = n.cli("stats", "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    document = json.loads(proc.stdout)
    rows = document if isinstance(document, list) else document.get("steps", document)
    step = next(r for r in rows if r["sequence"] == "links" and r["step"] == "hello")
    assert (step["human_opens"], step["machine_opens"], step["human_clicks"], step["machine_clicks"]) == (1, 1, 1, 1)


# --- exit on click -------------------------------------------------------------------------------

@pytest.fixture
def clicky(nurture, web, event_stream):
    """john in a sequence that stops on a click, its first message sent, the follow-up queued."""
    n = nurture
    first = start_links(n, csv="email,first_name,timezone\njohn@example.net,John,Europe/Moscow\n",
                        sequences=(links_sequence(click=True),))
    mail = Mail(n, web, first["john@example.net"], received_by(n)["john@example.net"][0])
    return n, mail


def test_a_human_click_exits_a_sequence_that_stops_on_click(clicky):
    n, mail = clicky
    mail.click(LINK_URLS[0], 3600)
    drain(n)
    (enrollment,) = n.enrollments()
    assert (enrollment.status, enrollment.exit_reason, enrollment.next_run_at) == ("exited", "clicked a link", None)
    n.at(n.now + timedelta(days=30))
    n.tick_and_work()
    assert len(n.smtp.messages) == 1  # nothing after the first message


def test_a_machine_click_does_not_exit_a_sequence_that_stops_on_click(clicky):
    n, mail = clicky
    mail.click(LINK_URLS[0], 3600, ua=SCANNERS[0])
    mail.click(LINK_URLS[2], 4, ua=OUTLOOK)
    mail.click(TRAP_URL, 3601, ua=OUTLOOK)
    events = drain(n)
    assert all(e.is_machine for e in events) and len(events) == 3
    (enrollment,) = n.enrollments()
    assert enrollment.status == "active"


def test_a_human_click_stored_directly_while_redis_is_down_still_exits_the_sequence(clicky):
    from redis import Redis

    n, mail = clicky
    mail.app.app.extensions["nurture_redis"].close()
    mail.app.app.extensions["nurture_redis"] = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    mail.click(LINK_URLS[0], 3600)
    assert [(e.kind, e.is_machine) for e in n.all(select(Event))] == [("click", False)]
    (enrollment,) = n.enrollments()
    assert enrollment.status == "exited", "a click written straight to the database skipped the exit-on-click rule"
