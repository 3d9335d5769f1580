"""Email templates: compile once per version, render per lead.

``compile_template(path)`` reads ``templates/email/<name>.<lang>.mjml`` (YAML
front matter with ``subjects``, then MJML with Jinja inside), checks it and
returns a ``CompiledSource``: the MJML compiled to HTML once, the plain-text
part derived from it, and a checksum over the file and its ``mj-include``
partials. Any error (unknown or unclosed MJML tag, Jinja syntax, a variable the
render context does not have) raises ``TemplateError`` naming the file and line:
templates are rejected when they are loaded, never first at send time.

``Renderer`` renders a stored template for one lead. It keeps the parsed Jinja
templates per content checksum for the life of the process. Jinja runs
sandboxed, with autoescape for HTML and ``StrictUndefined``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment
from mjml import mjml2html

from .errors import TemplateError
from .plaintext import html_to_text
from .refusal_context import SAMPLE as REFUSAL_SAMPLE

TEMPLATE_NAME = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_-]*)\.(?P<lang>en|ru)\.mjml$")
MAX_TEMPLATE_BYTES = 512 * 1024

# The tags MJML 4 knows; mrml accepts unknown ones silently, so we check.
MJML_TAGS = {
    "mjml", "mj-head", "mj-body", "mj-attributes", "mj-all", "mj-class", "mj-breakpoint", "mj-font",
    "mj-html-attributes", "mj-html-attribute", "mj-selector", "mj-preview", "mj-style", "mj-title",
    "mj-accordion", "mj-accordion-element", "mj-accordion-title", "mj-accordion-text", "mj-button",
    "mj-carousel", "mj-carousel-image", "mj-column", "mj-divider", "mj-group", "mj-hero", "mj-image",
    "mj-include", "mj-navbar", "mj-navbar-link", "mj-raw", "mj-section", "mj-social",
    "mj-social-element", "mj-spacer", "mj-table", "mj-text", "mj-wrapper",
}
MJML_EMPTY_TAGS = {"mj-include", "mj-all", "mj-breakpoint", "mj-font", "mj-divider", "mj-spacer",
                   "mj-image", "mj-carousel-image", "mj-class", "mj-selector"}

_html_env = SandboxedEnvironment(autoescape=True, undefined=jinja2.StrictUndefined)
_text_env = SandboxedEnvironment(autoescape=False, undefined=jinja2.StrictUndefined)


@dataclass(frozen=True)
class CompiledSource:
    name: str
    language: str
    subjects: list[str]
    mjml: str
    html: str
    text: str
    checksum: str


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str


def sample_context() -> dict:
    """A complete render context with sample values: what a template may use."""
    return {
        "lead": {"first_name": "Anna", "last_name": "Petrova", "full_name": "Anna Petrova",
                 "company": "Example Ltd", "email": "anna@example.com", "custom": {}},
        "rep": {"name": "Ivan Sidorov", "email": "ivan@example.com", "title": "Account executive", "phone": "+7 900 000-00-00"},
        "sender": {"name": "nurture", "email": "nurture@example.com"},
        "postal_address": "1 Example Street, Springfield",
        "unsubscribe_url": "https://example.com/u/token",
        "subject": "Sample subject",
        "base_url": "https://example.com",
        "site_url": "https://example.com",
        "refusal": dict(REFUSAL_SAMPLE),
    }


def template_files(directory: Path) -> dict[tuple[str, str], Path]:
    """(name, language) -> path for every template (partials start with ``_``)."""
    found = {}
    for path in sorted(directory.glob("*.mjml")):
        match = TEMPLATE_NAME.match(path.name)
        if match:
            found[(match["name"], match["lang"])] = path
    return found


def compile_template(path: Path) -> CompiledSource:
    match = TEMPLATE_NAME.match(path.name)
    if not match:
        raise TemplateError(f"{path}: name it <name>.<en|ru>.mjml")
    source = _read(path)
    subjects, mjml_source, body_line = _split_front_matter(source, path)
    subject_lines = _lines_of(source, subjects)
    return compile_source(match["name"], match["lang"], subjects, mjml_source, path, body_line, subject_lines)


def _lines_of(source: str, texts: list[str]) -> list[int]:
    """The line on which each of ``texts`` first appears, in order (1 when not found)."""
    lines, found, start = source.split("\n"), [], 0
    for text in texts:
        index = next((i for i in range(start, len(lines)) if text in lines[i]), None)
        found.append(index + 1 if index is not None else 1)
        start = index + 1 if index is not None else start
    return found


def compile_source(name: str, language: str, subjects: list[str], mjml_source: str,
                   path: Path, body_line: int = 1, subject_lines: list[int] | None = None) -> CompiledSource:
    """Check and compile one template; ``path`` names it in errors and anchors includes."""
    included: list[str] = []
    include_problems: list[TemplateError] = []

    def load_include(include_path: str) -> str:
        # Errors are kept and raised after mrml returns: an exception raised inside
        # its callback comes back as a generic "unable to load included template".
        target = (path.parent / include_path).resolve()
        try:
            if path.parent.resolve() not in target.parents:
                raise TemplateError(f"{path}: mj-include {include_path!r} points outside {path.parent}")
            text = _read(target)
            _check_structure(text, target, 1, fragment=True)
            _check_jinja(_text_env, text, target, "partial")
        except TemplateError as exc:
            include_problems.append(exc)
            return ""
        included.append(text)
        return text

    _check_structure(mjml_source, path, body_line, fragment=False)
    _check_jinja(_text_env, mjml_source, path, "body", body_line)
    for index, subject in enumerate(subjects):
        line = subject_lines[index] if subject_lines else None
        _check_jinja(_text_env, subject, path, f"subject {index + 1}", line)
    try:
        html = mjml2html(mjml_source, include_loader=load_include)
    except Exception as exc:  # mrml raises ValueError with a byte position
        if include_problems:
            raise include_problems[0] from None
        raise TemplateError(f"{path}: MJML error: {_with_line(str(exc), mjml_source, body_line)}") from None
    if include_problems:
        raise include_problems[0]
    text = html_to_text(html)
    for env, compiled, part in ((_html_env, html, "HTML"), (_text_env, text, "text part")):
        try:
            _check_jinja(env, compiled, path, part, None)
        except TemplateError as exc:
            raise TemplateError(f"{exc} (after MJML compilation: keep Jinja tags inside mj-text, "
                                "mj-button or attribute values)") from None
    checksum = hashlib.sha256("\x00".join([name, language, *subjects, mjml_source, *included]).encode()).hexdigest()
    return CompiledSource(name, language, subjects, mjml_source, html, text, checksum)


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_TEMPLATE_BYTES:
        raise TemplateError(f"{path}: {len(data)} bytes; a template may have at most {MAX_TEMPLATE_BYTES}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TemplateError(f"{path} line {line}: not UTF-8 text") from None


def _split_front_matter(source: str, path: Path) -> tuple[list[str], str, int]:
    if not source.startswith("---"):
        raise TemplateError(f"{path} line 1: start with front matter: ---, subjects: [...], ---")
    parts = source.split("\n---", 1)
    if len(parts) != 2:
        raise TemplateError(f"{path}: the front matter is not closed by a line with ---")
    head, rest = parts[0][3:], parts[1]
    body_line = head.count("\n") + 2 + (1 if rest.startswith("\n") else 0)
    try:
        meta = yaml.safe_load(head) or {}
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: front matter is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    subjects = meta.get("subjects") if isinstance(meta, dict) else None
    if not isinstance(subjects, list) or not subjects or not all(isinstance(s, str) and s.strip() for s in subjects):
        raise TemplateError(f"{path}: front matter needs subjects: a list of one or more non-empty texts")
    unknown = set(meta) - {"subjects"}
    if unknown:
        raise TemplateError(f"{path}: unknown front matter field(s): {', '.join(sorted(unknown))}")
    return [s.strip() for s in subjects], rest.lstrip("\n"), body_line


class _StructureChecker(HTMLParser):
    """Finds unknown and unbalanced mj-* tags, with their line."""

    def __init__(self, first_line: int) -> None:
        super().__init__(convert_charrefs=False)
        self._line_shift = first_line - 1
        self.stack: list[tuple[str, int]] = []
        self.problems: list[tuple[int, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag.startswith("mj") and (tag == "mjml" or tag.startswith("mj-")):
            line = self.getpos()[0] + self._line_shift
            if tag not in MJML_TAGS:
                self.problems.append((line, f"unknown MJML tag <{tag}>"))
            if tag not in MJML_EMPTY_TAGS:
                self.stack.append((tag, line))

    def handle_startendtag(self, tag, attrs):
        if tag.startswith("mj") and tag not in MJML_TAGS:
            self.problems.append((self.getpos()[0] + self._line_shift, f"unknown MJML tag <{tag}>"))

    def handle_endtag(self, tag):
        if not (tag == "mjml" or tag.startswith("mj-")) or tag in MJML_EMPTY_TAGS:
            return
        line = self.getpos()[0] + self._line_shift
        if not self.stack:
            self.problems.append((line, f"</{tag}> closes nothing"))
            return
        open_tag, open_line = self.stack[-1]
        if open_tag == tag:
            self.stack.pop()
        elif any(t == tag for t, _ in self.stack):
            self.problems.append((open_line, f"<{open_tag}> is not closed before </{tag}> on line {line}"))
            while self.stack and self.stack[-1][0] != tag:
                self.stack.pop()
            self.stack.pop()
        else:
            self.problems.append((line, f"</{tag}> does not match <{open_tag}> opened on line {open_line}"))


def _check_structure(source: str, path: Path, first_line: int, fragment: bool) -> None:
    checker = _StructureChecker(first_line)
    checker.feed(source)
    checker.close()
    problems = list(checker.problems) + [(line, f"<{tag}> is never closed") for tag, line in checker.stack]
    if not fragment and "<mjml" not in source:
        problems.append((first_line, "no <mjml> root element"))
    if problems:
        line, message = min(problems)
        raise TemplateError(f"{path} line {line}: MJML error: {message}")


def _with_line(message: str, source: str, first_line: int) -> str:
    match = re.search(r"position (\d+)", message)
    if match:
        offset = int(match.group(1))
        line = source.encode()[:offset].count(b"\n") + first_line
        return f"line {line}: {message}"
    return message


def _check_jinja(env: SandboxedEnvironment, source: str, path: Path, part: str, first_line: int | None = 1) -> None:
    """Parse and render ``source`` with the sample context; errors carry the source line.

    ``first_line`` is the file line where ``source`` starts; None when unknown
    (the error then names no line rather than a wrong one).
    """
    try:
        template = env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        where = f"{path} line {exc.lineno + first_line - 1}" if first_line else str(path)
        raise TemplateError(f"{where}: {part}: Jinja syntax error: {exc.message}") from None
    try:
        template.render(sample_context())
    except Exception as exc:  # UndefinedError, a failing filter, a sandbox refusal
        line = _template_line(exc)
        where = f"{path} line {line + first_line - 1}" if line and first_line else str(path)
        if isinstance(exc, jinja2.UndefinedError):
            message = f"unknown variable: {exc.message}"
        else:
            message = f"fails on a sample lead: {type(exc).__name__}: {exc}"
        raise TemplateError(f"{where}: {part}: {message}") from None


def _template_line(exc: BaseException) -> int | None:
    """The template line of the innermost frame Jinja attributes to the template."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class Renderer:
    """Renders stored templates; parsed Jinja templates are kept per content checksum."""

    def __init__(self) -> None:
        self._bodies: dict[str, tuple[jinja2.Template, jinja2.Template]] = {}
        self._subjects: dict[str, jinja2.Template] = {}

    def render(self, template, subject_source: str, context: dict) -> Rendered:
        """Render ``template`` (an ``EmailTemplate`` row) with ``subject_source`` for one lead."""
        key = template.checksum  # the content itself: ids and versions repeat across databases
        bodies = self._bodies.get(key)
        if bodies is None:
            bodies = self._bodies[key] = (_html_env.from_string(template.html), _text_env.from_string(template.text))
        subject_template = self._subjects.get(subject_source)
        if subject_template is None:
            subject_template = self._subjects[subject_source] = _text_env.from_string(subject_source)
        subject = " ".join(subject_template.render(context).split())
        context = {**context, "subject": subject}
        return Rendered(subject, bodies[0].render(context), bodies[1].render(context))
