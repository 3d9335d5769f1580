"""The pipeline's forward path: the open stages in order, ending at won.

Lost, cold and other terminal stages are off the path: a lead that moves there
has dropped out at the furthest stage it had reached. A lead that skips stages
(contacted straight to proposal) counts as having passed the skipped ones, as a
funnel reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import Session

from ..errors import NurtureError
from ..pipeline import PipelineConfig, stored_pipeline


class AnalyticsError(NurtureError):
    """An analytics question that cannot be answered as asked; the message says why."""


@dataclass(frozen=True)
class Chain:
    keys: tuple[str, ...]  # forward path, the won stage last
    names: dict[str, str]
    closed: frozenset[str]  # lost, cold, archived...: off the path

    @property
    def won(self) -> str:
        return self.keys[-1]

    @property
    def first(self) -> str:
        return self.keys[0]

    def index(self, key: str) -> int:
        try:
            return self.keys.index(key)
        except ValueError:
            raise AnalyticsError(f"unknown stage {key!r}; the pipeline's stages are: {', '.join(self.keys)}") from None

    def transitions(self) -> list[tuple[str, str]]:
        """(stage, next stage) for every step of the path."""
        return list(zip(self.keys, self.keys[1:]))

    def position(self, column) -> sa.ColumnElement:
        """SQL: the path index of the stage named in ``column`` (NULL when off the path)."""
        return sa.case({key: i for i, key in enumerate(self.keys)}, value=column, else_=sa.null())

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "Chain":
        """From the checked pipeline (``nurture.pipeline``): its ``next:`` chain, won last."""
        keys = tuple(config.chain)
        return cls(keys=keys, names={s.key: s.name for s in config.ordered},
                   closed=frozenset(k for k in config.keys if k not in keys))


def load_chain(session: Session) -> Chain:
    """The chain of the pipeline last loaded into this database (the shipped one before any)."""
    return Chain.from_config(stored_pipeline(session))
