"""Turn compiled email HTML into the plain-text part.

Run once per template version at load time, on HTML that still contains its
Jinja tags, so the result is itself a Jinja template rendered per lead. Links
become ``label (url)``, blocks become paragraphs, hidden preview text, styles
and MSO conditionals are dropped.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCKS = {"p", "div", "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "section"}
_SKIP = {"head", "style", "script", "title"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._hidden: list[str] = []
        self._links: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        style = (attrs.get("style") or "").replace(" ", "").lower()
        if tag in _SKIP or "display:none" in style:
            if tag not in ("br", "img"):
                self._skip_depth += 1
                self._hidden.append(tag)
            return
        if self._skip_depth:
            if tag not in ("br", "img", "meta", "link"):
                self._hidden.append(tag)
            return
        if tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in _BLOCKS:
            self.parts.append("\n\n")
        elif tag == "a":
            self._links.append(attrs.get("href"))
            self._link_start = len(self.parts)

    def handle_endtag(self, tag):
        if self._skip_depth:
            if self._hidden and self._hidden[-1] == tag:
                self._hidden.pop()
                if not self._hidden:
                    self._skip_depth = 0
            return
        if tag == "a" and self._links:
            href = self._links.pop()
            label = "".join(self.parts[self._link_start:]).strip()
            if href and not href.startswith("mailto:") and href != label:
                self.parts.append(f" ({href})" if label else href)
        elif tag in _BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self._skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    html = re.sub(r"<!--.*?-->", "", html, flags=re.S)  # MSO conditionals and comments
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"
