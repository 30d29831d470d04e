"""Which validated epoch becomes ``best.pt``: the rule, apart from the training loop so it can be tested alone.

Two settings of ``train`` (both off by default: the raw validation score picks the epoch):

* ``select_ema: β`` ranks epochs by an exponential moving average of the validation score,
  ``s_1 = x_1``, ``s_t = β·s_{t-1} + (1-β)·x_t``, and keeps the weights of the epoch where ``s`` is best.
  With two or three validation images one lucky epoch is noise; the average needs the score to stay good
  (β = 0.7 weighs roughly the last three validations).
* ``select_min_spread: f`` (regression) never keeps an epoch whose validation predictions are
  (near-)constant: it is eligible only when the task's ``pred_spread`` (sd of the predictions over sd of
  the labels) is at least ``f``. A constant predictor at the label mean can have the best MAE of the
  early epochs while having learnt nothing.
"""
from __future__ import annotations

import math


class CheckpointSelector:
    """Feed it each validation's metrics in order; :meth:`update` says whether that epoch is the new best."""

    def __init__(self, mode: str, ema: float | None = None, min_spread: float | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode, self.ema, self.min_spread = mode, ema, min_spread
        self.smoothed: float | None = None
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def rule(self) -> str:
        """The rule in words, for the run's summary."""
        parts = [f"EMA of the validation score (beta {self.ema})" if self.ema else "raw validation score"]
        if self.min_spread:
            parts.append(f"only epochs whose prediction sd is at least {self.min_spread} of the label sd")
        return "; ".join(parts)

    def eligible(self, metrics: dict) -> bool:
        if not self.min_spread:
            return True
        spread = metrics.get("pred_spread")
        if spread is None:
            raise ValueError("train.select_min_spread: this task reports no pred_spread (it is for regression)")
        return math.isfinite(spread) and spread >= self.min_spread

    def update(self, epoch: int, metrics: dict) -> bool:
        """Smooth ``metrics["score"]`` into the running average; True when ``epoch`` is eligible and its
        smoothed score beats every earlier eligible epoch's."""
        score = float(metrics["score"])
        self.smoothed = score if self.smoothed is None or not self.ema else \
            self.ema * self.smoothed + (1 - self.ema) * score
        if not self.eligible(metrics):
            return False
        better = self.best is None or (self.smoothed < self.best if self.mode == "min" else self.smoothed > self.best)
        if better:
            self.best, self.best_epoch = self.smoothed, epoch
        return better

    def state_dict(self) -> dict:
        return {"smoothed": self.smoothed, "best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.smoothed, self.best, self.best_epoch = state["smoothed"], state["best"], state["best_epoch"]
