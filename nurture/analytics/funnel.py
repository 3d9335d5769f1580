"""Stage-to-stage conversion by entry cohort, drop-off and time in stage.

A lead enters the funnel when it was created, or at its first recorded stage
change when that is earlier (history imported from another CRM); its cohort is
that week (Monday) or month, in UTC. It has *reached* a stage when it was ever at that stage or further along the path
(``chain.Chain``), so ``conversion(s) = reached(next) / reached(s)``. A lead that
stopped at a stage is *dropped* there when it now sits off the path (lost, cold,
archived) and *stalled* when it is still open there.

Time in stage counts completed first stays only (from entering a stage to the
lead's first move out of it); open stays are not yet a measurement.

Everything is aggregated in the database over the per-lead summaries that
``journeys`` keeps (one row per lead, one per completed stay), never over the
raw stage changes, so a report stays quick at millions of changes; SQLite gives
the same answers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session

from ..db import is_postgresql
from ..models import Enrollment, Lead, LeadJourney, Sequence, StageStay, User
from .chain import AnalyticsError, Chain
from .journeys import refresh

COHORTS = ("week", "month")
DIMENSIONS = ("sequence", "owner", "source")
NONE_LABEL = "(none)"


@dataclass
class StageFigures:
    stage: str
    reached: int = 0
    advanced: int | None = 0  # reached the next stage (None for won: nothing follows)
    dropped: int = 0  # stopped here, now lost / cold / archived
    stalled: int = 0  # stopped here, still open here or on an earlier stage

    @property
    def conversion(self) -> float | None:
        return self.advanced / self.reached if self.reached and self.advanced is not None else None

    def as_dict(self) -> dict:
        conversion = self.conversion
        return {**asdict(self), "conversion": None if conversion is None else round(conversion, 4)}


@dataclass
class FunnelRow:
    """One cohort of one group: the figures per stage of the path (won last, with no conversion)."""

    cohort: str | None
    group: dict[str, str]
    stages: list[StageFigures]

    @property
    def leads(self) -> int:
        return self.stages[0].reached

    def figures(self, stage: str) -> StageFigures:
        return next(s for s in self.stages if s.stage == stage)

    def as_dict(self) -> dict:
        return {"cohort": self.cohort, "group": self.group, "leads": self.leads,
                "stages": [s.as_dict() for s in self.stages]}


@dataclass
class StageTime:
    group: dict[str, str]
    stage: str
    stays: int
    median_days: float | None
    p90_days: float | None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Funnel:
    stages: list[str]
    by: str | None
    group_by: tuple[str, ...]
    rows: list[FunnelRow]
    time_in_stage: list[StageTime] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"stages": self.stages, "by": self.by, "group_by": list(self.group_by),
                "rows": [r.as_dict() for r in self.rows], "time_in_stage": [t.as_dict() for t in self.time_in_stage]}

    def csv_rows(self) -> list[dict]:
        """One flat row per cohort x group x stage (for ``--csv``)."""
        times = {(tuple(sorted(t.group.items())), t.stage): t for t in self.time_in_stage}
        out = []
        for row in self.rows:
            for figures in row.stages:
                t = times.get((tuple(sorted(row.group.items())), figures.stage))
                out.append({"cohort": row.cohort or "", **row.group, **figures.as_dict(),
                            "median_days": t.median_days if t else None, "p90_days": t.p90_days if t else None})
        return out


def check_options(by: str | None, group_by: tuple[str, ...]) -> None:
    if by is not None and by not in COHORTS:
        raise AnalyticsError(f"cohort {by!r}: use one of {', '.join(COHORTS)}")
    unknown = [d for d in group_by if d not in DIMENSIONS]
    if unknown:
        raise AnalyticsError(f"cannot group by {', '.join(unknown)}: use {', '.join(DIMENSIONS)}")


def cohort_start(session: Session, column, by: str) -> sa.ColumnElement:
    """SQL: the UTC week (Monday) or month a time falls in, as ``YYYY-MM-DD`` text."""
    if is_postgresql(session):
        return sa.func.to_char(sa.func.date_trunc(by, sa.func.timezone("UTC", column)), "YYYY-MM-DD")
    if by == "week":  # the stored text is naive UTC; 'weekday 0' is the next Sunday (or the same day)
        return sa.func.date(column, "weekday 0", "-6 days")
    return sa.func.strftime("%Y-%m-01", column)


def _dimension_columns(group_by: tuple[str, ...]):
    """(label column, joins) per grouping dimension; ``joins`` take the FROM clause so far."""
    columns, joins = [], []
    for dim in group_by:
        if dim == "source":
            columns.append(sa.func.coalesce(sa.func.nullif(Lead.source, ""), NONE_LABEL).label("source"))
        elif dim == "owner":
            columns.append(sa.func.coalesce(User.email, NONE_LABEL).label("owner"))
            joins.append(lambda f: f.outerjoin(User, User.id == Lead.owner_id))
        else:
            enrolled = (sa.select(Enrollment.lead_id, Sequence.key.label("sequence_key"))
                        .join(Sequence, Sequence.id == Enrollment.sequence_id).distinct().subquery("enrolled"))
            columns.append(sa.func.coalesce(enrolled.c.sequence_key, NONE_LABEL).label("sequence"))
            joins.append(lambda f, e=enrolled: f.outerjoin(e, e.c.lead_id == Lead.id))
    return columns, joins


def funnel(session: Session, chain: Chain, by: str | None = None, group_by: tuple[str, ...] = (),
           stage_times: bool = True) -> Funnel:
    """Conversion, drop-off and time in stage, per entry cohort (``by``) and per ``group_by`` dimension.

    ``stage_times=False`` skips the time in stage (a second pass over the changes) when only
    the conversions are wanted, as for a chart.
    """
    check_options(by, group_by)
    refresh(session)
    history = sa.select(LeadJourney.lead_id, LeadJourney.first_at.label("entered_at"), LeadJourney.reached).subquery("history")
    current = chain.position(Lead.stage)
    reached = sa.case(
        (history.c.reached.is_(None), sa.func.coalesce(current, 0)),
        (current > history.c.reached, current), else_=history.c.reached).label("reached")
    state = sa.case((Lead.stage == chain.won, "won"), (current.is_not(None), "open"), else_="closed").label("state")
    columns, joins = _dimension_columns(group_by)
    if by:
        entered = sa.case((sa.or_(history.c.entered_at.is_(None), Lead.created_at < history.c.entered_at),
                           Lead.created_at), else_=history.c.entered_at)
        columns.insert(0, cohort_start(session, entered, by).label("cohort"))
    from_clause = sa.outerjoin(Lead.__table__, history, history.c.lead_id == Lead.id)
    for join in joins:
        from_clause = join(from_clause)
    query = (sa.select(*columns, reached, state, sa.func.count().label("leads")).select_from(from_clause)
             .group_by(*columns, reached, state))
    counts: dict[tuple, dict[tuple[int, str], int]] = defaultdict(dict)
    for row in session.execute(query).mappings():
        key = (row["cohort"] if by else None,) + tuple(row[d] for d in group_by)
        counts[key][(row["reached"], row["state"])] = row["leads"]
    rows = [_row(chain, key, group_by, cells) for key, cells in sorted(counts.items(), key=lambda kv: kv[0])]
    return Funnel(stages=list(chain.keys), by=by, group_by=group_by, rows=rows,
                  time_in_stage=time_in_stage(session, chain, group_by) if stage_times else [])


def _row(chain: Chain, key: tuple, group_by: tuple[str, ...], cells: dict[tuple[int, str], int]) -> FunnelRow:
    stopped = defaultdict(lambda: {"won": 0, "open": 0, "closed": 0})
    for (reached, state), leads in cells.items():
        stopped[reached][state] += leads
    figures = []
    total_beyond = 0
    for index in reversed(range(len(chain.keys))):
        here = stopped[index]
        stopping = here["won"] + here["open"] + here["closed"]
        figures.append(StageFigures(stage=chain.keys[index], reached=total_beyond + stopping,
                                    advanced=None if index == len(chain.keys) - 1 else total_beyond,
                                    dropped=here["closed"], stalled=here["open"]))
        total_beyond += stopping
    figures.reverse()
    return FunnelRow(cohort=key[0], group=dict(zip(group_by, key[1:])), stages=figures)


def time_in_stage(session: Session, chain: Chain, group_by: tuple[str, ...] = ()) -> list[StageTime]:
    """Median and 90th percentile of completed first stays per stage of the path (days).

    A stay in a stage runs from the lead's first move into it (for the first stage, from
    the lead's creation when it started there) to its first move out of it
    (``from_stage``, which every recorded and imported change carries). The stays are
    kept per lead by ``journeys`` in 1/100 days, so the percentiles are exact to 15 minutes.
    """
    refresh(session)
    columns, joins = _dimension_columns(group_by)
    source = StageStay.__table__
    if group_by:
        source = sa.join(source, Lead.__table__, Lead.id == StageStay.lead_id)
        for join in joins:
            source = join(source)
    query = (sa.select(*columns, StageStay.stage, StageStay.hundredths.label("bucket"), sa.func.count().label("n"))
             .select_from(source).group_by(*columns, StageStay.stage, StageStay.hundredths))
    histograms: dict[tuple, dict[int, int]] = defaultdict(dict)
    for r in session.execute(query).mappings():
        histograms[(tuple(r[d] for d in group_by), r["stage"])][int(r["bucket"])] = r["n"]
    order = {key: i for i, key in enumerate(chain.keys)}
    result = []
    for (key, stage), counts in sorted(histograms.items(), key=lambda kv: (kv[0][0], order[kv[0][1]])):
        median, p90 = percentiles(counts, (0.5, 0.9))
        result.append(StageTime(group=dict(zip(group_by, key)), stage=stage, stays=sum(counts.values()),
                                median_days=round(median, 2), p90_days=round(p90, 2)))
    return result


def percentiles(histogram: dict[int, int], qs: tuple[float, ...]) -> list[float]:
    """Linear-interpolation percentiles (as PostgreSQL's ``percentile_cont``) of a {hundredths of a day: count}
    histogram, in days."""
    values = np.array(sorted(histogram), dtype=float)
    cumulative = np.cumsum([histogram[v] for v in sorted(histogram)])
    total = int(cumulative[-1])
    result = []
    for q in qs:
        rank = q * (total - 1)  # 0-based position in the sorted stays
        low, high = math.floor(rank), math.ceil(rank)
        below, above = values[np.searchsorted(cumulative, low + 1)], values[np.searchsorted(cumulative, high + 1)]
        result.append(float(below + (above - below) * (rank - low)) / 100)
    return result
