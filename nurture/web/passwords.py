"""Admin passwords: hashed with Werkzeug's scrypt, never stored or logged in clear."""

from __future__ import annotations

from werkzeug.security import check_password_hash, generate_password_hash

MIN_LENGTH = 10


def password_problem(password: str) -> str | None:
    """Why ``password`` is not acceptable, or None."""
    if len(password) < MIN_LENGTH:
        return f"use at least {MIN_LENGTH} characters"
    if len(password) > 200:
        return "use at most 200 characters"
    return None


def hash_password(password: str) -> str:
    return generate_password_hash(password)


def password_matches(stored_hash: str | None, password: str) -> bool:
    return bool(stored_hash) and check_password_hash(stored_hash, password)
