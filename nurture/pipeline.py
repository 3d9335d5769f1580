"""The sales pipeline: stages, stage rules and lost reasons, from ``campaigns/pipeline.yaml``.

``load_pipeline(path)`` returns a checked ``PipelineConfig`` or raises
``SequenceFileError`` naming the file and the field (with "did you mean" for
misspelt stage keys). The main chain is written as ``next:`` links
(new -> contacted -> ... -> won); stages beside it (lost, cold, archived) carry a
flag instead. A link to an unknown stage, two stages linking to the same one, a
cycle, a probability outside 0..1 or a rule naming an unknown stage is an error.

``sync_pipeline`` writes the ``Stage`` rows and keeps the whole checked document
in the database (a ``ModelFit`` row of kind ``pipeline``: the schema has no other
place for the rules), so that the web, workers and scheduler all use the
pipeline last loaded with ``nurture campaigns load``. ``stored_pipeline`` reads
it back (the shipped default until one is loaded). The format is documented in
``docs/pipeline.md``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import func
from sqlmodel import Session, select

from .config import PROJECT_ROOT
from .errors import SequenceFileError
from .models import Lead, ModelFit, Stage
from .sequences import PIPELINE_FILE, describe_error, read_yaml, suggest

DEFAULT_PIPELINE_PATH = PROJECT_ROOT / "campaigns" / PIPELINE_FILE
STORED_KIND = "pipeline"  # ModelFit.kind of the stored pipeline document
STAGE_KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,49}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class StageSpec(_Strict):
    """One stage. ``order`` is not written in the file: it follows from the ``next:`` links."""

    key: str = Field(pattern=STAGE_KEY_PATTERN)
    name: str = Field(min_length=1, max_length=100)
    probability: float = Field(ge=0.0, le=1.0)
    next: str | None = None
    won: bool = False
    lost: bool = False
    terminal: bool = False
    cold: bool = False
    order: int = Field(default=-1, exclude=True)

    @model_validator(mode="after")
    def _flags(self) -> "StageSpec":
        if "order" in self.model_fields_set and self.order != -1:
            raise ValueError("'order' is not written in the file: the order follows the next: links")
        if sum((self.won, self.lost, self.cold)) > 1:
            raise ValueError("a stage is at most one of won, lost and cold")
        if self.won or self.lost:
            self.terminal = True
        if self.cold and self.terminal:
            raise ValueError("a cold stage is not terminal: cold leads come back")
        if self.terminal and self.next:
            raise ValueError(f"a won, lost or terminal stage has no next: (it has next: {self.next!r})")
        return self

    @property
    def on_chain(self) -> bool:
        return not (self.lost or self.cold or (self.terminal and not self.won))


class RuleSettings(_Strict):
    """Which stage each rule moves a lead to, and when leads cool down and come back."""

    first_send: str = "contacted"
    engagement: str = "engaged"
    unsubscribe: str = "archived"
    cold: str = "cold"
    cold_after_days: int = Field(default=30, ge=1, le=3650)
    cold_return_months_min: int = Field(default=3, ge=0, le=120)
    cold_return_months_max: int = Field(default=6, ge=0, le=120)

    @model_validator(mode="after")
    def _window(self) -> "RuleSettings":
        if self.cold_return_months_min > self.cold_return_months_max:
            raise ValueError(f"cold_return_months_min ({self.cold_return_months_min}) is more than "
                             f"cold_return_months_max ({self.cold_return_months_max})")
        return self


class LostReasonLabel(_Strict):
    en: str = Field(min_length=1, max_length=100)
    ru: str = Field(min_length=1, max_length=100)


class LostReason(_Strict):
    key: str = Field(pattern=STAGE_KEY_PATTERN)
    label: LostReasonLabel


class PipelineConfig(_Strict):
    prior_weight: float = Field(default=20.0, ge=0.0, le=1_000_000.0)
    stages: list[StageSpec] = Field(min_length=2)
    rules: RuleSettings = RuleSettings()
    lost_reasons: list[LostReason] = Field(min_length=1)

    @model_validator(mode="after")
    def _structure(self) -> "PipelineConfig":
        keys = [s.key for s in self.stages]
        problems = [f"stages: key {k!r} is used twice; keys must be unique" for k in sorted({k for k in keys if keys.count(k) > 1})]
        reason_keys = [r.key for r in self.lost_reasons]
        problems += [f"lost_reasons: key {k!r} is used twice" for k in sorted({k for k in reason_keys if reason_keys.count(k) > 1})]
        if problems:
            raise ValueError("; ".join(problems))
        by_key = {s.key: s for s in self.stages}
        pointed_by: dict[str, str] = {}
        for stage in self.stages:
            if stage.next is None:
                continue
            if stage.next not in by_key:
                problems.append(f"stages ({stage.key}): next: {stage.next!r} is not a stage{suggest(stage.next, keys)}")
            elif stage.next in pointed_by:
                problems.append(f"stages {pointed_by[stage.next]} and {stage.key} both have next: {stage.next}; "
                                "the order must be one chain")
            else:
                pointed_by[stage.next] = stage.key
        if problems:
            raise ValueError("; ".join(problems))
        self._check_chain(by_key, pointed_by)
        self._check_rules(by_key)
        if not any(s.won for s in self.stages):
            raise ValueError("stages: no stage has won: true")
        return self

    def _check_chain(self, by_key: dict[str, StageSpec], pointed_by: dict[str, str]) -> None:
        heads = [s for s in self.stages if s.key not in pointed_by and s.next]
        for stage in self.stages:  # a cycle has no head: walk from every linked stage
            seen: list[str] = []
            current: str | None = stage.key
            while current is not None:
                if current in seen:
                    loop = seen[seen.index(current):] + [current]
                    raise ValueError(f"stages: the next: links make a cycle: {' -> '.join(loop)}")
                seen.append(current)
                current = by_key[current].next
        if len(heads) != 1:
            raise ValueError("stages: the next: links must make one chain (new -> ... -> won); "
                             f"found {len(heads)} starting at {', '.join(h.key for h in heads) or 'none'}")
        order = 0
        current = heads[0].key
        chain = []
        while current is not None:
            by_key[current].order = order
            chain.append(current)
            order += 1
            current = by_key[current].next
        if not by_key[chain[-1]].won:
            raise ValueError(f"stages: the chain {' -> '.join(chain)} must end at a won stage")
        for stage in self.stages:
            if stage.key in chain and not stage.on_chain:
                raise ValueError(f"stages ({stage.key}): a lost, cold or terminal stage cannot be in the next: chain")
            if stage.key in chain:
                continue
            if stage.on_chain:
                raise ValueError(f"stages ({stage.key}): not in the chain: link it with next: or flag it lost, cold or terminal")
            stage.order = order
            order += 1

    def _check_rules(self, by_key: dict[str, StageSpec]) -> None:
        keys = list(by_key)
        for rule in ("first_send", "engagement", "unsubscribe", "cold"):
            target = getattr(self.rules, rule)
            if target not in by_key:
                raise ValueError(f"rules.{rule}: {target!r} is not a stage{suggest(target, keys)}")
        for rule in ("first_send", "engagement"):
            target = by_key[getattr(self.rules, rule)]
            if not target.on_chain or target.won:
                raise ValueError(f"rules.{rule}: {target.key!r} must be a stage of the chain before won")
        if not by_key[self.rules.cold].cold:
            raise ValueError(f"rules.cold: {self.rules.cold!r} is not flagged cold: true")

    # --- reading the checked pipeline ---------------------------------------------------

    def stage(self, key: str) -> StageSpec:
        for stage in self.stages:
            if stage.key == key:
                return stage
        raise ValueError(f"unknown stage {key!r}; the stages are: {', '.join(self.keys)}")

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.ordered]

    @property
    def ordered(self) -> list[StageSpec]:
        return sorted(self.stages, key=lambda s: s.order)

    @property
    def chain(self) -> list[str]:
        """The main chain in order, ending at the won stage."""
        return [s.key for s in self.ordered if s.on_chain]

    @property
    def lost_reason_keys(self) -> list[str]:
        return [r.key for r in self.lost_reasons]

    def is_forward(self, from_key: str, to_key: str) -> bool:
        """True when both are on the chain and ``to_key`` comes later."""
        chain = self.chain
        return from_key in chain and to_key in chain and chain.index(to_key) > chain.index(from_key)

    def checksum(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def parse_pipeline(data: object, source: str) -> PipelineConfig:
    """Check a parsed YAML document; errors name ``source``, the stage and the field."""
    if not isinstance(data, dict):
        raise SequenceFileError(f"{source}: expected a mapping with stages, rules and lost_reasons")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise SequenceFileError("\n".join(_describe(error, data, source) for error in exc.errors())) from None


def load_pipeline(path: Path) -> PipelineConfig:
    path = Path(path)
    return parse_pipeline(read_yaml(path), str(path))


def pipeline_file(campaigns_dir: Path) -> Path:
    """The campaigns folder's pipeline file, or the shipped default when it has none."""
    path = Path(campaigns_dir) / PIPELINE_FILE
    return path if path.exists() else DEFAULT_PIPELINE_PATH


@lru_cache(maxsize=1)
def default_pipeline() -> PipelineConfig:
    return load_pipeline(DEFAULT_PIPELINE_PATH)


def _describe(error: dict, data: dict, source: str) -> str:
    return describe_error(error, data, source, {"stages": "stages[{n}]", "lost_reasons": "lost_reasons[{n}]"},
                          _known_fields)


def _known_fields(error: dict, loc: list, where: list[str]) -> list[str]:
    known = {"rules": RuleSettings, "label": LostReasonLabel}.get(str(loc[-2]) if len(loc) >= 2 else "")
    if known is None:
        known = StageSpec if where[1:] and where[1].startswith("stages") else (LostReason if where[1:] else PipelineConfig)
    return [f for f in known.model_fields if f != "order"]


# --- the database side ------------------------------------------------------------------------

@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: bool = False


def sync_pipeline(session: Session, config: PipelineConfig, now: datetime) -> SyncReport:
    """Upsert ``Stage`` rows by key and store the document; refuse to drop a stage that leads are in.

    Flushes, does not commit: the caller commits with the rest of its load.
    """
    report = SyncReport()
    existing = {stage.key: stage for stage in session.exec(select(Stage))}
    gone = [key for key in existing if key not in config.keys]
    if gone:
        occupied = dict(session.exec(select(Lead.stage, func.count()).where(Lead.stage.in_(gone)).group_by(Lead.stage)).all())
        if occupied:
            listed = ", ".join(f"{count} in {key}" for key, count in sorted(occupied.items()))
            raise SequenceFileError(f"{PIPELINE_FILE}: stage(s) {', '.join(sorted(occupied))} would be removed but leads "
                                    f"are in them ({listed}); move them first with `nurture leads stage`")
    for spec in config.ordered:
        row = existing.get(spec.key)
        values = dict(name=spec.name, position=spec.order, probability=spec.probability, is_won=spec.won,
                      is_lost=spec.lost, is_terminal=spec.terminal, is_cold=spec.cold)
        if row is None:
            session.add(Stage(key=spec.key, **values))
            report.added.append(spec.key)
        elif any(getattr(row, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(row, k, v)
            session.add(row)
            report.updated.append(spec.key)
    for key in gone:
        session.delete(existing[key])
        report.removed.append(key)
    stored = _latest(session)
    checksum = config.checksum()
    if stored is None or stored[1].get("checksum") != checksum:
        session.add(ModelFit(kind=STORED_KIND, fitted_at=now, weights=config.model_dump(mode="json"),
                             metrics={"checksum": checksum}))
    else:
        report.unchanged = not (report.added or report.updated or report.removed)
    session.flush()
    return report


def _latest(session: Session) -> tuple[int, dict] | None:
    row = session.exec(select(ModelFit.id, ModelFit.metrics).where(ModelFit.kind == STORED_KIND)
                       .order_by(ModelFit.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row else None


_stored_cache: dict[tuple[str, int], PipelineConfig] = {}


def stored_pipeline(session: Session) -> PipelineConfig:
    """The pipeline last synced into this database, or the shipped default before any."""
    latest = _latest(session)
    if latest is None:
        return default_pipeline()
    cache_key = (str(session.get_bind().engine.url), latest[1].get("checksum", str(latest[0])))  # ids restart on a reset
    config = _stored_cache.get(cache_key)
    if config is None:
        document = session.exec(select(ModelFit.weights).where(ModelFit.id == latest[0])).one()
        config = parse_pipeline(document, "stored pipeline")
        _stored_cache.clear()  # one database per process in practice; tests switch often
        _stored_cache[cache_key] = config
    return config
