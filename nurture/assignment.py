"""Give leads without an owner to a rep, round-robin, and record every assignment.

The next rep is the active rep (``role == "rep"``, ``active``, ``receives_leads``)
whose last round-robin assignment is the oldest (by row id, so leads assigned in
the same instant still rotate); reps never given a lead come first, in id order. Deciding from the recorded ``Assignment`` rows (not from a
counter kept elsewhere) keeps the rotation fair when reps join, leave or are
paused, and survives restarts. Concurrent assigners are serialised: SQLite
already holds the write lock for the whole transaction (``BEGIN IMMEDIATE``),
PostgreSQL takes a transaction-scoped advisory lock.
"""

from __future__ import annotations

import zlib
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, select

from .db import is_postgresql
from .models import Assignment, Lead, User


def transaction_lock(session: Session, name: str) -> None:
    """Serialise transactions that take the lock ``name`` until they end (PostgreSQL; SQLite is serial already)."""
    if is_postgresql(session):
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(name.encode())})


def next_rep(session: Session) -> User | None:
    """The rep whose turn it is, or None when no rep receives leads."""
    last = (select(Assignment.user_id, sa.func.max(Assignment.id).label("last_id"))
            .where(Assignment.reason == "round_robin").group_by(Assignment.user_id).subquery())
    query = (select(User).outerjoin(last, last.c.user_id == User.id)
             .where(User.role == "rep", User.active.is_(True), User.receives_leads.is_(True))
             .order_by(last.c.last_id.is_not(None), last.c.last_id, User.id))
    return session.exec(query).first()


def assign_round_robin(session: Session, lead: Lead, now: datetime) -> User | None:
    """The lead's owner, choosing one round-robin (recorded) when it has none; None when no rep is available.

    Does not commit: the assignment belongs to the caller's transaction.
    """
    transaction_lock(session, "assignment:round-robin")
    # Another process may have assigned it meanwhile: read the stored owner (without discarding the caller's changes).
    stored_owner = session.exec(select(Lead.owner_id).where(Lead.id == lead.id).with_for_update()).one()
    owner_id = lead.owner_id or stored_owner
    if owner_id is not None:
        lead.owner_id = owner_id
        return session.get(User, owner_id)
    rep = next_rep(session)
    if rep is None:
        return None
    lead.owner_id = rep.id
    lead.updated_at = now
    session.add(lead)
    session.add(Assignment(lead_id=lead.id, user_id=rep.id, assigned_at=now, reason="round_robin"))
    session.flush()
    return rep
