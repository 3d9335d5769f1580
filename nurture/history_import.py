"""Import past stage changes from another CRM, so probabilities can be learned from day one.

Two CSV shapes, told apart by their columns (names in English or Russian, or
mapped with ``--map``):

- one row per change: the lead (``email`` or ``external_id``), the ``stage`` it
  entered, when (``entered_at``), optionally ``deal_value``, ``lost_reason`` and
  ``note``;
- one row per opportunity, as CRMs export deals (``opportunity_id``,
  ``deal_stage``, ``engage_date``, ``close_date``, ``close_value``): expanded into
  changes: contacted when it starts (``created_at``, else the first date),
  engaged at ``engage_date``, the final stage at ``close_date``. An open
  opportunity with no date at all cannot be placed in time and is skipped.

CRM stage names map to pipeline stages by key or name, by a few common CRM names
(Prospecting, Closed Won ...), or explicitly (``stage_map``). Leads are matched by
email, then external id; a lead not known yet is created (an opportunity without
an address gets a placeholder ``@history.invalid`` one and is archived: it is
history, never mailed). Re-importing a file adds nothing twice. The leads it
creates or moves get their close probability at the end, in the same
transaction, from stage probabilities that have learned the imported history.

Same error rules as the leads import (``lead_import``, whose CSV reading this
reuses): a row that fails is rejected with its line and reason; a file that
cannot be read, or has no valid row, changes nothing.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from functools import lru_cache
from typing import Callable

import sqlalchemy as sa
from sqlmodel import Session, select

from .addresses import normalise
from .config import Settings
from .errors import ImportFileError
from .lead_import import SYNONYMS as LEAD_SYNONYMS, Reject, decode, map_columns, read_rows
from .models import Lead, StageChange
from .pipeline import PipelineConfig, stored_pipeline
from .probability import Scorer, rescore
from .sequences import suggest

SYNONYMS = {
    "email": LEAD_SYNONYMS["email"],
    "external_id": ["external_id", "external id", "opportunity_id", "opportunity id", "deal_id", "deal id", "lead id",
                    "crm id", "id", "идентификатор", "id сделки"],
    "stage": ["stage", "deal_stage", "deal stage", "stage name", "этап", "стадия", "этап сделки"],
    "entered_at": ["entered_at", "entered at", "changed_at", "changed at", "stage date", "date", "дата", "дата этапа"],
    "created_at": ["created_at", "created at", "created", "create date", "created date", "дата создания"],
    "engaged_at": ["engaged_at", "engaged at", "engage_date", "engage date", "дата вовлечения"],
    "closed_at": ["closed_at", "closed at", "close_date", "close date", "дата закрытия"],
    "deal_value": ["deal_value", "deal value", "value", "amount", "close_value", "close value", "сумма", "сумма сделки"],
    "lost_reason": ["lost_reason", "lost reason", "loss reason", "reason lost", "причина отказа", "причина проигрыша"],
    "note": ["note", "notes", "comment", "комментарий"],
    "company": ["company", "account", "company name", "компания"],
}
FIELD_LIMITS = {"email": 320, "external_id": 200, "stage": 100, "entered_at": 40, "created_at": 40, "engaged_at": 40,
                "closed_at": 40, "deal_value": 40, "lost_reason": 100, "note": 500, "company": 300}
# Stage names of common CRMs (Salesforce, HubSpot, Maven's sample) -> the default pipeline's keys.
COMMON_CRM_STAGES = {
    "prospecting": "contacted", "prospect": "contacted", "attempted to contact": "contacted",
    "engaging": "engaged", "connected": "engaged",
    "qualification": "qualified", "needs analysis": "qualified", "appointment scheduled": "qualified",
    "proposal/price quote": "proposal", "presentation scheduled": "proposal", "value proposition": "proposal",
    "negotiation/review": "negotiation", "contract sent": "negotiation", "decision maker bought-in": "negotiation",
    "closed won": "won", "closedwon": "won", "closed lost": "lost", "closedlost": "lost",
}
PLACEHOLDER_DOMAIN = "history.invalid"
_DMY = re.compile(r"^(\d{1,2})\.(\d{1,2})\.(\d{4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")
CHUNK = 1000


@dataclass
class HistoryReport:
    rows: int = 0
    shape: str = ""  # "changes" or "opportunities"
    changes: int = 0
    duplicates: int = 0  # already imported
    leads_created: int = 0
    leads_updated: int = 0  # stage set from the history
    skipped: int = 0  # open opportunities without any date
    rejected: list[Reject] = field(default_factory=list)


@dataclass
class _Change:
    stage: str
    at: datetime
    deal_value: float | None = None
    lost_reason: str = ""
    note: str = ""


@dataclass
class _LeadHistory:
    email: str | None
    external_id: str | None
    company: str = ""
    changes: list[_Change] = field(default_factory=list)


def parse_moment(text: str, what: str) -> datetime:
    """ISO 8601 (date or date and time; naive means UTC) or DD.MM.YYYY [HH:MM]."""
    m = _DMY.match(text)
    try:
        if m:
            day, month, year, hour, minute, second = (int(g) if g else 0 for g in m.groups())
            return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=timezone.utc)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a date: use YYYY-MM-DD (or DD.MM.YYYY), optionally with a time") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def parse_value(text: str) -> float | None:
    if not text:
        return None
    cleaned = text.replace("\u00a0", "").replace(" ", "")
    if "," in cleaned and "." not in cleaned:
        cleaned = cleaned.replace(",", ".")
    try:
        value = float(cleaned.replace(",", ""))
    except ValueError:
        raise ValueError(f"deal_value {text!r} is not a number") from None
    if value < 0 or value != value or value == float("inf"):
        raise ValueError(f"deal_value {text!r} must be a positive number")
    return value


class _StageNames:
    """CRM stage name -> pipeline stage key."""

    def __init__(self, config: PipelineConfig, stage_map: dict[str, str]) -> None:
        self.config = config
        unknown = {target for target in stage_map.values() if target not in config.keys}
        if unknown:
            target = sorted(unknown)[0]
            raise ImportFileError(f"--stage-map: {target!r} is not a pipeline stage{suggest(target, config.keys)}; "
                                  f"the stages are: {', '.join(config.keys)}")
        self.names = {key: key for key in config.keys}
        self.names.update({s.name.strip().lower(): s.key for s in config.stages})
        self.names.update({name: key for name, key in COMMON_CRM_STAGES.items() if key in config.keys})
        self.names.update({name.strip().lower(): key for name, key in stage_map.items()})

    def key(self, name: str) -> str:
        found = self.names.get(" ".join(name.lower().split()))
        if found is None:
            raise ValueError(f"stage {name!r} is not a pipeline stage{suggest(name.lower(), self.config.keys)}; "
                             f"map it with --stage-map '{name}=STAGE' (stages: {', '.join(self.config.keys)})")
        return found

    def lost_reason(self, text: str, stage: str) -> str:
        if not text:
            return ""
        if not self.config.stage(stage).lost:
            raise ValueError(f"lost_reason {text!r} on stage {stage}, which is not a lost stage")
        wanted = text.strip().lower()
        for reason in self.config.lost_reasons:
            if wanted in (reason.key, reason.label.en.lower(), reason.label.ru.lower()):
                return reason.key
        keys = self.config.lost_reason_keys
        raise ValueError(f"lost_reason {text!r} is not one of {', '.join(keys)}{suggest(wanted, keys)}")


def _values(fields: list[str], columns: dict[int, str], header: list[str],
            normalise_email: Callable[[str], str]) -> dict[str, str]:
    if len(fields) > len(header):
        raise ValueError(f"{len(fields)} fields but the header has {len(header)} (a stray delimiter?)")
    values = {}
    for index, target in columns.items():
        if target.startswith("custom:"):
            continue
        value = fields[index].strip() if index < len(fields) else ""
        if len(value) > FIELD_LIMITS[target]:
            raise ValueError(f"{target} is {len(value)} characters; at most {FIELD_LIMITS[target]}")
        values[target] = value
    if values.get("email"):
        values["email"] = normalise_email(values["email"])
        if "@" not in values["email"]:
            raise ValueError(f"email {values['email']!r} is not an address")
    if not values.get("email") and not values.get("external_id"):
        raise ValueError("neither email nor external_id is given: the row names no lead")
    if not values.get("stage"):
        raise ValueError("stage is empty")
    return values


def _change_row(values: dict[str, str], names: _StageNames, now: datetime) -> list[_Change]:
    stage = names.key(values["stage"])
    at = parse_moment(values.get("entered_at", ""), "entered_at") if values.get("entered_at") else None
    if at is None:
        raise ValueError("entered_at is empty")
    if at > now:
        raise ValueError(f"entered_at {values['entered_at']!r} is in the future")
    return [_Change(stage, at, parse_value(values.get("deal_value", "")), names.lost_reason(values.get("lost_reason", ""), stage),
                    values.get("note", ""))]


def _opportunity_row(values: dict[str, str], names: _StageNames, now: datetime) -> list[_Change]:
    config = names.config
    final = names.key(values["stage"])
    moments = {}
    for column in ("created_at", "engaged_at", "closed_at"):
        if values.get(column):
            moments[column] = parse_moment(values[column], column)
            if moments[column] > now:
                raise ValueError(f"{column} {values[column]!r} is in the future")
    if not moments:
        return []  # open, never dated: nothing to place in time
    start = moments.get("created_at") or min(moments.values())
    if moments.get("engaged_at") and moments["engaged_at"] < start:
        raise ValueError(f"engaged_at {values['engaged_at']!r} is before created_at {values['created_at']!r}")
    earlier = [moment for column, moment in moments.items() if column != "closed_at"]
    if "closed_at" in moments and earlier and moments["closed_at"] < max(earlier):
        raise ValueError(f"closed_at {values['closed_at']!r} is before the opportunity's other dates")
    final_stage = config.stage(final)
    if final_stage.terminal and "closed_at" not in moments:
        raise ValueError(f"a {final} opportunity needs a close date")
    entry, engaged = config.rules.first_send, config.rules.engagement
    changes = [_Change(entry, start)]
    reached_engaged = final_stage.terminal or not config.is_forward(final, engaged)
    if "engaged_at" in moments and final != entry and reached_engaged and engaged != final:
        changes.append(_Change(engaged, moments["engaged_at"]))
    if final != changes[-1].stage:
        at = moments.get("closed_at") if final_stage.terminal else max(moments.values())
        value = parse_value(values.get("deal_value", ""))
        changes.append(_Change(final, at, value if final_stage.won else None,
                               names.lost_reason(values.get("lost_reason", ""), final), values.get("note", "")))
    return changes


def import_history(session: Session, data: bytes, now: datetime, mapping: dict[str, str] | None = None,
                   stage_map: dict[str, str] | None = None, encoding: str = "utf-8",
                   progress: Callable[[int, int], None] | None = None,
                   config: PipelineConfig | None = None, *, settings: Settings) -> HistoryReport:
    """Check every row, then write all changes in one transaction; see the module docstring."""
    config = config or stored_pipeline(session)
    header, rows = read_rows(decode(data, encoding))
    columns = map_columns(header, mapping, SYNONYMS)
    present = set(columns.values())
    if "stage" not in present:
        raise ImportFileError(f"line 1: no stage column among {', '.join(repr(h) for h in header)}; "
                              "map one with --map 'Column=stage'")
    if not present & {"email", "external_id"}:
        raise ImportFileError("line 1: no email or external id column to name the lead; map one with --map 'Column=email'")
    if "entered_at" in present:
        shape, expand = "changes", _change_row
    elif present & {"engaged_at", "closed_at", "created_at"}:
        shape, expand = "opportunities", _opportunity_row
    else:
        raise ImportFileError("line 1: no date column: give 'entered_at' (one row per stage change) or "
                              "'engage_date' and 'close_date' (one row per opportunity); map with --map 'Column=entered_at'")
    names = _StageNames(config, stage_map or {})
    report = HistoryReport(rows=len(rows), shape=shape)
    histories: dict[str, _LeadHistory] = {}
    normalise_email = lru_cache(maxsize=None)(normalise)  # a lead's address repeats on each of its changes
    for line, fields in rows:
        try:
            values = _values(fields, columns, header, normalise_email)
            changes = expand(values, names, now)
        except ValueError as exc:
            report.rejected.append(Reject(line, str(exc), dict(zip(header, fields))))
            continue
        if not changes:
            report.skipped += 1
            continue
        key = values.get("email") or f"id:{values['external_id']}"
        history = histories.setdefault(key, _LeadHistory(values.get("email") or None, values.get("external_id") or None))
        history.company = history.company or values.get("company", "")
        history.changes += changes
    if histories:
        moved = _write(session, config, list(histories.values()), now, report, progress)
        _score(session, settings, moved, now, len(histories), progress)
        session.commit()
    return report


def _placeholder_email(external_id: str) -> str:
    """A unique address that can never receive mail, for a lead known only by its CRM id."""
    local = re.sub(r"[^a-z0-9_-]+", "-", external_id.lower()).strip("-")[:60] or "lead"
    digest = hashlib.blake2b(external_id.encode(), digest_size=4).hexdigest()
    return f"{local}-{digest}@{PLACEHOLDER_DOMAIN}"


def _find_leads(session: Session, part: list[_LeadHistory]) -> dict[int, Lead]:
    emails = [h.email for h in part if h.email]
    ids = [h.external_id for h in part if h.external_id and not h.email]
    by_email = {lead.email: lead for lead in session.exec(select(Lead).where(Lead.email.in_(emails)))} if emails else {}
    by_id = {lead.external_id: lead for lead in session.exec(select(Lead).where(Lead.external_id.in_(ids)))} if ids else {}
    found = {}
    for index, history in enumerate(part):
        lead = by_email.get(history.email) if history.email else by_id.get(history.external_id)
        if lead is not None:
            found[index] = lead
    return found


def _write(session: Session, config: PipelineConfig, histories: list[_LeadHistory], now: datetime,
           report: HistoryReport, progress: Callable[[int, int], None] | None) -> list[int]:
    """Create the missing leads, add the changes, move the leads; return the ids of the leads created or moved.

    Progress counts each history, then each lead to score (``_score``): at most one per history.
    """
    moved: list[int] = []
    for start in range(0, len(histories), CHUNK):
        part = histories[start:start + CHUNK]
        found = _find_leads(session, part)
        new_rows = []
        for index, history in enumerate(part):
            if index not in found:
                history.changes.sort(key=lambda c: c.at)
                last = history.changes[-1]
                new_rows.append({"email": history.email or _placeholder_email(history.external_id),
                                 "external_id": history.external_id, "company": history.company, "first_name": "",
                                 "last_name": "", "source": "history import", "consent": "",
                                 "status": "active" if history.email else "archived",
                                 "stage": last.stage, "stage_changed_at": last.at, "stage_source": "import",
                                 "lost_reason": last.lost_reason, "deal_value": last.deal_value, "score": 0.0,
                                 "probability": 0.0, "probability_why": [], "custom": {}, "created_at": now, "updated_at": now})
        if new_rows:
            lead_table = Lead.__table__  # Core: the ORM bulk path splits rows whose None columns differ
            inserted = session.connection().execute(
                lead_table.insert().returning(lead_table.c.id, sort_by_parameter_order=True), new_rows).scalars().all()
            report.leads_created += len(inserted)
            moved += inserted
            created = iter(inserted)
            lead_ids = {index: (found[index].id if index in found else next(created)) for index in range(len(part))}
        else:
            lead_ids = {index: found[index].id for index in range(len(part))}
        known = set(session.execute(sa.select(StageChange.lead_id, StageChange.to_stage, StageChange.changed_at)
                                    .where(StageChange.lead_id.in_(list(lead_ids.values())))).all())
        rows = []
        for index, history in enumerate(part):
            lead_id = lead_ids[index]
            history.changes.sort(key=lambda c: c.at)
            previous = None
            for change in history.changes:
                if (lead_id, change.stage, change.at) in known:
                    report.duplicates += 1
                else:
                    known.add((lead_id, change.stage, change.at))
                    rows.append({"lead_id": lead_id, "from_stage": previous, "to_stage": change.stage,
                                 "changed_at": change.at, "reason": "import", "note": change.note,
                                 "lost_reason": change.lost_reason, "deal_value": change.deal_value})
                previous = change.stage
            lead = found.get(index)
            last = history.changes[-1]
            if lead is not None and (lead.stage_changed_at is None or last.at > lead.stage_changed_at):
                lead.stage, lead.stage_changed_at, lead.stage_source = last.stage, last.at, "import"
                lead.lost_reason = last.lost_reason
                if last.deal_value is not None:
                    lead.deal_value = last.deal_value
                lead.updated_at = now
                session.add(lead)
                moved.append(lead.id)
                report.leads_updated += 1
        if rows:
            session.connection().execute(StageChange.__table__.insert(), rows)
            report.changes += len(rows)
        session.flush()
        if progress:
            progress(min(start + CHUNK, len(histories)), 2 * len(histories))
    return moved


def _score(session: Session, settings: Settings, lead_ids: list[int], now: datetime, written: int,
           progress: Callable[[int, int], None] | None) -> None:
    """Rescore these leads in chunks; the stage probabilities are loaded after the writes, so they learn the history."""
    scorer = Scorer.load(session, settings)
    total = written + len(lead_ids)
    if progress:
        progress(written, total)
    for start in range(0, len(lead_ids), CHUNK):
        rescore(session, settings, lead_ids[start:start + CHUNK], now, scorer=scorer)
        if progress:
            progress(written + min(start + CHUNK, len(lead_ids)), total)
