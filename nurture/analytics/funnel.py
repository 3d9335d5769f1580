"""Stage-to-stage conversion by entry cohort, drop-off and time in stage.

A lead enters the funnel at its first recorded stage change (or, with none, when
it was created); its cohort is that week (Monday) or month, in UTC. It has
*reached* a stage when it was ever at that stage or further along the path
(``chain.Chain``), so ``conversion(s) = reached(next) / reached(s)``. A lead that
stopped at a stage is *dropped* there when it now sits off the path (lost, cold,
archived) and *stalled* when it is still open there.

Time in stage counts completed stays only (from entering a stage to the lead's
next stage change); open stays are not yet a measurement.

Everything is aggregated in the database with one ``GROUP BY`` per figure (a
window function for time in stage), so it stays fast at millions of stage
changes on PostgreSQL; SQLite gives the same answers on small data.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import sqlalchemy as sa
from sqlmodel import Session

from ..db import is_postgresql
from ..models import Enrollment, Lead, Sequence, StageChange, User
from .chain import AnalyticsError, Chain

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


def funnel(session: Session, chain: Chain, by: str | None = None, group_by: tuple[str, ...] = ()) -> Funnel:
    """Conversion, drop-off and time in stage, per entry cohort (``by``) and per ``group_by`` dimension."""
    check_options(by, group_by)
    position = chain.position(StageChange.to_stage)
    history = (sa.select(StageChange.lead_id, sa.func.min(StageChange.changed_at).label("entered_at"),
                         sa.func.max(position).label("reached"))
               .group_by(StageChange.lead_id).subquery("history"))
    current = chain.position(Lead.stage)
    reached = sa.case(
        (history.c.reached.is_(None), sa.func.coalesce(current, 0)),
        (current > history.c.reached, current), else_=history.c.reached).label("reached")
    state = sa.case((Lead.stage == chain.won, "won"), (current.is_not(None), "open"), else_="closed").label("state")
    columns, joins = _dimension_columns(group_by)
    if by:
        columns.insert(0, cohort_start(session, sa.func.coalesce(history.c.entered_at, Lead.created_at), by)
                       .label("cohort"))
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
                  time_in_stage=time_in_stage(session, chain, group_by))


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
    """Median and 90th percentile of completed stays per stage of the path (days)."""
    following = sa.func.lead(StageChange.changed_at).over(
        partition_by=StageChange.lead_id, order_by=(StageChange.changed_at, StageChange.id))
    every = sa.select(StageChange.lead_id, StageChange.to_stage.label("stage"), StageChange.changed_at.label("entered"),
                      following.label("left")).subquery("every")  # the window must see the off-path moves too
    stays = sa.select(every).where(every.c.stage.in_(chain.keys[:-1])).subquery("stays")
    columns, joins = _dimension_columns(group_by)
    from_clause = sa.join(stays, Lead.__table__, Lead.id == stays.c.lead_id)
    for join in joins:
        from_clause = join(from_clause)
    completed = stays.c.left.is_not(None)
    if is_postgresql(session):
        days = sa.extract("epoch", stays.c.left - stays.c.entered) / 86400.0
        query = (sa.select(*columns, stays.c.stage, sa.func.count().label("stays"),
                           sa.func.percentile_cont(0.5).within_group(days).label("median"),
                           sa.func.percentile_cont(0.9).within_group(days).label("p90"))
                 .select_from(from_clause).where(completed).group_by(*columns, stays.c.stage))
        found = {(tuple(r[d] for d in group_by), r["stage"]): (r["stays"], r["median"], r["p90"])
                 for r in session.execute(query).mappings()}
    else:  # SQLite has no percentile aggregate: the (small) list of stays is read and ranked here
        days = (sa.func.julianday(stays.c.left) - sa.func.julianday(stays.c.entered)).label("days")
        query = sa.select(*columns, stays.c.stage, days).select_from(from_clause).where(completed)
        lists = defaultdict(list)
        for r in session.execute(query).mappings():
            lists[(tuple(r[d] for d in group_by), r["stage"])].append(r["days"])
        found = {key: (len(values), *percentiles(values, (0.5, 0.9))) for key, values in lists.items()}
    order = {key: i for i, key in enumerate(chain.keys)}
    return [StageTime(group=dict(zip(group_by, key)), stage=stage, stays=n,
                      median_days=round(median, 2), p90_days=round(p90, 2))
            for (key, stage), (n, median, p90) in sorted(found.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))]


def percentiles(values: list[float], qs: tuple[float, ...]) -> list[float]:
    """Linear-interpolation percentiles: the same definition as PostgreSQL's ``percentile_cont``."""
    return [float(v) for v in np.percentile(np.asarray(values, dtype=float), [q * 100 for q in qs])]
