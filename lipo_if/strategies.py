"""The strategies of the selection experiment (``lipo-if run``): their names, which are measured at
every k, which are test-blind, and one planned retraining (:class:`Selection`).

``original`` is the trained model; ``baseline`` the same retraining with nothing added; the
``influence_*`` strategies are top-k selections under each guard (``influence_topk`` = the
configured guard); ``crossfit`` ranks by cross-fitted influence; ``random`` and ``all_external`` are controls;
``oracle`` ranks by influence on the *test* set — a leaky ceiling, never a method.
``filter@z`` adds every eligible row of suspicion ≤ z and ``filter`` is the ``filter@z`` of lowest
validation RMSE; ``weighted`` adds every eligible row, each weighted in the fine-tuning by its
probability of a clean label to a power (:func:`lipo_if.suspicion.clean_weights`). The report's ``influence``
entry is the experiment's *method* (:data:`METHODS`; ``ExperimentConfig.method`` holds the default,
the one that paid most in ``lipo-if benchmark``).
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
FIXED_STRATEGIES = ("original", "baseline", "all_external", "influence_threshold", "filter", "weighted")
#: what the report's ``influence`` entry (the selection a user of ``lipo-if run`` gets) can be
METHODS = ("weighted", "filter", "influence_topk")
DIAGNOSTIC_NOTE = "diagnostic only: ranks by influence on the TEST set (leaky ceiling), never a selection method"


def k_label(k: float) -> str:
    """Stable text form of a k: ``"50"`` for a count, ``"0.1"`` for a fraction."""
    return str(int(k)) if k >= 1 else f"{k:g}"



@dataclass
class Selection:
    """One retraining to do: a strategy, its k (None for fixed strategies), the external rows and
    (``weighted``) each row's weight in the fine-tuning's squared error (None: all 1)."""

    strategy: str
    k: float | None
    rows: list[int]
    weights: list[float] | None = None

    def ordered(self) -> tuple[list[int], list[float] | None]:
        """The rows sorted, and their weights in the same order (a retraining does not depend on
        the order the rows were chosen in)."""
        order = sorted(range(len(self.rows)), key=lambda i: self.rows[i])
        rows = [int(self.rows[i]) for i in order]
        return rows, None if self.weights is None else [float(self.weights[i]) for i in order]

    def key(self) -> tuple:
        """What identifies the retraining: the sorted rows (with their weights, when weighted)."""
        rows, weights = self.ordered()
        return tuple(rows) if weights is None else tuple(rows) + ("w",) + tuple(round(w, 9) for w in weights)

