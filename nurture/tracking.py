"""Tracking links: rewrite a rendered message's links and add the open pixel.

Pure functions. Every http(s) link in the HTML and text parts becomes
``{base}/c/{token}?u={url}`` where the token signs the message id *and* the
URL: a click can only ever redirect to a URL that was in that message (no open
redirect), and a forged or altered token or URL verifies to nothing. The
unsubscribe link, links to nurture's own endpoints and mailto links are left
alone. The open pixel is
``{base}/o/{token}.gif``. An invisible "trap" link that no human can see is
added too: a click on it can only come from a link scanner, which flags the
other clicks it makes on the same message as machine clicks.
"""

from __future__ import annotations

import html as html_lib
import re
from urllib.parse import quote

from .signing import sign, verify

_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"'\s>]+)\2""", re.IGNORECASE)
_TEXT_URL = re.compile(r"""https?://[^\s<>()"']+[^\s<>()"'.,;:!?]""")
TRAP_URL = "https://trap.invalid/"


def click_purpose(url: str) -> str:
    return f"click:{url}"


def click_url(base: str, secret: str, message_id: int, url: str) -> str:
    return f"{base}/c/{sign(secret, click_purpose(url), message_id)}?u={quote(url, safe='')}"


def open_url(base: str, secret: str, message_id: int) -> str:
    return f"{base}/o/{sign(secret, 'open', message_id)}.gif"


def verify_click(secret: str, token: str, url: str) -> int | None:
    return verify(secret, click_purpose(url), token)


def verify_open(secret: str, token: str) -> int | None:
    return verify(secret, "open", token)


def rewrite(html: str, text: str, *, base: str, secret: str, message_id: int, keep: tuple[str, ...] = ()) -> tuple[str, str]:
    """The HTML and text parts with tracked links, the pixel and the trap link.

    URLs starting with any of ``keep`` (the unsubscribe pages) are not rewritten.
    """
    base = base.rstrip("/")

    own = tuple(f"{base}/{path}/" for path in ("u", "c", "o"))

    def tracked(url: str) -> str:
        return url if url.startswith(keep + own) else click_url(base, secret, message_id, url)

    def replace_href(match: re.Match) -> str:
        url = html_lib.unescape(match.group(3))
        return f"{match.group(1)}{match.group(2)}{html_lib.escape(tracked(url))}{match.group(2)}"

    html = _HREF.sub(replace_href, html)
    extras = (f'<a href="{html_lib.escape(click_url(base, secret, message_id, TRAP_URL))}" '
              f'style="display:none;font-size:0;color:transparent" aria-hidden="true" tabindex="-1">&#8203;</a>'
              f'<img src="{open_url(base, secret, message_id)}" width="1" height="1" alt="" '
              f'style="display:block;height:1px;width:1px;border:0" />')
    index = html.lower().rfind("</body>")
    html = html[:index] + extras + html[index:] if index >= 0 else html + extras
    text = _TEXT_URL.sub(lambda m: tracked(m.group(0)), text)
    return html, text
