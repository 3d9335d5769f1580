"""Alembic environment: nurture's own metadata, batch mode for SQLite's ALTER TABLE."""

from alembic import context
from sqlmodel import SQLModel

from nurture import models  # noqa: F401  (registers the tables)
from nurture.db import engine_for

config = context.config
url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")

with engine_for(url).connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
