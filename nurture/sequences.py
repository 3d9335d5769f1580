"""Read and check sequence definitions from ``campaigns/*.yaml``.

A leaf module: no database. ``load_sequence_file(path)`` returns a checked
``SequenceSpec`` or raises ``SequenceFileError`` naming the file, the step and
the field (with a "did you mean" for misspelt kinds and keys). The format is
documented in ``docs/sequences.md``.

Steps are identified by ``key``, stable across edits: when a file is loaded
again, steps with the same key are updated in place, new keys are added and
missing keys are retired (see ``loading.py``).
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from pathlib import Path
from typing import Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import SequenceFileError
from .calendar_anchors import MAX_BUSINESS_DAYS_BEFORE
from .models import SEQUENCE_STATUSES, SEQUENCE_TRIGGERS, STEP_KINDS
from .send_window import MAX_DAY, SendWindow, zone

KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,99}$"
CONDITIONS = ("always", "engaged", "not_engaged")
LANGUAGES = ("en", "ru")
DEFAULT_REASON = "default"  # the templates_by_reason entry for every reason without its own
PIPELINE_FILE = "pipeline.yaml"  # the stages and lost reasons, in campaigns/ too: not a sequence


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class SendWindowSpec(_Strict):
    days: list[str] = ["mon", "tue", "wed", "thu", "fri"]
    start: str = "09:00"
    end: str = "18:00"

    @model_validator(mode="after")
    def _check(self) -> "SendWindowSpec":
        SendWindow.parse(",".join(self.days), self.start, self.end)
        return self


class ExitSpec(_Strict):
    reply: bool = True
    domain_reply: bool = False
    click: bool = False


class AnchorSpec(_Strict):
    """``{kind: quarter_start, business_days_before: 5}`` or ``{date: 2027-01-15}``."""

    kind: Literal["quarter_start", "month_start"] | None = None
    date: dt.date | None = None
    business_days_before: int = Field(default=0, ge=0, le=MAX_BUSINESS_DAYS_BEFORE)

    @model_validator(mode="after")
    def _one_anchor(self) -> "AnchorSpec":
        if (self.kind is None) == (self.date is None):
            raise ValueError("give either kind (quarter_start or month_start) or date (YYYY-MM-DD), not both"
                             if self.kind else "give kind (quarter_start or month_start) or date (YYYY-MM-DD)")
        return self

    @property
    def anchor(self) -> str:
        return self.kind or "date"


class StepSpec(_Strict):
    key: str = Field(pattern=KEY_PATTERN)
    kind: Literal[STEP_KINDS]  # type: ignore[valid-type]
    day: int | list[int] | None = None
    anchor: AnchorSpec | None = None
    template: str = ""
    templates_by_reason: dict[str, str] = {}
    condition: Literal[CONDITIONS] = "always"  # type: ignore[valid-type]
    goal: str = Field(default="", max_length=300)
    subjects: dict[Literal[LANGUAGES], list[str]] = {}  # type: ignore[valid-type]

    @field_validator("day")
    @classmethod
    def _day_window(cls, value: int | list[int] | None) -> list[int] | None:
        if value is None:
            return None
        days = [value, value] if isinstance(value, int) else value
        if len(days) != 2:
            raise ValueError("give one day (14) or a window [min, max] such as [2, 3]")
        if not 0 <= days[0] <= days[1] <= MAX_DAY:
            raise ValueError(f"the window must satisfy 0 <= min <= max <= {MAX_DAY}")
        return days

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for lang, variants in value.items():
            if not variants or any(not v.strip() for v in variants):
                raise ValueError(f"{lang}: give at least one non-empty subject")
        return value

    @field_validator("templates_by_reason")
    @classmethod
    def _by_reason(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            return value
        bad = [key for key, name in value.items() if not re.match(KEY_PATTERN, key) or not str(name).strip()]
        if bad:
            raise ValueError(f"{bad[0]!r}: give a reason key (a-z, 0-9, -, _) and a template name")
        if DEFAULT_REASON not in value:
            raise ValueError(f"add a {DEFAULT_REASON!r} template, used for every reason without its own")
        return value

    @model_validator(mode="after")
    def _timing_and_template(self) -> "StepSpec":
        if self.anchor is None and self.day is None:
            raise ValueError("give day (days after enrollment) or anchor (a calendar date)")
        if self.anchor is not None and self.day is not None:
            raise ValueError("an anchored step takes no day: it is sent before its anchor, after the previous step")
        if self.template and self.templates_by_reason:
            raise ValueError("give template or templates_by_reason (with its default), not both")
        if self.kind != "rep_task" and not self.template and not self.templates_by_reason:
            raise ValueError("an email step needs a template (or templates_by_reason)")
        return self

    @property
    def day_min(self) -> int:
        return self.day[0] if self.day else 0  # type: ignore[index]

    @property
    def day_max(self) -> int:
        return self.day[1] if self.day else 0  # type: ignore[index]

    @property
    def default_template(self) -> str:
        return self.templates_by_reason.get(DEFAULT_REASON, self.template)

    @property
    def template_names(self) -> list[str]:
        """Every template this step may send: one, or one per lost reason."""
        return sorted(set(self.templates_by_reason.values())) if self.templates_by_reason else [self.template]


class SequenceSpec(_Strict):
    key: str = Field(pattern=KEY_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    status: Literal[SEQUENCE_STATUSES] = "active"  # type: ignore[valid-type]
    trigger: Literal[SEQUENCE_TRIGGERS] = "manual"  # type: ignore[valid-type]
    timezone: str = "UTC"
    send_window: SendWindowSpec = SendWindowSpec()
    throttle_per_hour: int | None = Field(default=None, ge=1)
    exit_on: ExitSpec = ExitSpec()
    steps: list[StepSpec] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value

    @model_validator(mode="after")
    def _unique_keys(self) -> "SequenceSpec":
        seen: set[str] = set()
        for step in self.steps:
            if step.key in seen:
                raise ValueError(f"step key {step.key!r} is used twice; keys must be unique")
            seen.add(step.key)
        return self


def parse_sequence(data: object, source: str) -> SequenceSpec:
    """Check a parsed YAML document; errors name ``source``, the step and the field."""
    try:
        return SequenceSpec.model_validate(data)
    except ValidationError as exc:
        raise SequenceFileError("\n".join(_describe(error, data, source) for error in exc.errors())) from None


def read_yaml(path: Path) -> object:
    """The document in a campaigns file; ``SequenceFileError`` names the file (and line) when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SequenceFileError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise SequenceFileError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SequenceFileError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except ValueError as exc:  # an impossible date such as 2027-13-01: YAML reads dates itself
        raise SequenceFileError(f"{path}: not valid YAML: {exc}") from None


def load_sequence_file(path: Path) -> SequenceSpec:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SequenceFileError(f"{path}: expected a mapping with key, name and steps")
    return parse_sequence(data, str(path))


def sequence_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.y*ml") if p.suffix in (".yaml", ".yml") and p.name != PIPELINE_FILE)


def describe_error(error: dict, data: object, source: str, items: dict[str, str],
                   known_fields: Callable[[dict, list, list[str]], list[str]]) -> str:
    """One pydantic error as "file: step 2 (key): field 'x': message", with "did you mean" hints.

    ``items`` names an entry of each list field (``{"steps": "step {n}"}``, 1-based);
    ``known_fields(error, loc, where)`` lists the fields allowed where an unknown one was found.
    Shared by the sequence files and the pipeline file.
    """
    loc = list(error["loc"])
    where = [source]
    if len(loc) >= 2 and loc[0] in items and isinstance(loc[1], int):
        index = loc[1]
        entries = data.get(loc[0]) if isinstance(data, dict) else None
        entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
        key = entry.get("key") if isinstance(entry, dict) else None
        where.append(items[loc[0]].format(n=index + 1) + (f" ({key})" if key else ""))
        loc = loc[2:]
    field = ".".join(str(part) for part in loc if not str(part).startswith("function-after"))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field" + suggest(str(loc[-1]), known_fields(error, loc, where))
    elif error["type"] == "literal_error" and isinstance(error.get("input"), str):
        expected = re.findall(r"'([^']+)'", error["msg"])
        message = f"{error['input']!r} is not one of {', '.join(expected)}" + suggest(error["input"], expected)
    return ": ".join(where + ([f"field {field!r}"] if field else []) + [message])


def _describe(error: dict, data: object, source: str) -> str:
    return describe_error(error, data, source, {"steps": "step {n}"}, _known_fields)


def _known_fields(error: dict, loc: list, where: list[str]) -> list[str]:
    models = {"send_window": SendWindowSpec, "exit_on": ExitSpec, "anchor": AnchorSpec}
    parent = loc[-2] if len(loc) >= 2 else None
    if parent in models:
        return list(models[parent].model_fields)
    if len(error["loc"]) >= 3 and error["loc"][0] == "steps":
        return list(StepSpec.model_fields)
    return list(SequenceSpec.model_fields)


def suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
