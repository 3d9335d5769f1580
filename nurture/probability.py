"""Close probability of a lead: its stage's probability moved by its engagement, and why.

The model, on the logit scale::

    logit(p) = a * logit(p_stage) + b + w . x

``p_stage`` is the stage's probability: the learned one blended with the manager's
(``conversion.stage_probabilities``, computed once per call); ``x`` are the
engagement features: log(1 + decayed count) of human replies, human clicks,
human opens and machine events, and 1 when the lead opted out (unsubscribed or
complained). ``a``, ``b`` and ``w`` are the ``Weights``: sensible defaults
(``DEFAULT_WEIGHTS``) until ``fit_model`` has fitted them on enough closed leads
(``NURTURE_MIN_CLOSED_FOR_FIT``), stored as a ``ModelFit`` row of kind
``engagement``. A won stage is 100 %, a stage with probability 0 (lost,
archived) is 0 %: engagement does not move them.

The explanation is a sequential attribution: start at the stage's probability,
apply the baseline (``a``, ``b``), then add each feature in turn; each step's
change in rounded percentage points is its contribution, so the points add up
exactly to the shown number ("34%: stage engaged 22%, replied 2 days ago +9, ..."). The
contributions are stored as structured items; ``describe`` and ``explain`` word them in
the reader's language ("34%: этап engaged — 22%, ответ 2 дня назад +9, ..." in Russian),
English by default.

``rescore`` recomputes many leads in one pass (a query for the leads, one for their
events, one executemany), inside the caller's transaction; ``recompute_all`` walks every open lead in
batches keyed on the id, committing each batch (the nightly decay).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import numpy as np
import sqlalchemy as sa
from babel import Locale
from sqlalchemy.orm.util import identity_key
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from .config import Settings
from .engagement import DECAYING, OPTED_OUT, Engagement, engagement, horizon, load_touches
from .models import Lead, ModelFit, StageChange

MODEL_KIND = "engagement"
FEATURES = (*DECAYING, OPTED_OUT)
UNKNOWN_STAGE_PROBABILITY = 0.02  # a stage missing from the pipeline: treated like a new lead
LOGIT_LIMIT = 12.0  # probabilities are kept within about 6e-6 .. 1 - 6e-6 before the logit
BATCH = 2000


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1 / (1 + np.exp(LOGIT_LIMIT)), 1 / (1 + np.exp(-LOGIT_LIMIT)))
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=float), -40, 40)))


@dataclass(frozen=True)
class Weights:
    """``stage`` (a), ``intercept`` (b) and one coefficient per feature; ``source`` says where they came from."""

    stage: float
    intercept: float
    coef: dict[str, float]
    source: str = "default"

    def vector(self) -> np.ndarray:
        return np.array([self.coef.get(name, 0.0) for name in FEATURES])

    def to_json(self) -> dict:
        return {"stage": self.stage, "intercept": self.intercept, "coef": dict(self.coef)}

    @classmethod
    def from_fit(cls, fit: ModelFit) -> "Weights":
        w = fit.weights
        return cls(float(w["stage"]), float(w["intercept"]), {k: float(v) for k, v in w["coef"].items()},
                   source=f"fitted {fit.fitted_at:%Y-%m-%d} on {fit.n_leads} closed leads")


# A reply doubles to triples the odds, a click adds about half, an open a little,
# machine events nothing to speak of; opting out divides the odds by about seven.
DEFAULT_WEIGHTS = Weights(stage=1.0, intercept=-0.3,
                          coef={"reply": 1.6, "click": 0.6, "open": 0.15, "machine": 0.02, OPTED_OUT: -2.0})


def current_weights(session: Session) -> Weights:
    fit = session.exec(select(ModelFit).where(ModelFit.kind == MODEL_KIND)
                       .order_by(ModelFit.fitted_at.desc(), ModelFit.id.desc())).first()
    return Weights.from_fit(fit) if fit is not None else DEFAULT_WEIGHTS


@dataclass(frozen=True)
class StageTable:
    """Each stage's probability and which stages close a lead."""

    probabilities: dict[str, float]
    won: frozenset[str] = frozenset()
    lost: frozenset[str] = frozenset()

    def of(self, keys: list[str]) -> np.ndarray:
        return np.array([self.probabilities.get(k, UNKNOWN_STAGE_PROBABILITY) for k in keys], dtype=float)

    @property
    def closed(self) -> frozenset[str]:
        return self.won | self.lost


def stage_table(session: Session, *, manual: bool = False) -> StageTable:
    """The stages of the stored pipeline with their blended learned probabilities (``conversion``), or the manual ones."""
    from .pipeline import stored_pipeline

    config = stored_pipeline(session)
    if manual:
        probabilities = {s.key: s.probability for s in config.stages}
    else:
        probabilities = _learned(session, config)
    return StageTable(probabilities, frozenset(s.key for s in config.stages if s.won),
                      frozenset(s.key for s in config.stages if s.lost))


LEARNED_REUSE_SECONDS = 600  # learned stage probabilities are reused this long ...
LEARNED_REUSE_GROWTH = 0.01  # ... while the stage history grows by less than this share
LEARNED_CACHE_MIN_CHANGES = 1000
_learned_cache: dict[str, tuple[object, float, int, int | None, dict[str, float]]] = {}


def _learned(session: Session, config) -> dict[str, float]:
    """The blended probabilities, counted over the whole stage history: reused while that barely changed.

    Counting is the costly part (every stage change); the drainer asks for it every batch,
    and a batch of clicks adds a few changes to a history of hundreds of thousands.
    """
    from .conversion import stage_probabilities

    changes, last_id = session.exec(select(sa.func.count(StageChange.id), sa.func.max(StageChange.id))).one()
    key = str(session.get_bind().engine.url)
    cached = _learned_cache.get(key)
    if cached is not None and changes >= LEARNED_CACHE_MIN_CHANGES:  # a small history is quick to count again
        cached_config, at, cached_changes, cached_last, probabilities = cached
        unchanged = (cached_changes, cached_last) == (changes, last_id)
        barely = (time.monotonic() - at < LEARNED_REUSE_SECONDS and (last_id or 0) >= (cached_last or 0)
                  and 0 <= changes - cached_changes < changes * LEARNED_REUSE_GROWTH)
        if cached_config is config and (unchanged or barely):
            return probabilities
    learned = stage_probabilities(session, config, wait=False)  # it holds lead rows: see journeys.refresh
    probabilities = {stage: found.blended for stage, found in learned.items()}
    _learned_cache.clear()
    _learned_cache[key] = (config, time.monotonic(), changes, last_id, probabilities)
    return probabilities


def feature_matrix(engagements: list[Engagement]) -> np.ndarray:
    """One row per engagement: log1p of each decayed count, then the opt-out flag."""
    if not engagements:
        return np.zeros((0, len(FEATURES)))
    decayed = np.array([[e.decayed[k] for k in DECAYING] for e in engagements], dtype=float)
    opted_out = np.array([[float(e.opted_out)] for e in engagements])
    return np.hstack([np.log1p(decayed), opted_out])


def attribution_path(p_stage: np.ndarray, X: np.ndarray, weights: Weights) -> np.ndarray:
    """(n, 2 + features) probabilities: the stage's, after the baseline, then after each feature in turn.

    The last column is the close probability. Stages at exactly 0 or 1 stay there.
    """
    p_stage = np.asarray(p_stage, dtype=float)
    start = weights.stage * logit(p_stage) + weights.intercept
    steps = np.cumsum(X * weights.vector(), axis=1)
    path = np.column_stack([p_stage, sigmoid(start), sigmoid(start[:, None] + steps)])
    fixed = (p_stage <= 0) | (p_stage >= 1)
    path[fixed] = p_stage[fixed, None]
    return path


def predict(p_stage: np.ndarray, X: np.ndarray, weights: Weights) -> np.ndarray:
    return attribution_path(p_stage, X, weights)[:, -1]


def why_items(stage: str, path: np.ndarray, found: Engagement) -> list[dict]:
    """The contributions in whole percentage points: the stage's, then every non-zero step."""
    points = np.rint(path * 100).astype(int)
    items = [{"factor": "stage", "stage": stage, "points": int(points[0])}]
    for name, before, after in zip(("baseline", *FEATURES), points[:-1], points[1:]):
        if after == before:
            continue
        item = {"factor": name, "points": int(after - before)}
        if name in found.latest:
            latest = found.latest[name]
            item["at"] = latest.at.isoformat()
            if name in found.counts:
                item["count"] = found.counts[name]
            if latest.url:
                item["url"] = latest.url
        items.append(item)
    return items


def _plural(count: int, forms: dict[str, str], language: str) -> str:
    """The form of a noun that ``count`` takes in ``language``: ``forms`` keyed by CLDR plural category.

    Russian has three for whole numbers: one (1, 21 день), few (2-4, 22 дня), many (5-20, 25 дней).
    """
    return forms[Locale.parse(language).plural_form(count)]


_TEXTS = {
    "en": {"today": "today", "yesterday": "yesterday", "days_ago": "{days} {unit} ago",
           "days": {"one": "day", "other": "days"}, "stage": "stage {stage} {points}%", "not_scored": "not scored yet"},
    "ru": {"today": "сегодня", "yesterday": "вчера", "days_ago": "{days} {unit} назад",
           "days": {"one": "день", "few": "дня", "many": "дней", "other": "дня"}, "stage": "этап {stage} — {points}%",
           "not_scored": "ещё не рассчитана"},
}


def _ago(at: str, now: datetime, language: str) -> str:
    texts = _TEXTS[language]
    days = (now - datetime.fromisoformat(at)).total_seconds() / 86400
    if days < 1:
        return texts["today"]
    if days < 2:
        return texts["yesterday"]
    return texts["days_ago"].format(days=int(days), unit=_plural(int(days), texts["days"], language))


def _link(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return (parts.netloc + parts.path.rstrip("/"))[:60] or url[:60]


def _words_en(count: int, when: str, link: str) -> dict[str, str]:
    return {
        "baseline": "baseline for the stage",
        "reply": f"replied {when}" if count == 1 else f"replied {count} times, last {when}",
        "click": (f"clicked {link} {when}" if link else f"clicked {when}") + (f" ({count} clicks)" if count > 1 else ""),
        "open": f"opened {when}" if count == 1 else f"opened {count} times, last {when}",
        "machine": f"{count} machine open(s)/click(s)",
        OPTED_OUT: "unsubscribed",
    }


def _words_ru(count: int, when: str, link: str) -> dict[str, str]:
    def counted(one: str, few: str, many: str) -> str:
        return f"{count} {_plural(count, {'one': one, 'few': few, 'many': many, 'other': few}, 'ru')}"

    return {
        "baseline": "базовая поправка модели",
        "reply": f"ответ {when}" if count == 1 else f"{counted('ответ', 'ответа', 'ответов')}, последний {when}",
        "click": (f"переход по ссылке {link} {when}" if link else f"переход по ссылке {when}")
        + (f" ({counted('переход', 'перехода', 'переходов')})" if count > 1 else ""),
        "open": f"открытие письма {when}" if count == 1 else f"{counted('открытие', 'открытия', 'открытий')}, последнее {when}",
        "machine": counted("автоматическое открытие или переход", "автоматических открытия или перехода",
                           "автоматических открытий или переходов"),
        OPTED_OUT: "отписка от рассылки",
    }


_WORDS = {"en": _words_en, "ru": _words_ru}


def describe(item: dict, now: datetime, language: str = "en") -> str:
    """One contribution as words in ``language`` (en, ru): "stage engaged 22%", "replied 2 days ago +9", ..."""
    points = item["points"]
    if item["factor"] == "stage":
        return _TEXTS[language]["stage"].format(stage=item["stage"], points=points)
    when = _ago(item["at"], now, language) if "at" in item else ""
    words = _WORDS[language](item.get("count", 1), when, _link(item["url"]) if item.get("url") else "")
    return f"{words[item['factor']]} {points:+d}"


def explain(probability: float, why: list[dict], now: datetime, language: str = "en") -> str:
    """``"34%: stage engaged 22%, replied 2 days ago +9, clicked example.org/case-study +3"``, in ``language``."""
    if not why:
        return f"{round(probability * 100)}%: {_TEXTS[language]['not_scored']}"
    return f"{sum(item['points'] for item in why)}%: " + ", ".join(describe(item, now, language) for item in why)


@dataclass
class ProbabilityChange:
    """A lead's probability before and after a recompute, with the contributions of the new one."""

    lead_id: int
    before: float
    after: float
    why: list[dict]
    score: float = 0.0
    day_ago: float | None = None  # the probability a day earlier (events and stage as they were then)
    scored_before: bool = True  # False when the lead had never been scored

    def explain(self, now: datetime, language: str = "en") -> str:
        return explain(self.after, self.why, now, language)


@dataclass
class Scorer:
    """What scoring reads once per call: the stage probabilities, the weights and the half-life."""

    stages: StageTable
    weights: Weights
    half_life_days: float

    @classmethod
    def load(cls, session: Session, settings: Settings) -> "Scorer":
        return cls(stage_table(session), current_weights(session), settings.score_half_life_days)

    def paths(self, stages: list[str], engagements: list[Engagement]) -> np.ndarray:
        return attribution_path(self.stages.of(stages), feature_matrix(engagements), self.weights)


def _stages_at(session: Session, lead_ids: list[int], moment: datetime) -> dict[int, str]:
    """The stage each lead was in at ``moment``, for leads whose stage changed since then."""
    earlier: dict[int, str] = {}
    for lead_id, from_stage in session.exec(
            select(StageChange.lead_id, StageChange.from_stage).where(
                StageChange.lead_id.in_(lead_ids), StageChange.changed_at > moment)
            .order_by(StageChange.changed_at.desc(), StageChange.id.desc())):
        earlier[lead_id] = from_stage or "new"  # the last one written is the earliest change after moment
    return earlier


_UPDATE = (sa.update(Lead.__table__).where(Lead.__table__.c.id == sa.bindparam("lead_id"))
           .values(score=sa.bindparam("new_score"), probability=sa.bindparam("new_probability"),
                   probability_at=sa.bindparam("new_at"), probability_why=sa.bindparam("new_why")))


def rescore(session: Session, settings: Settings, lead_ids: list[int], now: datetime, *,
            scorer: Scorer | None = None, day_ago: bool = False) -> list[ProbabilityChange]:
    """Recompute and store these leads' score and probability; with ``day_ago`` also what it was a day before."""
    if not lead_ids:
        return []
    scorer = scorer or Scorer.load(session, settings)
    rows = session.exec(select(Lead.id, Lead.stage, Lead.probability, Lead.probability_at)
                        .where(Lead.id.in_(list(lead_ids))).order_by(Lead.id)).all()
    ids = [row[0] for row in rows]
    earliest = now - timedelta(days=1) if day_ago else now
    touches = load_touches(session, ids, since=horizon(earliest, scorer.half_life_days))
    found = [engagement(touches.get(i, ()), now, scorer.half_life_days) for i in ids]
    paths = scorer.paths([row[1] for row in rows], found)
    previous = None
    if day_ago:
        moment = now - timedelta(days=1)
        stages_then = _stages_at(session, ids, moment)
        then = [engagement(touches.get(i, ()), moment, scorer.half_life_days) for i in ids]
        previous = scorer.paths([stages_then.get(i, row[1]) for i, row in zip(ids, rows)], then)[:, -1]
    changes = []
    for index, (lead_id, stage, before, before_at) in enumerate(rows):
        why = why_items(stage, paths[index], found[index])
        for item in why:  # the words as of now, for readers that do not format them (notices)
            item["label"] = describe(item, now)
        changes.append(ProbabilityChange(
            lead_id, before, float(paths[index, -1]), why,
            score=round(found[index].score, 4), day_ago=None if previous is None else float(previous[index]),
            scored_before=before_at is not None))
    _store(session, changes, now)
    return changes


def _store(session: Session, changes: list[ProbabilityChange], now: datetime) -> None:
    session.execute(_UPDATE, [{"lead_id": c.lead_id, "new_score": c.score, "new_probability": c.after,
                               "new_at": now, "new_why": c.why} for c in changes])
    for change in changes:  # leads already loaded in this session see the new values without a reload
        lead = session.identity_map.get(identity_key(Lead, change.lead_id))
        if lead is not None:
            for name, value in (("score", change.score), ("probability", change.after),
                                ("probability_at", now), ("probability_why", change.why)):
                set_committed_value(lead, name, value)


def recompute(session: Session, settings: Settings, lead: Lead, now: datetime) -> ProbabilityChange:
    """Recompute one lead's probability (in the caller's transaction) and say how it moved and why."""
    return rescore(session, settings, [lead.id], now, day_ago=True)[0]


def recompute_all(session: Session, settings: Settings, now: datetime,
                  progress: Callable[[int, int], None] | None = None,
                  on_batch: Callable[[Session, list[ProbabilityChange]], None] | None = None) -> int:
    """Recompute every lead not in a closed stage (the nightly decay), a batch per commit; return how many."""
    scorer = Scorer.load(session, settings)
    open_leads = Lead.stage.not_in(list(scorer.stages.closed)) if scorer.stages.closed else sa.true()
    total = session.exec(select(sa.func.count()).select_from(Lead).where(open_leads)).one()
    done, last_id = 0, 0
    while True:
        ids = list(session.exec(select(Lead.id).where(open_leads, Lead.id > last_id).order_by(Lead.id).limit(BATCH)).all())
        if not ids:
            session.commit()  # ends the read transaction (on SQLite it holds the write lock)
            return done
        changes = rescore(session, settings, ids, now, scorer=scorer, day_ago=on_batch is not None)
        if on_batch is not None:
            on_batch(session, changes)
        session.commit()
        done, last_id = done + len(ids), ids[-1]
        if progress:
            progress(done, total)

