"""The sequence builder's form: rows of step fields <-> a checked ``SequenceSpec``.

The form is plain HTML (``step-<n>-<field>`` inputs) so it works without
JavaScript: adding, removing and moving a step are form submissions that
return the edited form unsaved. Saving checks the form with the same
``SequenceSpec`` the ``campaigns/*.yaml`` files go through, and each error is
placed next to its field. ``describe_changes`` says, before and after a save,
what an edit does to leads already enrolled (loading.py applies it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import sqlalchemy as sa
from pydantic import ValidationError
from sqlmodel import Session, select

from ..models import Enrollment, Sequence, Step
from ..send_window import DAY_NAMES
from ..sequences import SequenceSpec

STEP_FIELDS = ("key", "kind", "day_min", "day_max", "template", "condition", "goal", "subjects_en", "subjects_ru", "extra")
ACTION = re.compile(r"^(add|remove|up|down)(?:-(\d+))?$")


@dataclass
class SequenceForm:
    key: str = ""
    name: str = ""
    description: str = ""
    timezone: str = "UTC"
    send_days: list[str] = field(default_factory=lambda: list(DAY_NAMES[:5]))
    send_start: str = "09:00"
    send_end: str = "18:00"
    throttle_per_hour: str = ""
    exit_reply: bool = True
    exit_domain_reply: bool = False
    exit_click: bool = False
    trigger: str = "manual"
    steps: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_sequence(cls, sequence: Sequence, steps: list[Step]) -> "SequenceForm":
        return cls(
            key=sequence.key, name=sequence.name, description=sequence.description, timezone=sequence.timezone,
            send_days=sequence.send_days.split(","), send_start=sequence.send_start, send_end=sequence.send_end,
            throttle_per_hour=str(sequence.throttle_per_hour or ""), exit_reply=sequence.exit_on_reply,
            exit_domain_reply=sequence.exit_on_domain_reply, exit_click=sequence.exit_on_click,
            trigger=sequence.trigger,
            steps=[{"key": s.key, "kind": s.kind, "day_min": str(s.day_min), "day_max": str(s.day_max),
                    "template": s.template, "condition": s.condition, "goal": s.goal,
                    "subjects_en": "\n".join(s.subjects.get("en", [])),
                    "subjects_ru": "\n".join(s.subjects.get("ru", [])), "extra": _kept_fields(s)} for s in steps],
        )

    @classmethod
    def from_request(cls, form) -> "SequenceForm":
        count = min(int(form.get("step_count", "0") or 0) if str(form.get("step_count", "0")).isdigit() else 0, 100)
        steps = [{name: form.get(f"step-{i}-{name}", "").strip() for name in STEP_FIELDS} for i in range(count)]
        return cls(
            key=form.get("key", "").strip(), name=form.get("name", "").strip(),
            description=form.get("description", "").strip(), timezone=form.get("timezone", "").strip() or "UTC",
            send_days=[d for d in DAY_NAMES if d in form.getlist("send_days")],
            send_start=form.get("send_start", "").strip(), send_end=form.get("send_end", "").strip(),
            throttle_per_hour=form.get("throttle_per_hour", "").strip(),
            exit_reply="exit_reply" in form, exit_domain_reply="exit_domain_reply" in form,
            exit_click="exit_click" in form, trigger=form.get("trigger", "manual"), steps=steps,
        )

    def apply(self, action: str) -> bool:
        """Add, remove or move a step (``add``, ``remove-2``, ``up-1``); False if ``action`` is none of these."""
        match = ACTION.match(action)
        if not match:
            return False
        verb, index = match[1], int(match[2]) if match[2] else None
        if verb == "add":
            kind = "first_contact" if not self.steps else "follow_up"
            last = int(self.steps[-1]["day_max"]) if self.steps and self.steps[-1]["day_max"].isdigit() else 0
            day = last + 3 if self.steps else 0
            self.steps.append({"key": self._new_key(kind), "kind": kind, "day_min": str(day), "day_max": str(day),
                               "template": "", "condition": "always", "goal": "", "subjects_en": "", "subjects_ru": "",
                               "extra": ""})
        elif index is not None and 0 <= index < len(self.steps):
            if verb == "remove":
                del self.steps[index]
            elif verb == "up" and index > 0:
                self.steps[index - 1], self.steps[index] = self.steps[index], self.steps[index - 1]
            elif verb == "down" and index < len(self.steps) - 1:
                self.steps[index + 1], self.steps[index] = self.steps[index], self.steps[index + 1]
        return True

    def _new_key(self, kind: str) -> str:
        taken = {step["key"] for step in self.steps}
        base = kind.replace("_", "-")
        n = 1
        while (candidate := base if n == 1 else f"{base}-{n}") in taken:
            n += 1
        return candidate

    def document(self, status: str) -> dict:
        """The sequence as the dict a ``campaigns/*.yaml`` file would hold."""
        steps = []
        for row in self.steps:
            subjects = {lang: [line.strip() for line in row[f"subjects_{lang}"].splitlines() if line.strip()]
                        for lang in ("en", "ru")}
            step = {"key": row["key"], "kind": row["kind"], "day": [_number(row["day_min"]), _number(row["day_max"])],
                    "template": row["template"], "condition": row["condition"] or "always", "goal": row["goal"],
                    "subjects": {lang: v for lang, v in subjects.items() if v}}
            kept = _json(row.get("extra", ""))
            if kept.get("anchor"):
                step["anchor"], step["day"] = kept["anchor"], None
            if kept.get("templates_by_reason"):
                step["templates_by_reason"], step["template"] = kept["templates_by_reason"], ""
            steps.append(step)
        return {
            "key": self.key, "name": self.name, "description": self.description, "status": status,
            "trigger": self.trigger,
            "timezone": self.timezone,
            "send_window": {"days": self.send_days, "start": self.send_start, "end": self.send_end},
            "throttle_per_hour": _number(self.throttle_per_hour) if self.throttle_per_hour else None,
            "exit_on": {"reply": self.exit_reply, "domain_reply": self.exit_domain_reply, "click": self.exit_click},
            "steps": steps,
        }


def _kept_fields(step: Step) -> str:
    """What a step has that the builder does not edit (calendar anchor, templates by lost
    reason), as JSON carried through the form so a save keeps it."""
    kept: dict = {}
    if step.anchor != "enrollment":
        anchor = {"date": step.anchor_date.isoformat()} if step.anchor == "date" else {"kind": step.anchor}
        kept["anchor"] = {**anchor, "business_days_before": step.anchor_business_days}
    if step.templates_by_reason:
        kept["templates_by_reason"] = dict(step.templates_by_reason)
    return json.dumps(kept, ensure_ascii=False) if kept else ""


def kept_summary(extra: str) -> str:
    """The kept fields in words, for the builder."""
    kept = _json(extra)
    parts = []
    if kept.get("anchor"):
        anchor = kept["anchor"]
        parts.append(f"sent {anchor.get('business_days_before', 0)} business day(s) before "
                     f"{anchor.get('kind', '').replace('_', ' ') or anchor.get('date')} (day fields unused)")
    if kept.get("templates_by_reason"):
        parts.append("template by lost reason: " + ", ".join(f"{k} → {v}" for k, v in kept["templates_by_reason"].items()))
    return "; ".join(parts)


def _json(text: str) -> dict:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _number(text: str):
    return int(text) if re.fullmatch(r"-?\d{1,9}", text or "") else text


def check(form: SequenceForm, status: str, template_names: set[str]) -> tuple[SequenceSpec | None, dict[str, str]]:
    """The checked spec, or None and the errors keyed by form field name."""
    errors: dict[str, str] = {}
    spec = None
    try:
        spec = SequenceSpec.model_validate(form.document(status))
    except ValidationError as exc:
        for error in exc.errors():
            errors.setdefault(_field_name(error["loc"]), error["msg"].removeprefix("Value error, "))
    if not form.steps:
        errors.setdefault("steps", "add at least one step")
    for index, row in enumerate(form.steps):
        if row["template"] and row["template"] not in template_names:
            errors.setdefault(f"step-{index}-template", f"no template named {row['template']!r}")
    return (spec if not errors else None), errors


def _field_name(loc: tuple) -> str:
    if not loc:
        return "form"
    if loc[0] == "steps" and len(loc) >= 3 and isinstance(loc[1], int):
        name = loc[2]
        name = {"day": "day_min", "subjects": "subjects_en"}.get(name, name)
        if loc[2] == "subjects" and len(loc) >= 4 and loc[3] in ("en", "ru"):
            name = f"subjects_{loc[3]}"
        return f"step-{loc[1]}-{name}"
    if loc[0] == "steps":
        return "steps"
    if loc[0] == "send_window":
        return "send_" + str(loc[1]) if len(loc) > 1 and loc[1] in ("start", "end", "days") else "send_window"
    if loc[0] == "exit_on":
        return "exit_on"
    return str(loc[0])


def describe_changes(session: Session, sequence: Sequence, spec: SequenceSpec) -> list[str]:
    """What saving ``spec`` over ``sequence`` does to the leads enrolled in it, in sentences."""
    steps = session.exec(select(Step).where(Step.sequence_id == sequence.id, Step.retired == False)  # noqa: E712
                         .order_by(Step.position)).all()
    waiting = dict(session.exec(
        select(Enrollment.next_step_id, sa.func.count()).where(Enrollment.sequence_id == sequence.id,
                                                               Enrollment.status == "active")
        .group_by(Enrollment.next_step_id)).all())
    new_keys = [s.key for s in spec.steps]
    by_key = {s.key: s for s in spec.steps}
    lines = []
    for index, step in enumerate(steps):
        if step.key not in by_key:
            following = next((s.key for s in steps[index + 1:] if s.key in by_key), None)
            count = waiting.get(step.id, 0)
            target = f"continue at step {following!r}" if following else "finish the sequence"
            lines.append(f"Step {step.key!r} is removed (retired): {count} lead(s) waiting on it will {target}; "
                         "messages already sent stay in their history.")
            continue
        new = by_key[step.key]
        changed = [label for label, old, value in (
            ("delay", (step.day_min, step.day_max), (new.day_min, new.day_max)), ("kind", step.kind, new.kind),
            ("template", step.template, new.template), ("subjects", step.subjects, dict(new.subjects)),
            ("condition", step.condition, new.condition)) if old != value]
        if changed:
            lines.append(f"Step {step.key!r}: new {', '.join(changed)} for the {waiting.get(step.id, 0)} lead(s) "
                         "waiting on it and everyone who has not reached it yet.")
    old_keys = {s.key for s in steps}
    for key in new_keys:
        if key not in old_keys:
            lines.append(f"Step {key!r} is added; enrolled leads reach it in its place in the order.")
    if [k for k in new_keys if k in old_keys] != [s.key for s in steps if s.key in by_key]:
        lines.append("Steps are reordered; enrolled leads go on from the step they wait on, in the new order.")
    return lines
