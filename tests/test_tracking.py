"""Signed tracking links and the open pixel, on mail really sent by the worker (invariants 4, 5).

Every link is taken from a message received by the test SMTP server and followed
through the Flask app: a click redirects only to the URL that was in that message;
anything forged, truncated, tampered or borrowed from another message is a 404 that
records nothing. The pixel always answers with a GIF that must not be cached.
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import replace
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from sqlmodel import select

from nurture.event_stream import drain, stream_key
from nurture.models import Event
from nurture.signing import sign, verify
from nurture.tracking import TRAP_URL, verify_click, verify_open

from conftest import BASE_URL, LINK_URLS, SECRET_KEY, free_port, received_by, send_due, start_links, write_campaigns

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
GIF_MAGIC = (b"GIF87a", b"GIF89a")
HTML_LINKS = (LINK_URLS[0], LINK_URLS[2])  # <a href> links; LINK_URLS[1] is a bare URL in the text

HREF = re.compile(r"""<a\b[^>]*?\bhref\s*=\s*(["'])(.*?)\1""", re.I | re.S)
IMG = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*(["'])(.*?)\1""", re.I | re.S)
TEXT_URL = re.compile(r"""https?://[^\s<>()"']+""")


def bodies(parsed) -> tuple[str, str]:
    return parsed.get_body(("html",)).get_content(), parsed.get_body(("plain",)).get_content()


def hrefs(html: str) -> list[str]:
    return [html_lib.unescape(m.group(2)) for m in HREF.finditer(html)]


def path_of(url: str) -> str:
    """The request path (with query) of an absolute URL on our base."""
    assert url.startswith(BASE_URL + "/"), url
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def target_of(click: str) -> str:
    return parse_qs(urlsplit(click).query)["u"][0]


def token_of(click: str) -> str:
    return urlsplit(click).path.rsplit("/", 1)[1]


def assert_no_cache(response) -> None:
    cache = response.headers.get("Cache-Control", "")
    assert "no-store" in cache and "no-cache" in cache and "max-age=0" in cache, cache
    assert response.headers.get("Pragma") == "no-cache"
    assert response.headers.get("Expires") == "0"


def stored_after_drain(n) -> list[Event]:
    with n.session() as s:
        while drain(s, n.redis, stream_key(n.settings.queue_name), "test-drainer"):
            pass
    return n.all(select(Event).order_by(Event.id))


@pytest.fixture
def mail(nurture, event_stream):
    """olga (ru) and john (en) each received the first ``links`` message; the clock a minute later."""
    n = nurture
    first = start_links(n)
    n.advance(minutes=1)
    got = received_by(n)
    return n, first, {email: got[email][0] for email in first}


def test_every_link_of_a_sent_message_is_a_signed_click_link_and_unsubscribe_is_left_alone(mail):
    n, first, received = mail
    for email, parsed in received.items():
        message = first[email]
        html, text = bodies(parsed)
        unsubscribe = re.search(r"<(https://[^>]+)>", parsed["List-Unsubscribe"])[1]
        links = hrefs(html)
        web_links = [u for u in links if u.startswith(("http://", "https://"))]
        clicks = [u for u in web_links if u.startswith(f"{BASE_URL}/c/")]
        # every http(s) link is a click link, except the unsubscribe link, which is unchanged
        assert sorted(set(web_links) - set(clicks)) == [unsubscribe], web_links
        assert unsubscribe.startswith(f"{BASE_URL}/u/") and verify(SECRET_KEY, "unsubscribe", token_of(unsubscribe)) == message.id
        assert "mailto:" in html  # mailto links stay as they are
        # each click link signs this message and its own URL; the links plus the hidden trap
        assert {target_of(c) for c in clicks} == {*HTML_LINKS, TRAP_URL}
        for click in clicks:
            assert verify_click(SECRET_KEY, token_of(click), target_of(click)) == message.id
        for url in HTML_LINKS:  # no original link survives outside a signed click link
            assert f'"{html_lib.escape(url)}"' not in html and f'"{url}"' not in html
        # the text part: the same links rewritten, the unsubscribe link unchanged
        text_urls = TEXT_URL.findall(text)
        text_clicks = [u for u in text_urls if u.startswith(f"{BASE_URL}/c/")]
        assert {target_of(c) for c in text_clicks} == set(LINK_URLS)
        assert set(text_urls) - set(text_clicks) == {unsubscribe}
        for click in text_clicks:
            assert verify_click(SECRET_KEY, token_of(click), target_of(click)) == message.id
        # one open pixel, signed for this message
        pixels = [html_lib.unescape(m.group(2)) for m in IMG.finditer(html) if "/o/" in m.group(2)]
        assert len(pixels) == 1 and re.fullmatch(rf"{re.escape(BASE_URL)}/o/[0-9a-f-]+\.gif", pixels[0]), pixels
        assert verify_open(SECRET_KEY, pixels[0].rsplit("/", 1)[1].removesuffix(".gif")) == message.id


def test_call_to_action_of_a_shipped_template_is_tracked(nurture, event_stream):
    """The shipped templates link to pages on NURTURE_BASE_URL; those clicks must be counted too."""
    n = nurture
    n.create_users()
    cta = """\
key: case-first
name: Case first
timezone: Europe/Moscow
steps:
  - key: case
    kind: case_study
    day: 0
    template: case_study
"""
    n.load_campaigns(write_campaigns(n.tmp_path / "campaigns", cta))
    n.import_csv("email,first_name,timezone,language\njohn@example.net,John,Europe/Moscow,en\n")
    n.enroll("case-first")
    send_due(n)
    html, text = bodies(received_by(n)["john@example.net"][0])
    button = [u for u in hrefs(html) if "cases" in u]
    assert button, "the case study has a 'Read the full case' button"
    assert all(u.startswith(f"{BASE_URL}/c/") for u in button), f"call-to-action link not tracked: {button}"


def test_following_a_click_link_from_the_received_mail_redirects_to_the_original_url(mail, web):
    n, first, received = mail
    app = web()
    for email, parsed in received.items():
        html, text = bodies(parsed)
        for click in [u for u in hrefs(html) + TEXT_URL.findall(text) if u.startswith(f"{BASE_URL}/c/")]:
            if target_of(click) == TRAP_URL:
                continue
            response = app.get(path_of(click), headers={"User-Agent": BROWSER})
            assert response.status_code == 302, (click, response.status_code)
            assert response.headers["Location"] == target_of(click)
            assert target_of(click) in LINK_URLS
            assert_no_cache(response)
    events = stored_after_drain(n)
    assert len(events) == 2 * (2 + 3)  # two messages, two links in the HTML and three in the text
    assert {e.kind for e in events} == {"click"}
    assert {(e.message_id, e.data["url"]) for e in events} == {(m.id, u) for m in first.values() for u in LINK_URLS}


def _forgeries(click: str, other_message_id: int, open_token: str, unsubscribe_token: str) -> dict[str, str]:
    token, url = token_of(click), target_of(click)
    number, digest = token.split("-")
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    q = quote(url, safe="")
    return {
        "open redirect to evil.example": f"/c/{token}?u={quote('https://evil.example/', safe='')}",
        "open redirect, same host other path": f"/c/{token}?u={quote('https://example.org/evil', safe='')}",
        "URL with an extra parameter": f"/c/{token}?u={quote(url + '&next=https://evil.example/', safe='')}",
        "no u parameter": f"/c/{token}",
        "empty u parameter": f"/c/{token}?u=",
        "truncated token": f"/c/{token[:-1]}?u={q}",
        "token without digest": f"/c/{number}?u={q}",
        "tampered digest": f"/c/{number}-{flipped}?u={q}",
        "digest of this message, id of another": f"/c/{other_message_id}-{digest}?u={q}",
        "the open token as a click token": f"/c/{open_token}?u={q}",
        "the unsubscribe token as a click token": f"/c/{unsubscribe_token}?u={q}",
        "token signed with another secret": f"/c/{sign('another-secret-key-0123456789abcdef', f'click:{url}', int(number))}?u={q}",
    }


def test_forged_or_tampered_click_links_answer_404_and_record_nothing(mail, web, redis_conn, event_stream):
    n, first, received = mail
    app = web()
    john, olga = first["john@example.net"], first["olga@example.com"]
    html, _ = bodies(received["john@example.net"])
    click = next(u for u in hrefs(html) if u.startswith(f"{BASE_URL}/c/") and target_of(u) == LINK_URLS[0])
    pixel = next(m.group(2) for m in IMG.finditer(html) if "/o/" in m.group(2))
    open_token = pixel.rsplit("/", 1)[1].removesuffix(".gif")
    unsubscribe_token = sign(SECRET_KEY, "unsubscribe", john.id)
    for what, path in _forgeries(click, olga.id, open_token, unsubscribe_token).items():
        for method in (app.get, app.head):
            response = method(path, headers={"User-Agent": BROWSER})
            assert response.status_code == 404, (what, path, response.status_code)
            assert "Location" not in response.headers, what
    assert redis_conn.xlen(event_stream) == 0
    assert stored_after_drain(n) == []


def test_open_pixel_is_a_gif_that_must_not_be_cached_and_is_recorded(mail, web):
    n, first, received = mail
    app = web()
    html, _ = bodies(received["olga@example.com"])
    pixel = next(html_lib.unescape(m.group(2)) for m in IMG.finditer(html) if "/o/" in m.group(2))
    response = app.get(path_of(pixel), headers={"User-Agent": BROWSER})
    assert response.status_code == 200 and response.mimetype == "image/gif"
    assert response.data.startswith(GIF_MAGIC)
    assert_no_cache(response)
    events = stored_after_drain(n)
    assert [(e.kind, e.message_id, e.lead_id, e.is_machine) for e in events] == [
        ("open", first["olga@example.com"].id, first["olga@example.com"].lead_id, False)]


@pytest.mark.parametrize("token", ["1-000000000000000000000000", "garbage", "1", "99999-" + "a" * 24,
                                   "1-" + "g" * 24, "-" * 25])
def test_pixel_with_a_bad_token_still_returns_a_gif_but_records_nothing(mail, web, redis_conn, event_stream, token):
    n, first, _ = mail
    app = web()
    response = app.get(f"/o/{token}.gif", headers={"User-Agent": BROWSER})
    assert response.status_code == 200 and response.mimetype == "image/gif"
    assert response.data.startswith(GIF_MAGIC)
    assert_no_cache(response)
    assert redis_conn.xlen(event_stream) == 0
    assert stored_after_drain(n) == []


def test_pixel_of_another_message_signed_with_its_digest_records_nothing(mail, web, redis_conn, event_stream):
    n, first, received = mail
    app = web()
    html, _ = bodies(received["olga@example.com"])
    pixel = next(m.group(2) for m in IMG.finditer(html) if "/o/" in m.group(2))
    digest = pixel.rsplit("/", 1)[1].removesuffix(".gif").split("-")[1]
    response = app.get(f"/o/{first['john@example.net'].id}-{digest}.gif", headers={"User-Agent": BROWSER})
    assert response.status_code == 200 and response.mimetype == "image/gif"
    assert redis_conn.xlen(event_stream) == 0
    assert stored_after_drain(n) == []


def _redis_down(app) -> None:
    from redis import Redis

    app.app.extensions["nurture_redis"].close()
    app.app.extensions["nurture_redis"] = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)


def test_pixel_still_loads_when_redis_and_the_database_both_fail(mail, web, event_stream):
    n, first, received = mail
    app = web()
    _redis_down(app)
    broken = n.tmp_path / "no-such-dir" / "nurture.db"
    app.app.config["NURTURE"] = replace(app.app.config["NURTURE"], database_url=f"sqlite:///{broken}")
    html, _ = bodies(received["olga@example.com"])
    pixel = next(html_lib.unescape(m.group(2)) for m in IMG.finditer(html) if "/o/" in m.group(2))
    response = app.get(path_of(pixel), headers={"User-Agent": BROWSER})
    assert response.status_code == 200 and response.mimetype == "image/gif"
    assert response.data.startswith(GIF_MAGIC)
    assert_no_cache(response)
    assert not broken.parent.exists()


def test_a_click_still_redirects_when_redis_and_the_database_both_fail(mail, web, event_stream):
    n, first, received = mail
    app = web()
    _redis_down(app)
    app.app.config["NURTURE"] = replace(app.app.config["NURTURE"],
                                        database_url=f"sqlite:///{n.tmp_path / 'no-such-dir' / 'nurture.db'}")
    html, _ = bodies(received["john@example.net"])
    click = next(u for u in hrefs(html) if u.startswith(f"{BASE_URL}/c/") and target_of(u) == LINK_URLS[0])
    response = app.get(path_of(click), headers={"User-Agent": BROWSER})
    assert response.status_code == 302, "the reader must reach the page even when the click cannot be recorded"
    assert response.headers["Location"] == LINK_URLS[0]


def test_when_only_redis_is_down_opens_and_clicks_go_straight_to_the_database(mail, web, redis_conn, event_stream):
    n, first, received = mail
    app = web()
    _redis_down(app)
    html, _ = bodies(received["john@example.net"])
    pixel = next(html_lib.unescape(m.group(2)) for m in IMG.finditer(html) if "/o/" in m.group(2))
    click = next(u for u in hrefs(html) if u.startswith(f"{BASE_URL}/c/") and target_of(u) == LINK_URLS[2])
    assert app.get(path_of(pixel), headers={"User-Agent": BROWSER}).status_code == 200
    response = app.get(path_of(click), headers={"User-Agent": BROWSER})
    assert response.status_code == 302 and response.headers["Location"] == LINK_URLS[2]
    events = n.all(select(Event).order_by(Event.id))  # no drain: already there
    john = first["john@example.net"]
    assert [(e.kind, e.message_id, e.is_machine) for e in events] == [("open", john.id, False), ("click", john.id, False)]
    assert events[1].data["url"] == LINK_URLS[2]
    assert all(e.source_id for e in events) and len({e.source_id for e in events}) == 2
    assert redis_conn.xlen(event_stream) == 0
