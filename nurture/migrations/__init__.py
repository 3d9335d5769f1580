"""Alembic migrations; run them with ``nurture db upgrade``."""
