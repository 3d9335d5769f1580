"""The weekly status review: nothing is forgotten.

``run_weekly_review`` (the scheduler runs it once a week; ``nurture review weekly``
any time, ``--now`` honoured):

The scheduler runs it on its first tick after ``NURTURE_REVIEW_AT`` each week
(Friday 16:00 in the default time zone: the end of the working week).

1. cools stale leads (``stages.cool_stale_leads``: cold, with a return date);
2. flags leads stuck in a stage: in it longer than that stage's 90th percentile
   of completed stays (``analytics.funnel.time_in_stage``), or than
   ``NURTURE_STUCK_DAYS`` while a stage has fewer than ``MIN_STAYS`` of them.
   Each stuck lead gets one ``stuck`` task for its owner per stay in a stage;
3. sends each rep who owns leads a digest (warm leads by probability, stuck
   leads, leads cooled this week, replies, leads coming back from cold next week)
   and each manager one with the team's figures. Each digest is worded in its
   reader's ``User.language`` (``rep_mail``): the payload records the language.

A week is the ISO week of ``now`` (Monday to Sunday, UTC). Running the review
again in the same week sends nothing twice: digests are recorded per user and
week, stuck tasks per stay. ``dry_run`` reports what would happen and rolls back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlmodel import Session, select

from .analytics.chain import AnalyticsError, load_chain
from .analytics.digest import manager_section
from .analytics.funnel import time_in_stage
from .assignment import transaction_lock
from .config import Settings
from .models import Event, Lead, Notification, StageChange, User
from .notifications import enqueue_after_commit, lead_summary
from .pipeline import stored_pipeline
from .probability import rescore
from .rep_mail import mail_language
from .stages import cool_stale_leads

MIN_STAYS = 10  # completed stays a stage needs before its own p90 is trusted as the limit
OPEN_LEAD_STATUSES = ("active", "replied", "paused")


@dataclass
class StuckLead:
    lead_id: int
    email: str
    owner_id: int | None
    stage: str
    days: float
    limit_days: float
    limit_from: str  # "p90 of N stays" | "NURTURE_STUCK_DAYS"


@dataclass
class ReviewReport:
    week: str
    now: datetime
    dry_run: bool
    cooled: list[dict] = field(default_factory=list)
    stuck: list[StuckLead] = field(default_factory=list)
    flagged: int = 0  # new stuck tasks
    digests: list[dict] = field(default_factory=list)  # {"to", "role", "status": "sent" | "already sent"}

    def as_dict(self) -> dict:
        data = asdict(self)
        data["now"] = self.now.isoformat()
        return data


def week_of(now: datetime) -> tuple[str, datetime]:
    """The ISO week label ("2026-W10") and its Monday 00:00 UTC."""
    moment = now.astimezone(timezone.utc)
    year, week, weekday = moment.isocalendar()
    start = (moment - timedelta(days=weekday - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return f"{year}-W{week:02d}", start


def review_moment(settings: Settings, now: datetime) -> datetime:
    """When this week's review is due: ``NURTURE_REVIEW_AT`` of the ISO week of ``now``, in the default zone."""
    weekday, hour, minute = settings.review_at
    local = now.astimezone(ZoneInfo(settings.default_timezone))
    day = local.date() - timedelta(days=local.weekday() - weekday)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=local.tzinfo).astimezone(timezone.utc)


def run_weekly_review(session: Session, settings: Settings, now: datetime, *, dry_run: bool = False) -> ReviewReport:
    week, week_start = week_of(now)
    report = ReviewReport(week=week, now=now, dry_run=dry_run)
    transaction_lock(session, "weekly-review")  # two schedulers at once: the second sees the first's records
    cooled = cool_stale_leads(session, settings, now)
    rescore(session, settings, [outcome.lead_id for outcome in cooled if outcome.moved], now)  # cold's probability now
    report.cooled = [asdict(outcome) for outcome in cooled]
    report.stuck = stuck_leads(session, settings, now)
    report.flagged = flag_stuck(session, report.stuck, now)
    since = now - timedelta(days=7)
    created: list[Notification] = []
    team: dict[str, dict] | None = None  # the managers' digest per language: the same figures for each, computed once
    for user in session.exec(select(User).where(User.active.is_(True), User.role.in_(("rep", "manager")))
                             .order_by(User.id)).all():
        language = mail_language(user.language)
        if user.role == "rep":
            payload = rep_digest(session, settings, user, report.stuck, since, now, language)
            if payload is None:
                continue  # owns no leads: nothing to review
        else:
            team = team or manager_digest(session, settings, report, since, now)
            payload = dict(team[language])
        already = session.exec(select(Notification.id).where(
            Notification.user_id == user.id, Notification.kind == "digest",
            Notification.created_at >= week_start, Notification.created_at < week_start + timedelta(days=7))).first()
        report.digests.append({"to": user.email, "role": user.role, "status": "already sent" if already else "sent"})
        if not already:
            payload.update(week=week, template=f"{user.role}_digest", language=language)
            created.append(Notification(user_id=user.id, kind="digest", reason=f"weekly review {week}", channel="email",
                                        status="pending", payload=payload, created_at=now))
    session.add_all(created)
    session.flush()
    if dry_run:
        session.rollback()
        return report
    enqueue_after_commit(session, settings, [row.id for row in created])
    session.commit()
    return report


# --- stuck leads ---------------------------------------------------------------------------------

def stage_limits(session: Session, settings: Settings) -> dict[str, tuple[float, str]]:
    """Stage -> (days a lead may stay, where that number comes from), for the open stages before won."""
    config = stored_pipeline(session)
    open_stages = [key for key in config.chain if not config.stage(key).terminal]
    try:
        measured = {t.stage: t for t in time_in_stage(session, load_chain(session)) if t.p90_days is not None}
    except AnalyticsError:  # no stages synced yet: every stage has the default limit
        measured = {}
    limits = {}
    for key in open_stages:
        times = measured.get(key)
        if times is not None and times.stays >= MIN_STAYS:
            limits[key] = (max(times.p90_days, 1.0), f"p90 of {times.stays} stays")
        else:
            limits[key] = (float(settings.stuck_days), "NURTURE_STUCK_DAYS")
    return limits


def stuck_leads(session: Session, settings: Settings, now: datetime) -> list[StuckLead]:
    stuck = []
    for stage, (limit, source) in stage_limits(session, settings).items():
        rows = session.exec(select(Lead.id, Lead.email, Lead.owner_id, Lead.stage_changed_at, Lead.created_at).where(
            Lead.stage == stage, Lead.status.in_(OPEN_LEAD_STATUSES),
            sa.func.coalesce(Lead.stage_changed_at, Lead.created_at) <= now - timedelta(days=limit),
        ).order_by(Lead.id)).all()
        for lead_id, email, owner_id, changed_at, created_at in rows:
            days = (now - (changed_at or created_at)).total_seconds() / 86400
            stuck.append(StuckLead(lead_id, email, owner_id, stage, round(days, 1), round(limit, 1), source))
    return stuck


def flag_stuck(session: Session, stuck: list[StuckLead], now: datetime) -> int:
    """One open ``stuck`` task per lead and stay in a stage; return how many were new."""
    if not stuck:
        return 0
    entered = dict(session.exec(select(Lead.id, sa.func.coalesce(Lead.stage_changed_at, Lead.created_at))
                                .where(Lead.id.in_([s.lead_id for s in stuck]))).all())
    flagged_since = {}
    for lead_id, created_at in session.exec(select(Notification.lead_id, Notification.created_at).where(
            Notification.kind == "stuck", Notification.lead_id.in_([s.lead_id for s in stuck]))).all():
        flagged_since[lead_id] = max(created_at, flagged_since.get(lead_id, created_at))
    new = [s for s in stuck if s.lead_id not in flagged_since or flagged_since[s.lead_id] < entered[s.lead_id]]
    session.add_all(Notification(
        user_id=s.owner_id, lead_id=s.lead_id, kind="stuck", channel="task", status="open", created_at=now,
        reason=f"{s.days:g} days in {s.stage} (limit {s.limit_days:g}: {s.limit_from})",
        payload={"stage": s.stage, "days": s.days, "limit_days": s.limit_days}) for s in new)
    return len(new)


# --- digests -------------------------------------------------------------------------------------

def rep_digest(session: Session, settings: Settings, rep: User, stuck: list[StuckLead], since: datetime,
               now: datetime, language: str = "en") -> dict | None:
    """What one rep should look at this week, worded in ``language``; None when the rep owns no leads."""
    owned = select(Lead.id).where(Lead.owner_id == rep.id)
    if session.exec(owned.limit(1)).first() is None:
        return None
    warm_ids = select(Notification.lead_id).where(Notification.kind == "warm_up", Notification.created_at > since,
                                                  Notification.user_id == rep.id)
    warm = session.exec(select(Lead).where(Lead.id.in_(warm_ids)).order_by(Lead.probability.desc(), Lead.id)).all()
    mine = [s for s in stuck if s.owner_id == rep.id]
    stuck_rows = {lead.id: lead for lead in session.exec(select(Lead).where(Lead.id.in_([s.lead_id for s in mine])))}

    def summary(lead: Lead) -> dict:
        return lead_summary(settings, lead, language=language)

    return {
        "warm": [summary(lead) for lead in warm],
        "stuck": [{**summary(stuck_rows[s.lead_id]), "days": s.days, "limit_days": s.limit_days} for s in mine],
        "cooled": [summary(lead) for lead in session.exec(
            select(Lead).where(Lead.owner_id == rep.id, Lead.id.in_(_cooled_since(session, since)))
            .order_by(Lead.id)).all()],
        "replies": [{**summary(lead), "at": at.isoformat()} for lead, at in session.exec(
            select(Lead, Event.occurred_at).join(Event, Event.lead_id == Lead.id).where(
                Lead.owner_id == rep.id, Event.kind == "reply", Event.occurred_at > since, Event.occurred_at <= now)
            .order_by(Event.occurred_at)).all()],
        "returning": [{**summary(lead), "returns_at": lead.returns_at.isoformat()} for lead in session.exec(
            select(Lead).where(Lead.owner_id == rep.id, Lead.returns_at.is_not(None), Lead.returns_at > now,
                               Lead.returns_at <= now + timedelta(days=7)).order_by(Lead.returns_at)).all()],
    }


def manager_digest(session: Session, settings: Settings, report: ReviewReport, since: datetime,
                   now: datetime) -> dict[str, dict]:
    """The team's week in figures, per team language. One entry per section: a new section is one more line here."""
    figures = {
        "pipeline": pipeline_counts(session),
        "week_figures": week_counts(session, since, now),
        "stuck_by_stage": dict(Counter(s.stage for s in report.stuck)),
        "cooled": len(report.cooled),
        "unassigned": session.exec(select(sa.func.count()).select_from(Lead).where(
            Lead.owner_id.is_(None), Lead.status.in_(OPEN_LEAD_STATUSES))).one(),
        "failed_notifications": session.exec(select(sa.func.count()).select_from(Notification).where(
            Notification.status == "failed", Notification.created_at > since)).one(),
    }
    # the bottleneck and the plan against actuals, worded in each language
    return {language: {**figures, "analytics": section} for language, section in manager_section(session, now).items()}


def pipeline_counts(session: Session) -> list[dict]:
    """Open leads per stage, in pipeline order."""
    config = stored_pipeline(session)
    counts = dict(session.exec(select(Lead.stage, sa.func.count()).where(Lead.status.in_(OPEN_LEAD_STATUSES))
                               .group_by(Lead.stage)).all())
    return [{"stage": key, "name": config.stage(key).name, "leads": counts.get(key, 0)} for key in config.keys]


def week_counts(session: Session, since: datetime, now: datetime) -> dict:
    def leads(column, *where) -> int:
        return session.exec(select(sa.func.count(sa.distinct(column))).where(*where)).one()

    return {
        "new_leads": leads(Lead.id, Lead.created_at > since, Lead.created_at <= now),
        "warm_leads": leads(Notification.lead_id, Notification.kind == "warm_up", Notification.created_at > since),
        "replied_leads": leads(Event.lead_id, Event.kind == "reply", Event.occurred_at > since, Event.occurred_at <= now),
        "stage_changes": leads(StageChange.id, StageChange.changed_at > since, StageChange.changed_at <= now),
    }


def _cooled_since(session: Session, since: datetime):
    cold = [stage.key for stage in stored_pipeline(session).stages if stage.cold]
    return select(StageChange.lead_id).where(StageChange.to_stage.in_(cold), StageChange.changed_at > since)
