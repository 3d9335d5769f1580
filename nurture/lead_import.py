"""Import leads from a CSV file: read, check every row, then write all at once.

Accepts comma, semicolon or tab delimiters and UTF-8 with or without a BOM
(Excel's exports); ``encoding`` reads other encodings on request. Headers are
mapped to lead fields by name, in English and Russian (``Email``, ``E-mail``,
``Почта``, ``Имя``, ``Компания`` ...) or explicitly (``{"Column": "email"}``);
other columns are kept as custom fields. Addresses are checked and normalised
by email-validator. Rows with the same address are merged (later non-empty
values win) and a re-import updates existing leads instead of duplicating them.

A row that fails gets a ``Reject`` with its line number and reason; the others
are imported. A file that cannot be read (encoding, broken quoting, no email
column) or that has no valid row changes nothing.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlmodel import Session, select

from .addresses import normalise
from .config import Settings
from .errors import ImportFileError
from .models import Lead, LeadTag, User
from .probability import Scorer, rescore
from .send_window import zone

FIELD_LIMITS = {"email": 320, "first_name": 200, "last_name": 200, "company": 300, "timezone": 64,
                "language": 8, "owner": 320, "source": 100, "external_id": 200, "consent": 200, "tags": 1000}
CUSTOM_VALUE_LIMIT = 2000
MAX_COLUMNS = 200
SYNONYMS = {
    "email": ["email", "e-mail", "email address", "e-mail address", "mail", "почта", "эл. почта", "электронная почта", "e-mail адрес", "емейл"],
    "first_name": ["first_name", "first name", "firstname", "given name", "имя"],
    "last_name": ["last_name", "last name", "lastname", "surname", "family name", "фамилия"],
    "company": ["company", "company name", "organization", "organisation", "account", "компания", "организация"],
    "timezone": ["timezone", "time zone", "tz", "часовой пояс"],
    "language": ["language", "lang", "locale", "язык"],
    "owner": ["owner", "owner email", "rep", "sales rep", "ответственный", "менеджер"],
    "tags": ["tags", "tag", "labels", "теги", "метки"],
    "source": ["source", "lead source", "источник"],
    "external_id": ["external_id", "external id", "crm id", "id"],
    "consent": ["consent", "согласие"],
}
LEAD_FIELDS = tuple(SYNONYMS)
_CYRILLIC = re.compile(r"[\u0400-\u04FF]")


@dataclass
class Reject:
    line: int
    reason: str
    row: dict[str, str]


@dataclass
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    merged: int = 0
    rejected: list[Reject] = field(default_factory=list)


def _normalise_header(name: str) -> str:
    return " ".join(name.replace("_", " ").strip().lower().split())


def map_headers(headers: list[str], mapping: dict[str, str] | None = None) -> dict[int, str]:
    """Column index -> lead field, or ``custom:<header>`` for the rest."""
    result = map_columns(headers, mapping, SYNONYMS)
    if "email" not in result.values():
        raise ImportFileError(f"line 1: no email column among {', '.join(repr(h) for h in headers)}; "
                              "map one with --map 'Column=email'")
    return result


def map_columns(headers: list[str], mapping: dict[str, str] | None, synonyms: dict[str, list[str]]) -> dict[int, str]:
    """Column index -> field (named in ``synonyms`` or by ``mapping``), or ``custom:<header>`` for the rest."""
    fields = tuple(synonyms)
    mapping = {_normalise_header(k): v for k, v in (mapping or {}).items()}
    unknown_targets = set(mapping.values()) - set(fields)
    if unknown_targets:
        raise ImportFileError(f"--map: unknown field(s) {', '.join(sorted(unknown_targets))}; known: {', '.join(fields)}")
    lookup = {_normalise_header(s): f for f, names in synonyms.items() for s in names}
    result: dict[int, str] = {}
    seen: dict[str, str] = {}
    for index, header in enumerate(headers):
        key = _normalise_header(header)
        if not key:
            raise ImportFileError(f"line 1: column {index + 1} has no header")
        target = mapping.get(key) or lookup.get(key) or f"custom:{header.strip()}"
        if target in seen:
            raise ImportFileError(f"line 1: columns {seen[target]!r} and {header!r} both map to {target.removeprefix('custom:')}")
        seen[target] = header
        result[index] = target
    for source in mapping:
        if source not in {_normalise_header(h) for h in headers}:
            raise ImportFileError(f"--map: the file has no column {source!r}")
    return result


def _line_of(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n") + 1


def decode(data: bytes, encoding: str = "utf-8") -> str:
    if encoding.lower().replace("-", "") in ("utf8", "utf8sig"):
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = _line_of(data, exc.start)
            hint = ""
            try:
                if _CYRILLIC.search(data.decode("cp1251")):
                    hint = "; it looks like Windows-1251: save it as UTF-8 or pass --encoding cp1251"
            except UnicodeDecodeError:
                pass
            raise ImportFileError(f"line {line}: not UTF-8 (byte 0x{data[exc.start]:02x}){hint}") from None
    try:
        return data.decode(encoding)
    except LookupError:
        raise ImportFileError(f"unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"line {_line_of(data, exc.start)}: not {encoding}") from None


def read_rows(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) rows; raises ``ImportFileError`` on broken CSV."""
    first_line = text.split("\n", 1)[0]
    delimiter = max((";", ",", "\t"), key=first_line.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    csv.field_size_limit(16 * 1024 * 1024)
    rows: list[tuple[int, list[str]]] = []
    line = 0  # physical lines consumed so far: the next record starts on line + 1
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise ImportFileError("the file is empty: expected a header line")
        if len(header) > MAX_COLUMNS:
            raise ImportFileError(f"line 1: {len(header)} columns; at most {MAX_COLUMNS}")
        line = reader.line_num
        for fields in reader:
            if any(f.strip() for f in fields):
                rows.append((line + 1, fields))
            line = reader.line_num
    except csv.Error as exc:
        raise ImportFileError(f"line {line + 1}: malformed CSV: {exc} (an unclosed quote?)") from None
    return header, rows


def rejects_csv(rejected: list[Reject]) -> str:
    """The rejected rows as CSV: line, reason, then the row's own columns."""
    out = io.StringIO()
    writer = csv.writer(out)
    columns = list(rejected[0].row) if rejected else []
    writer.writerow(["line", "reason", *columns])
    for reject in rejected:
        writer.writerow([reject.line, reject.reason, *(reject.row.get(c, "") for c in columns)])
    return out.getvalue()


def _check_row(fields: list[str], columns: dict[int, str], header: list[str], owners: dict[str, int],
               default_language: str) -> tuple[dict | None, str]:
    if len(fields) > len(header):
        return None, f"{len(fields)} fields but the header has {len(header)} (a stray delimiter?)"
    values: dict = {"custom": {}}
    for index, target in columns.items():
        value = fields[index].strip() if index < len(fields) else ""
        if target.startswith("custom:"):
            if len(value) > CUSTOM_VALUE_LIMIT:
                return None, f"column {target[7:]!r} is {len(value)} characters; at most {CUSTOM_VALUE_LIMIT}"
            if value:
                values["custom"][target[7:]] = value
            continue
        if len(value) > FIELD_LIMITS[target]:
            return None, f"{target} is {len(value)} characters; at most {FIELD_LIMITS[target]}"
        values[target] = value
    if not values.get("email"):
        return None, "email is empty"
    try:
        validate_email(values["email"], check_deliverability=False, allow_smtputf8=False)
        values["email"] = normalise(values["email"])
    except EmailNotValidError as exc:
        return None, f"email {values['email']!r}: {exc}"
    if values.get("timezone"):
        try:
            zone(values["timezone"])
        except ValueError as exc:
            return None, str(exc)
    language = values.get("language", "").lower()
    if language and language not in ("en", "ru"):
        return None, f"language {values['language']!r}: use en or ru"
    if not language:
        names = " ".join(values.get(k, "") for k in ("first_name", "last_name", "company"))
        language = "ru" if _CYRILLIC.search(names) else default_language
    values["language"] = language
    owner = values.pop("owner", "").lower()
    if owner:
        if owner not in owners:
            return None, f"owner {owner!r} is not a user (add it with `nurture users create {owner}`)"
        values["owner_id"] = owners[owner]
    values["tags"] = sorted({t.strip() for t in re.split(r"[,;]", values.get("tags", "")) if t.strip()})
    return values, ""


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if key == "custom":
            into["custom"].update(value)
        elif key == "tags":
            into["tags"] = sorted(set(into["tags"]) | set(value))
        elif value:
            into[key] = value


def import_leads(session: Session, data: bytes, now: datetime, default_language: str = "en",
                 mapping: dict[str, str] | None = None, encoding: str = "utf-8",
                 progress: Callable[[int, int], None] | None = None, extra_tags: list[str] | None = None,
                 *, settings: Settings) -> ImportReport:
    """Check every row, then write the leads and score the new ones in one transaction; see the module docstring."""
    header, rows = read_rows(decode(data, encoding))
    columns = map_headers(header, mapping)
    owners = dict(session.exec(select(User.email, User.id)).all())
    report = ImportReport(rows=len(rows))
    valid: dict[str, dict] = {}
    for line, fields in rows:
        values, reason = _check_row(fields, columns, header, owners, default_language)
        if values is None:
            report.rejected.append(Reject(line, reason, dict(zip(header, fields))))
            continue
        values["tags"] = sorted(set(values["tags"]) | set(extra_tags or []))
        if values["email"] in valid:
            _merge(valid[values["email"]], values)
            report.merged += 1
        else:
            valid[values["email"]] = values
    if not valid:
        return report
    scorer = Scorer.load(session, settings)
    # loading the stage probabilities may fold new stage changes into the summaries, holding the
    # refresh lock to the end of the transaction: commit that now, not after the whole import
    session.commit()
    _write(session, list(valid.values()), now, report, progress, settings, scorer)
    session.commit()
    return report


def _write(session: Session, leads: list[dict], now: datetime, report: ImportReport,
           progress: Callable[[int, int], None] | None, settings: Settings, scorer: Scorer) -> None:
    chunk = 500
    # Every address is looked up before anything is written. Asked chunk by chunk while this
    # transaction's inserts grow the table, PostgreSQL kept the plan it had made for the repeated
    # statement when the table was small: a scan of the whole table per chunk (minutes at 100,000 leads).
    emails = [values["email"] for values in leads]
    stored = {email: lead_id for start in range(0, len(emails), chunk) for email, lead_id in session.exec(
        select(Lead.email, Lead.id).where(Lead.email.in_(emails[start:start + chunk])))}
    for start in range(0, len(leads), chunk):
        part = leads[start:start + chunk]
        found = [stored[v["email"]] for v in part if v["email"] in stored]
        existing = {lead.email: lead for lead in session.exec(select(Lead).where(Lead.id.in_(found)))} if found else {}
        new_rows, tags = [], []
        for values in part:
            lead = existing.get(values["email"])
            fields = {k: v for k, v in values.items() if k not in ("tags", "custom")}
            if lead is None:
                new_rows.append({"first_name": "", "last_name": "", "company": "", "source": "", "consent": "",
                                 "stage": "new", "status": "active", "score": 0.0, "probability": 0.0,
                                 "timezone": None, "external_id": None, "owner_id": None,
                                 **{k: v for k, v in fields.items() if v != ""},
                                 "custom": values["custom"], "created_at": now, "updated_at": now})
            else:
                for key, value in fields.items():
                    if value:
                        setattr(lead, key, value)
                lead.custom = {**(lead.custom or {}), **values["custom"]}
                lead.updated_at = now
                session.add(lead)
                tags += [(lead.id, tag) for tag in values["tags"]]
                report.updated += 1
        if new_rows:
            inserted = session.execute(sa.insert(Lead).returning(Lead.id, Lead.email), new_rows).all()
            ids = dict((email, lead_id) for lead_id, email in inserted)
            tags += [(ids[v["email"]], tag) for v in part if v["email"] in ids for tag in v["tags"]]
            rescore(session, settings, list(ids.values()), now, scorer=scorer)
            report.created += len(new_rows)
        session.flush()
        if tags:
            known = set(session.exec(select(LeadTag.lead_id, LeadTag.tag).where(
                LeadTag.lead_id.in_({lead_id for lead_id, _ in tags}))).all())
            fresh = [{"lead_id": i, "tag": t} for i, t in set(tags) if (i, t) not in known]
            if fresh:
                session.execute(sa.insert(LeadTag), fresh)
        if progress:
            progress(min(start + chunk, len(leads)), len(leads))
