"""Round-robin assignment of leads without an owner: fair, recorded, safe when assigners race."""

from __future__ import annotations

import threading
from collections import Counter

from sqlmodel import select

from nurture.assignment import assign_round_robin, next_rep
from nurture.models import Assignment, Lead, User


def add_reps(n, *specs: tuple[str, dict]) -> dict[str, int]:
    with n.session() as s:
        for email, fields in specs:
            s.add(User(email=email, name=email.split("@")[0], role=fields.pop("role", "rep"), created_at=n.now, **fields))
        s.commit()
        return dict(s.exec(select(User.email, User.id)).all())


def add_leads(n, count: int, prefix: str = "lead") -> list[int]:
    n.import_csv("email,first_name\n" + "".join(f"{prefix}{i}@example.com,Лид {i}\n" for i in range(count)))
    with n.session() as s:
        return list(s.exec(select(Lead.id).where(Lead.email.startswith(prefix)).order_by(Lead.id)).all())


def assign(n, lead_id: int) -> int | None:
    with n.session() as s:
        rep = assign_round_robin(s, s.get(Lead, lead_id), n.now)
        s.commit()
        return rep.id if rep else None


def test_three_reps_take_turns_and_every_assignment_is_recorded(nurture):
    n = nurture
    ids = add_reps(n, ("a@team.example", {}), ("b@team.example", {}), ("c@team.example", {}),
                   ("off@team.example", {"active": False}), ("busy@team.example", {"receives_leads": False}),
                   ("boss@team.example", {"role": "manager"}))
    leads = add_leads(n, 9)
    owners = [assign(n, lead_id) for lead_id in leads]  # all at the same instant: ties still rotate
    reps = [ids["a@team.example"], ids["b@team.example"], ids["c@team.example"]]
    assert owners == reps * 3
    recorded = n.all(select(Assignment).order_by(Assignment.id))
    assert [(a.lead_id, a.user_id, a.reason, a.assigned_at) for a in recorded] == \
        [(lead_id, owner, "round_robin", n.now) for lead_id, owner in zip(leads, owners)]
    assert [n.scalar(select(Lead.owner_id).where(Lead.id == lead_id)) for lead_id in leads] == owners


def test_a_lead_with_an_owner_keeps_it_and_nothing_is_recorded(team):
    n = team
    n.import_csv("email,owner\nowned@example.com,ivan.sales@example.com\n")
    lead = n.lead("owned@example.com")
    assert assign(n, lead.id) == n.users["ivan.sales@example.com"]
    assert n.count(Assignment) == 0


def test_a_rep_who_joins_later_gets_the_next_lead(team):
    n = team
    first = add_leads(n, 2)
    assert [assign(n, lead_id) for lead_id in first] == [n.users["anna.sales@example.com"], n.users["ivan.sales@example.com"]]
    new = add_reps(n, ("new@team.example", {}))["new@team.example"]
    later = add_leads(n, 3, prefix="later")
    assert [assign(n, lead_id) for lead_id in later] == [new, n.users["anna.sales@example.com"], n.users["ivan.sales@example.com"]]


def test_no_rep_receiving_leads_leaves_the_lead_unassigned(nurture):
    n = nurture
    add_reps(n, ("boss@team.example", {"role": "manager"}), ("paused@team.example", {"receives_leads": False}))
    (lead_id,) = add_leads(n, 1)
    assert assign(n, lead_id) is None
    assert n.count(Assignment) == 0 and n.lead("lead0@example.com").owner_id is None
    with n.session() as s:
        assert next_rep(s) is None


def test_racing_assigners_share_the_leads_evenly(nurture):
    n = nurture
    add_reps(n, ("a@team.example", {}), ("b@team.example", {}), ("c@team.example", {}))
    leads = add_leads(n, 12)
    barrier = threading.Barrier(len(leads))
    errors = []

    def run(lead_id: int) -> None:
        try:
            barrier.wait()
            assign(n, lead_id)
        except Exception as exc:  # reported below: a thread's exception would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lead_id,)) for lead_id in leads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(Counter(a.user_id for a in n.all(select(Assignment))).values()) == [4, 4, 4]
    assert n.count(Assignment) == 12
