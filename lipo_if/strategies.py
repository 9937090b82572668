"""The strategies of the selection experiment (``lipo-if run``): their names, which are measured at
every k, which are test-blind, and one planned retraining (:class:`Selection`).

``original`` is the trained model; ``baseline`` the same retraining with nothing added; the
``influence_*`` strategies are top-k selections under each guard (``influence_topk`` = the
configured guard); ``crossfit`` ranks by cross-fitted influence; ``random`` and ``all_external`` are controls;
``oracle`` ranks by influence on the *test* set — a leaky ceiling, never a method.
``filter@z`` adds every eligible row of suspicion ≤ z and ``filter`` is the ``filter@z`` of lowest
validation RMSE. The report's ``influence`` entry is the experiment's *method*
(:data:`METHODS`; by default ``filter``, the one that paid in ``lipo-if benchmark``).
"""
from __future__ import annotations

from dataclasses import dataclass

#: metrics recorded for every retraining
METRICS = ("test_rmse", "test_mae", "test_r2", "val_rmse", "val_mae")
#: strategies measured at every k (the others are measured once per seed)
K_STRATEGIES = ("influence_topk", "influence_unguarded", "influence_residual", "influence_greedy", "influence_residual_greedy",
                "crossfit", "random", "oracle")
#: strategy name of the top-k influence selection under each guard (besides ``influence``, the configured guard)
GUARD_STRATEGY = {"none": "influence_unguarded", "residual": "influence_residual", "greedy": "influence_greedy",
                  "residual+greedy": "influence_residual_greedy"}
#: the test-blind selections whose recovery of the oracle's gain is reported
TEST_BLIND = ("influence_topk", "influence_unguarded", "influence_residual", "influence_greedy", "influence_residual_greedy", "crossfit", "random")
FIXED_STRATEGIES = ("original", "baseline", "all_external", "influence_threshold", "filter")
#: what the report's ``influence`` entry (the selection a user of ``lipo-if run`` gets) can be
METHODS = ("filter", "influence_topk")
DIAGNOSTIC_NOTE = "diagnostic only: ranks by influence on the TEST set (leaky ceiling), never a selection method"


def k_label(k: float) -> str:
    """Stable text form of a k: ``"50"`` for a count, ``"0.1"`` for a fraction."""
    return str(int(k)) if k >= 1 else f"{k:g}"



@dataclass
class Selection:
    """One retraining to do: a strategy, its k (None for fixed strategies) and the external rows."""

    strategy: str
    k: float | None
    rows: list[int]

