"""Per-lead stage summaries for reports (``nurture.analytics.journeys``); the team's email language.

The funnel, time in stage, cycle times and learned stage probabilities read these
instead of grouping every stage change; they start empty and the first report or
scheduler tick builds them. ``user.language`` picks the language of the emails
nurture sends a rep or manager (English for existing users).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 02:12:59.531996
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import nurture.models


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('language', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False,
                                      server_default='en'))
    op.create_table('journey_state',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('through_id', sa.BigInteger(), nullable=False),
    sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=False),
    sa.Column('refreshed_at', nurture.models.UtcDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('transition_tally',
    sa.Column('previous', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('from_stage', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('to_stage', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('won', sa.Boolean(), nullable=False),
    sa.Column('changes', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('previous', 'from_stage', 'to_stage', 'won')
    )
    op.create_table('lead_journey',
    sa.Column('lead_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('first_at', nurture.models.UtcDateTime(timezone=True), nullable=False),
    sa.Column('reached', sa.Integer(), nullable=True),
    sa.Column('won_at', nurture.models.UtcDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('lead_id')
    )
    op.create_table('stage_stay',
    sa.Column('lead_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('hundredths', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('lead_id', 'stage')
    )


def downgrade() -> None:
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('language')
    op.drop_table('stage_stay')
    op.drop_table('lead_journey')
    op.drop_table('transition_tally')
    op.drop_table('journey_state')
