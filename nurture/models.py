"""The database records, as SQLModel tables (one module: no circular imports).

Times are timezone-aware UTC (``UtcDateTime``). Status and kind columns are
plain strings; their allowed values are the ``*_STATUSES`` / ``*_KINDS`` tuples
below, enforced by CHECK constraints in the schema. Rows that other rows point at (steps, templates,
messages) are never deleted, only retired, so history stays readable.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import JSON, Column, Field, SQLModel


class UtcDateTime(TypeDecorator):
    """An aware UTC datetime on both SQLite (which stores naive text) and PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def one_of(column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    """A CHECK constraint: ``column`` holds one of ``values``."""
    listed = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({listed})", name=f"{column}_allowed")


def utc_column(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable, index=index))


ROLES = ("admin", "marketer", "rep", "manager")
LEAD_STATUSES = ("active", "replied", "paused", "unsubscribed", "bounced", "complained", "archived")
SENDABLE_LEAD_STATUSES = ("active", "paused", "replied")  # a reply exits sequences, it does not bar new ones
SEQUENCE_STATUSES = ("draft", "active", "paused", "archived")
STEP_KINDS = ("first_contact", "follow_up", "case_study", "news", "special_offer", "re_offer", "rep_task")
ENROLLMENT_STATUSES = ("active", "paused", "completed", "exited")
MESSAGE_STATUSES = ("queued", "sending", "sent", "failed", "bounced", "cancelled", "skipped")
EVENT_KINDS = (
    "open", "click", "reply", "auto_reply", "bounce_hard", "bounce_soft",
    "unsubscribe", "complaint",
)
SUPPRESSION_REASONS = ("unsubscribed", "bounce_hard", "complaint", "manual")
STAGE_CHANGE_SOURCES = ("rule", "manual", "import", "api")
STEP_ANCHORS = ("enrollment", "quarter_start", "month_start", "date")
SEQUENCE_TRIGGERS = ("manual", "lost", "cold_return")
NOTIFICATION_KINDS = ("rep_task", "warm_up", "stuck", "digest")
NOTIFICATION_CHANNELS = ("task", "email", "slack", "webhook")
NOTIFICATION_STATUSES = ("open", "pending", "sent", "failed", "done")


class User(SQLModel, table=True):
    __table_args__ = (one_of("role", ROLES),)
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    name: str = Field(default="", max_length=200)
    role: str = Field(default="rep", max_length=20)
    title: str = Field(default="", max_length=200)
    phone: str = Field(default="", max_length=50)
    password_hash: str | None = Field(default=None, max_length=300)
    active: bool = True
    receives_leads: bool = True  # reps only: in the round-robin for leads without an owner
    webhook_url: str = Field(default="", max_length=500)  # Slack-compatible incoming webhook for this rep
    language: str = Field(default="en", max_length=8)  # of the emails nurture sends this user: en or ru
    created_at: datetime | None = utc_column(nullable=False)


class Stage(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=50, unique=True)
    name: str = Field(max_length=100)
    position: int = 0
    probability: float = 0.0
    is_won: bool = False
    is_lost: bool = False
    is_terminal: bool = False
    is_cold: bool = False


class Lead(SQLModel, table=True):
    __table_args__ = (one_of("status", LEAD_STATUSES),)
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    first_name: str = Field(default="", max_length=200)
    last_name: str = Field(default="", max_length=200)
    company: str = Field(default="", max_length=300)
    timezone: str | None = Field(default=None, max_length=64)
    language: str = Field(default="en", max_length=8)
    source: str = Field(default="", max_length=100)
    external_id: str | None = Field(default=None, max_length=200, index=True)
    owner_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    stage: str = Field(default="new", max_length=50, index=True)
    stage_changed_at: datetime | None = utc_column()
    stage_source: str = Field(default="rule", max_length=20)  # who set the stage last: see STAGE_CHANGE_SOURCES
    lost_reason: str = Field(default="", max_length=50)
    returns_at: datetime | None = utc_column(index=True)  # a cold or lost lead comes back then
    deal_value: float | None = None
    score: float = 0.0  # engagement score, decayed to ``probability_at``
    probability: float = Field(default=0.0, index=True)  # close probability, 0..1: warm lists sort by it
    probability_at: datetime | None = utc_column()
    probability_why: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # contributions
    status: str = Field(default="active", max_length=20, index=True)
    paused_until: datetime | None = utc_column()
    consent: str = Field(default="", max_length=200)
    custom: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime | None = utc_column(nullable=False)
    updated_at: datetime | None = utc_column(nullable=False)


class LeadTag(SQLModel, table=True):
    __tablename__ = "lead_tag"
    lead_id: int = Field(foreign_key="lead.id", primary_key=True)
    tag: str = Field(max_length=100, primary_key=True, index=True)


class EmailTemplate(SQLModel, table=True):
    """One template in one language; ``version`` grows when its source changes."""

    __tablename__ = "email_template"
    __table_args__ = (sa.UniqueConstraint("name", "language"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    language: str = Field(max_length=8)
    version: int = 1
    checksum: str = Field(max_length=64)
    subjects: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    mjml: str = Field(sa_column=Column(sa.Text, nullable=False))
    html: str = Field(sa_column=Column(sa.Text, nullable=False))  # compiled once per version
    text: str = Field(sa_column=Column(sa.Text, nullable=False))  # plain-text part, a Jinja template
    updated_at: datetime | None = utc_column(nullable=False)


class Sequence(SQLModel, table=True):
    __table_args__ = (one_of("status", SEQUENCE_STATUSES),)
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=100, unique=True)
    name: str = Field(max_length=200)
    description: str = Field(default="", sa_column=Column(sa.Text, nullable=False))
    status: str = Field(default="active", max_length=20)
    version: int = 1
    checksum: str = Field(default="", max_length=64)
    timezone: str = Field(default="UTC", max_length=64)
    send_days: str = Field(default="mon,tue,wed,thu,fri", max_length=40)
    send_start: str = Field(default="09:00", max_length=5)
    send_end: str = Field(default="18:00", max_length=5)
    throttle_per_hour: int | None = None
    exit_on_reply: bool = True
    exit_on_domain_reply: bool = False
    exit_on_click: bool = False
    trigger: str = Field(default="manual", max_length=20)  # see SEQUENCE_TRIGGERS: enrolled by hand or by a stage rule
    created_at: datetime | None = utc_column(nullable=False)
    updated_at: datetime | None = utc_column(nullable=False)


class Step(SQLModel, table=True):
    """A touch of a sequence. ``key`` is stable across edits; removed steps are retired."""

    __table_args__ = (
        one_of("kind", STEP_KINDS),
        one_of("anchor", STEP_ANCHORS),
        sa.UniqueConstraint("sequence_id", "key"),
    )
    id: int | None = Field(default=None, primary_key=True)
    sequence_id: int = Field(foreign_key="sequence.id", index=True)
    key: str = Field(max_length=100)
    position: int
    kind: str = Field(max_length=20)
    day_min: int = 0
    day_max: int = 0
    condition: str = Field(default="always", max_length=40)
    template: str = Field(default="", max_length=100)
    templates_by_reason: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # lost reason -> template
    anchor: str = Field(default="enrollment", max_length=20)  # days count from this: see STEP_ANCHORS
    anchor_business_days: int = 0  # for calendar anchors: this many business days before the anchor date
    anchor_date: date | None = None
    subjects: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # lang -> [variants]
    goal: str = Field(default="", max_length=300)
    retired: bool = False


class Enrollment(SQLModel, table=True):
    """A lead in a sequence; ``next_step_id`` fires at ``next_run_at``."""

    __table_args__ = (
        one_of("status", ENROLLMENT_STATUSES),
        sa.Index(
            "uq_enrollment_active_lead_sequence", "lead_id", "sequence_id", unique=True,
            sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"),
        ),
        sa.Index(
            "ix_enrollment_due", "next_run_at",
            sqlite_where=sa.text("status = 'active'"), postgresql_where=sa.text("status = 'active'"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    sequence_id: int = Field(foreign_key="sequence.id", index=True)
    status: str = Field(default="active", max_length=20)
    next_step_id: int | None = Field(default=None, foreign_key="step.id")
    next_run_at: datetime | None = utc_column()
    started_at: datetime | None = utc_column(nullable=False)
    finished_at: datetime | None = utc_column()
    exit_reason: str = Field(default="", max_length=200)
    context: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # e.g. lost reason, for templates


class Message(SQLModel, table=True):
    """One email (or rep task) per enrollment x step: the unique constraint is the guarantee."""

    __table_args__ = (
        one_of("status", MESSAGE_STATUSES),
        sa.UniqueConstraint("enrollment_id", "step_id", name="uq_message_enrollment_step"),
        sa.Index(
            "ix_message_available", "available_at",
            sqlite_where=sa.text("status = 'queued'"), postgresql_where=sa.text("status = 'queued'"),
        ),
    )
    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: int = Field(foreign_key="enrollment.id")
    step_id: int = Field(foreign_key="step.id")
    lead_id: int = Field(foreign_key="lead.id", index=True)
    sequence_id: int = Field(foreign_key="sequence.id", index=True)
    status: str = Field(default="queued", max_length=20, index=True)
    variant: int = 0
    subject: str = Field(default="", sa_column=Column(sa.Text, nullable=False))
    message_id: str = Field(max_length=250, unique=True)  # the Message-ID header
    attempts: int = 0
    available_at: datetime | None = utc_column()  # queued: not before; sending: lease end
    created_at: datetime | None = utc_column(nullable=False)
    sent_at: datetime | None = utc_column()
    smtp_code: int | None = None
    smtp_response: str = Field(default="", sa_column=Column(sa.Text, nullable=False))
    error: str = Field(default="", sa_column=Column(sa.Text, nullable=False))


class Event(SQLModel, table=True):
    """Something a lead (or a machine on its behalf) did; ``source_id`` dedupes redelivery."""

    __table_args__ = (one_of("kind", EVENT_KINDS),)
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    message_id: int | None = Field(default=None, foreign_key="message.id", index=True)
    kind: str = Field(max_length=20, index=True)
    is_machine: bool = False
    occurred_at: datetime | None = utc_column(nullable=False, index=True)
    source_id: str | None = Field(default=None, max_length=100, unique=True)
    data: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class InboundMail(SQLModel, table=True):
    """Every inbound message processed once: the verdict and what it matched, for "why?"."""

    __tablename__ = "inbound_mail"
    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(max_length=300, unique=True)  # its Message-ID, or a hash of the bytes
    received_at: datetime | None = utc_column(nullable=False, index=True)
    source: str = Field(max_length=20)  # imap | webhook | cli
    kind: str = Field(max_length=20)
    from_address: str = Field(default="", max_length=320)
    subject: str = Field(default="", sa_column=Column(sa.Text, nullable=False))
    lead_id: int | None = Field(default=None, foreign_key="lead.id", index=True)
    message_id: int | None = Field(default=None, foreign_key="message.id")
    matched_by: str = Field(default="", max_length=30)  # references | reply_token | sender | recipient | none
    reasons: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class StageChange(SQLModel, table=True):
    """One move of a lead between stages: recorded by rules, by hand, or imported from a CRM."""

    __tablename__ = "stage_change"
    __table_args__ = (
        one_of("reason", STAGE_CHANGE_SOURCES),
        sa.Index("ix_stage_change_lead_changed_at", "lead_id", "changed_at", "id"),  # each lead's history in order
    )
    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    from_stage: str | None = Field(default=None, max_length=50)
    to_stage: str = Field(max_length=50)
    changed_at: datetime | None = utc_column(nullable=False, index=True)
    reason: str = Field(default="rule", max_length=20)  # rule | manual | import | api
    note: str = Field(default="", max_length=500)
    by_user_id: int | None = Field(default=None, foreign_key="user.id")
    lost_reason: str = Field(default="", max_length=50)
    deal_value: float | None = None


class JourneyState(SQLModel, table=True):
    """How far the per-lead stage summaries (``analytics.journeys``) have read the stage history."""

    __tablename__ = "journey_state"
    key: str = Field(primary_key=True, max_length=50)
    through_id: int = Field(default=0, sa_type=sa.BigInteger)  # every change with an id up to this is folded in
    fingerprint: str = Field(default="", max_length=2000)  # the pipeline path and won stages they were built for
    refreshed_at: datetime | None = utc_column()


class LeadJourney(SQLModel, table=True):
    """One lead's stage history in a row: its first change, the furthest stage of the path, when it was won."""

    __tablename__ = "lead_journey"
    lead_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})  # no FK: derived, rebuilt in bulk
    first_at: datetime | None = utc_column(nullable=False)
    reached: int | None = None  # position on the pipeline's path; None: only ever off it
    won_at: datetime | None = utc_column()


class StageStay(SQLModel, table=True):
    """One lead's completed first stay in an open stage of the path, in 1/100 days."""

    __tablename__ = "stage_stay"
    lead_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})  # no FK: derived, rebuilt in bulk
    stage: str = Field(primary_key=True, max_length=50)
    hundredths: int


class TransitionTally(SQLModel, table=True):
    """How many stage changes went from ``previous`` (by time; "" for a lead's first) and the recorded
    ``from_stage`` to ``to_stage``, split by whether the lead was won in the end."""

    __tablename__ = "transition_tally"
    previous: str = Field(default="", primary_key=True, max_length=50)
    from_stage: str = Field(default="", primary_key=True, max_length=50)
    to_stage: str = Field(primary_key=True, max_length=50)
    won: bool = Field(primary_key=True)
    changes: int = Field(sa_type=sa.BigInteger)


class Suppression(SQLModel, table=True):
    __table_args__ = (one_of("reason", SUPPRESSION_REASONS),)
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    reason: str = Field(max_length=20)
    note: str = Field(default="", max_length=500)
    created_at: datetime | None = utc_column(nullable=False)


class Notification(SQLModel, table=True):
    """Something a rep should know or do: a task, a warm lead, a stuck lead, a digest; one row per channel."""

    __table_args__ = (
        one_of("kind", NOTIFICATION_KINDS), one_of("channel", NOTIFICATION_CHANNELS),
        one_of("status", NOTIFICATION_STATUSES),
    )
    id: int | None = Field(default=None, primary_key=True)
    user_id: int | None = Field(default=None, foreign_key="user.id", index=True)
    lead_id: int | None = Field(default=None, foreign_key="lead.id", index=True)
    kind: str = Field(default="rep_task", max_length=20)
    reason: str = Field(max_length=300)
    channel: str = Field(default="task", max_length=20)
    status: str = Field(default="open", max_length=20)
    payload: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    attempts: int = 0
    error: str = Field(default="", sa_column=Column(sa.Text, nullable=False))
    created_at: datetime | None = utc_column(nullable=False, index=True)
    sent_at: datetime | None = utc_column()


class Assignment(SQLModel, table=True):
    """A lead given to a rep (round-robin or by hand): the record of who owned it when."""

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    assigned_at: datetime | None = utc_column(nullable=False, index=True)
    reason: str = Field(default="round_robin", max_length=30)  # round_robin | manual | import


class Note(SQLModel, table=True):
    """A rep's note on a lead, shown in its timeline."""

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    user_id: int | None = Field(default=None, foreign_key="user.id")
    body: str = Field(sa_column=Column(sa.Text, nullable=False))
    created_at: datetime | None = utc_column(nullable=False)


class ModelFit(SQLModel, table=True):
    """A fitted close-probability model: its weights and how it scored on held-out history."""

    __tablename__ = "model_fit"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(default="engagement", max_length=30)
    fitted_at: datetime | None = utc_column(nullable=False, index=True)
    n_leads: int = 0
    n_won: int = 0
    weights: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metrics: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Plan(SQLModel, table=True):
    """A backwards plan as asked and answered, kept so reviews can compare actuals to it."""

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime | None = utc_column(nullable=False, index=True)
    by_user_id: int | None = Field(default=None, foreign_key="user.id")
    deals: int
    revenue: float | None = None
    by_date: date
    confidence: float = 0.8
    what_if: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
