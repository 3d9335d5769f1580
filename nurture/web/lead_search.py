"""The leads list query: filters, search and server-side paging, fast at 100,000+ leads.

No Flask here. Each filter maps to an indexed column (``stage``, ``owner_id``,
``status``; tags through ``lead_tag.tag``; sequences through
``enrollment.sequence_id``); the page is read in id order (the primary key)
with LIMIT/OFFSET, and the total is one COUNT over the same filters. The text
search is a substring match over email, names and company: it reads every row
(no trigram index in the schema), so it counts in the same scan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlmodel import Session, select

from ..db import is_postgresql
from ..models import Enrollment, Lead, LeadTag

PER_PAGE = 50
SORTS = {"newest": (Lead.id.desc(),), "probability": (Lead.probability.desc(), Lead.id.desc()),
         "email": (Lead.email,)}


@dataclass
class LeadQuery:
    q: str = ""
    stage: str = ""
    owner: str = ""  # a user id, or "none"
    status: str = ""
    sequence: str = ""  # a sequence id: leads actively enrolled in it
    tag: str = ""
    p_min: str = ""  # probability, in percent
    p_max: str = ""
    sort: str = "newest"
    page: int = 1

    @classmethod
    def from_args(cls, args) -> tuple["LeadQuery", dict[str, str]]:
        """The query from request arguments, and an error per argument that made no sense."""
        errors: dict[str, str] = {}
        query = cls(**{name: args.get(name, "").strip()[:200] for name in
                       ("q", "stage", "owner", "status", "sequence", "tag", "p_min", "p_max")})
        query.sort = args.get("sort") if args.get("sort") in SORTS else "newest"
        page = args.get("page", "1")
        query.page = int(page) if page.isdigit() and 0 < int(page) < 100000 else 1
        for name in ("p_min", "p_max"):
            value = getattr(query, name)
            if value and not (_is_number(value) and 0 <= float(value) <= 100):
                errors[name] = "a number from 0 to 100"
                setattr(query, name, "")
        for name in ("sequence",):
            if getattr(query, name) and not getattr(query, name).isdigit():
                errors[name] = "unknown sequence"
                setattr(query, name, "")
        if query.owner and query.owner != "none" and not query.owner.isdigit():
            errors["owner"] = "unknown owner"
            query.owner = ""
        return query, errors

    def args(self, page: int | None = None) -> str:
        values = {k: v for k, v in asdict(self).items() if v and k != "page"}
        if page and page > 1:
            values["page"] = page
        return urlencode(values)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _contains(column, text: str, postgresql: bool):
    """Case-insensitive substring match. PostgreSQL's lower() folds Cyrillic case; SQLite's
    LIKE folds ASCII only, so there the usual spellings (as typed, lower, upper, Capitalised) are tried."""
    if postgresql:
        return sa.func.lower(column).like(_pattern(text.lower()), escape="\\")
    return sa.or_(*(column.like(_pattern(v), escape="\\") for v in dict.fromkeys(
        (text, text.lower(), text.upper(), text.capitalize()))))


def _pattern(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def filtered(statement, query: LeadQuery, postgresql: bool = False):
    """Apply every filter of ``query`` to a ``select`` over ``Lead``."""
    if query.q:
        # One match over the four fields joined: a third of the time of four ILIKEs on PostgreSQL.
        searched = Lead.email + " " + Lead.first_name + " " + Lead.last_name + " " + Lead.company
        statement = statement.where(_contains(searched, query.q, postgresql))
    if query.stage:
        statement = statement.where(Lead.stage == query.stage)
    if query.status:
        statement = statement.where(Lead.status == query.status)
    if query.owner == "none":
        statement = statement.where(Lead.owner_id.is_(None))
    elif query.owner:
        statement = statement.where(Lead.owner_id == int(query.owner))
    if query.tag:
        statement = statement.where(Lead.id.in_(select(LeadTag.lead_id).where(LeadTag.tag == query.tag)))
    if query.sequence:
        statement = statement.where(Lead.id.in_(select(Enrollment.lead_id).where(
            Enrollment.sequence_id == int(query.sequence), Enrollment.status == "active")))
    if query.p_min:
        statement = statement.where(Lead.probability >= float(query.p_min) / 100)
    if query.p_max:
        statement = statement.where(Lead.probability <= float(query.p_max) / 100)
    return statement


def search(session: Session, query: LeadQuery, scope=lambda statement: statement) -> tuple[list[Lead], int]:
    """One page of leads and the total that match; ``scope`` narrows to what the user may see."""
    postgresql = is_postgresql(session)
    offset = (query.page - 1) * PER_PAGE
    if query.q:
        # A substring search reads every row anyway: count in the same scan (a window) instead of a second one.
        statement = filtered(scope(select(Lead, sa.func.count().over())), query, postgresql)
        rows = session.exec(statement.order_by(*SORTS[query.sort]).limit(PER_PAGE).offset(offset)).all()
        if rows or query.page == 1:
            return [lead for lead, _ in rows], rows[0][1] if rows else 0
    total = session.exec(filtered(scope(select(sa.func.count()).select_from(Lead)), query, postgresql)).one()
    statement = filtered(scope(select(Lead)), query, postgresql).order_by(*SORTS[query.sort])
    leads = session.exec(statement.limit(PER_PAGE).offset(offset)).all()
    return list(leads), total


def matching_ids(session: Session, query: LeadQuery, limit: int) -> list[int]:
    """The ids of up to ``limit`` + 1 matching leads, oldest first (one more tells "too many")."""
    statement = filtered(select(Lead.id), query, is_postgresql(session)).order_by(Lead.id).limit(limit + 1)
    return list(session.exec(statement).all())
