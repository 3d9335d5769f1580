"""Helpers for the admin tests: the cast of users with passwords, and logging in through the real form."""

from __future__ import annotations

import re

from sqlmodel import select

from nurture.models import User
from nurture.web.passwords import hash_password

PASSWORD = "correct horse battery"
CAST = {  # email -> (name, role)
    "admin@example.com": ("Ada Admin", "admin"),
    "marketer@example.com": ("Mark Marketer", "marketer"),
    "manager@example.com": ("Mona Manager", "manager"),
    "anna.sales@example.com": ("Анна Соколова", "rep"),
    "ivan.sales@example.com": ("Ivan Petrov", "rep"),
}
_HASH = hash_password(PASSWORD)  # scrypt is slow on purpose: hash once per test session


def create_cast(n) -> dict[str, int]:
    """The five users with the same password; returns email -> id."""
    with n.session() as s:
        for email, (name, role) in CAST.items():
            user = s.exec(select(User).where(User.email == email)).first() or User(email=email, created_at=n.now)
            user.name, user.role, user.password_hash = name, role, _HASH
            s.add(user)
        s.commit()
        return dict(s.exec(select(User.email, User.id)).all())


def logged_in(n, web, email: str):
    """The cast created and a test client of the app logged in as ``email``."""
    create_cast(n)
    client = web()
    assert login(client, email).status_code == 302
    return client


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match[1]


def login(client, email: str, password: str = PASSWORD):
    page = client.get("/admin/login")
    return client.post("/admin/login", data={"email": email, "password": password,
                                             "csrf_token": csrf_token(page.get_data(as_text=True))})


def post_form(client, url: str, data: dict, page_url: str | None = None, **kwargs):
    """POST ``data`` with the CSRF token of ``page_url`` (default: ``url``)."""
    page = client.get(page_url or url)
    assert page.status_code == 200, (page_url or url, page.status_code)
    return client.post(url, data={**data, "csrf_token": csrf_token(page.get_data(as_text=True))}, **kwargs)
