"""Stage probabilities learned from the stage history, blended with the manager's.

``stage_probabilities(session)`` counts transitions over every ``StageChange``
(recorded and imported): each change paired with the lead's previous stage by
time. The counts are kept by ``analytics.journeys`` (its transition tally,
brought up to date first), so this reads a few hundred rows whatever the
history's size.

From the transition counts n(i -> j) the chain is an absorbing Markov chain:
terminal stages (won, lost, archived) absorb, and a stage no lead has left yet
absorbs with its manual probability (there is nothing to learn from). With Q the
transient-to-transient and R the transient-to-absorbing probabilities, the
fundamental matrix N = (I - Q)^-1 gives B = N R, the probability of ending in
each absorbing stage, and P(won | stage) = B v where v is 1 for won, 0 for lost
and archived, and the manual probability for a stage without exits.

The learned value is blended with the manual one as a Beta prior worth
``prior_weight`` leads (pipeline.yaml): blended = (w * manual + n * learned) /
(w + n), where n is the number of leads seen leaving the stage. With no history
the manual number stands; with thousands of leads the data decides.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sqlmodel import Session

from .analytics.journeys import transition_counts
from .pipeline import PipelineConfig, stored_pipeline


@dataclass
class StageProbability:
    key: str
    manual: float
    learned: float | None  # None: no lead has left this stage yet
    blended: float
    entered: int  # entries into the stage (a lead that comes back counts again)
    advanced: int  # moves from it to a later stage of the chain
    won: int  # entries by leads that were won in the end
    exits: int  # moves out of it: the evidence behind ``learned``
    conversion_to_next: float | None  # advanced / exits

    def as_dict(self) -> dict:
        return asdict(self)


def absorbing_won_probability(config: PipelineConfig, counts: np.ndarray, manual: np.ndarray) -> np.ndarray:
    """P(won | stage) for every stage, from the transition count matrix (rows: from, columns: to)."""
    keys = config.keys
    exits = counts.sum(axis=1)
    value = np.zeros(len(keys))  # what reaching each absorbing stage is worth
    absorbing = []
    for i, key in enumerate(keys):
        stage = config.stage(key)
        if stage.terminal or exits[i] == 0:
            absorbing.append(i)
            value[i] = 1.0 if stage.won else 0.0 if stage.terminal else manual[i]
    transient = [i for i in range(len(keys)) if i not in absorbing]
    result = value.copy()
    if transient:
        probabilities = counts[transient] / exits[transient][:, None]
        q = probabilities[:, transient]
        r = probabilities[:, absorbing]
        fundamental = np.linalg.pinv(np.eye(len(transient)) - q)  # pinv: a loop no lead ever left is singular
        result[transient] = np.clip(fundamental @ r @ value[absorbing], 0.0, 1.0)
    return result


def blend(manual: float, learned: float | None, observations: int, prior_weight: float) -> float:
    """The Beta posterior mean: the manual probability is a prior worth ``prior_weight`` observations."""
    if learned is None or observations + prior_weight == 0:
        return manual
    return (prior_weight * manual + observations * learned) / (prior_weight + observations)


def stage_probabilities(session: Session, config: PipelineConfig | None = None,
                        wait: bool = True) -> dict[str, StageProbability]:
    """Manual, learned and blended P(won | stage) for every stage of the pipeline, with counts.

    ``wait=False``: when the counts cannot be brought up to date at once (``journeys.refresh``), use them as they are.
    """
    config = config or stored_pipeline(session)
    keys = config.keys
    index = {key: i for i, key in enumerate(keys)}
    counts = np.zeros((len(keys), len(keys)))
    entered = np.zeros(len(keys), dtype=int)
    won = np.zeros(len(keys), dtype=int)
    for previous, origin, to, lead_won, count in transition_counts(session, config, wait):
        source = previous if previous is not None else origin
        if previous is None and origin in index:  # the lead's first recorded stage was entered before the history
            entered[index[origin]] += count
            won[index[origin]] += count * lead_won
        if to in index:
            entered[index[to]] += count
            won[index[to]] += count * lead_won
        if source in index and to in index and source != to:
            counts[index[source], index[to]] += count
    manual = np.array([config.stage(key).probability for key in keys])
    learned_all = absorbing_won_probability(config, counts, manual)
    chain = config.chain
    result = {}
    for key, i in index.items():
        stage = config.stage(key)
        exits = int(counts[i].sum())
        advanced = int(sum(counts[i, index[k]] for k in chain if config.is_forward(key, k)))
        observations = int(entered[i]) if stage.terminal else exits
        learned = float(learned_all[i]) if observations else None
        result[key] = StageProbability(
            key=key, manual=stage.probability, learned=learned,
            blended=blend(stage.probability, learned, observations, config.prior_weight),
            entered=int(entered[i]), advanced=advanced, won=int(won[i]), exits=exits,
            conversion_to_next=advanced / exits if exits and key in chain else None)
    return result
