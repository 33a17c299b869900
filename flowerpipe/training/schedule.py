"""The from-scratch learning rate (warm-up, then cosine decay) and the time budget that sizes its epochs."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from flowerpipe.params import Train

log = logging.getLogger(__name__)


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int):
    """A Keras schedule: linear warm-up from lr/10 to lr, then cosine decay to 0 at total_steps.

    Keras's CosineDecay with warm-up, except that total_steps is a variable: a time budget that measures
    its epochs sets it while the run trains (the same values as CosineDecay while it is unchanged).
    """
    import keras
    from keras import ops

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self):
            self.total_steps = keras.Variable(float(total_steps), trainable=False, name="lr_total_steps")

        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm = float(warmup_steps)
            rising = lr / 10 + (lr - lr / 10) * step / max(warm, 1.0)
            done = ops.clip((step - warm) / ops.maximum(self.total_steps - warm, 1.0), 0.0, 1.0)
            return ops.where(step < warm, rising, 0.5 * lr * (1.0 + ops.cos(math.pi * done)))

        def get_config(self):
            return {"lr": lr, "warmup_steps": warmup_steps, "total_steps": float(self.total_steps.numpy())}

    return WarmupCosine()


def learning_rate_for(p: Train, phase: str, lr: float, epochs: int, steps: int):
    """The phase's learning rate: from scratch, a linear warm-up then cosine decay to 0 by the last step."""
    if phase != "scratch" or p.scratch_schedule == "constant":
        return lr
    return warmup_cosine(lr, min(p.scratch_warmup_epochs, epochs) * steps, epochs * steps)


@dataclass
class EpochBudget:
    """How many epochs fit a phase's time budget, refitted after every epoch from the epochs' measured times.

    The first epoch's time includes tracing, so later epochs' mean is used once there is one. While the
    learning rate is still warming up, and until that first tracing-free epoch is measured, the count may grow or
    shrink; after that it only shrinks (a slower machine, or one shared mid-run), so the schedule never climbs
    back up.
    """

    seconds: float
    cap: int  # train.scratch_epochs: never more than this
    warmup_epochs: int
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.epochs = self.cap

    def after_epoch(self, seconds: float) -> int:
        """Count one finished epoch of `seconds`; return the phase's epoch count from now on."""
        self.times.append(seconds)
        done = len(self.times)
        later = self.times[1:] or self.times
        per_epoch = max(sum(later) / len(later), 1e-9)
        fits = done + max(0, math.floor((self.seconds - sum(self.times)) / per_epoch))
        fits = min(self.cap, fits)
        self.epochs = fits if done <= max(self.warmup_epochs, 2) else min(self.epochs, fits)
        return self.epochs


def budget_for(p: Train, phase: str, epochs: int) -> EpochBudget | None:
    """train.scratch_minutes as an EpochBudget for the scratch phase (None: the phase runs all its epochs)."""
    if phase != "scratch" or not p.scratch_minutes:
        return None
    warmup = p.scratch_warmup_epochs if p.scratch_schedule == "cosine" else 0
    return EpochBudget(p.scratch_minutes * 60, epochs, warmup)


def fit_to_budget(budget: EpochBudget, seconds: Sequence[float], schedule, steps: int) -> bool:
    """Refit the epoch count after finished epochs (and the schedule's length with it); True once the phase is done.

    One call per epoch while training; one call for all the epochs an interrupted run trained, when it resumes.
    """
    before = budget.epochs
    for s in seconds:
        budget.after_epoch(s)
    if hasattr(schedule, "total_steps"):
        schedule.total_steps.assign(float(budget.epochs * steps))
    if budget.epochs != before:
        log.info("train.scratch_minutes=%g: %d epoch(s) in all fit the budget (%d trained in %.0f s, the last %.0f s)",
                 budget.seconds / 60, budget.epochs, len(budget.times), sum(budget.times), budget.times[-1])
    return len(budget.times) >= budget.epochs


@dataclass
class TimeBudget:
    """train.scratch_minutes for a fit() phase: the learning rate as a function of elapsed time over the budget.

    A linear warm-up over the first warmup_steps, then a cosine decay whose progress is the larger of the
    elapsed share of the budget and the share of the epoch cap trained, so it reaches 0 when either ends. A slow
    epoch (a shared machine) only moves the schedule along faster; the phase stops at the first step after which
    the last validation's time would no longer fit.
    """

    seconds: float
    lr: float
    warmup_steps: int
    total_steps: int  # the epoch cap's steps
    cosine: bool = True
    reserve: float = 0.0  # the last validation's seconds, kept free for the one after the last step
    warm_end: float | None = None  # elapsed seconds when the warm-up ended

    def rate(self, step: int, elapsed: float) -> float:
        """The learning rate for a step starting `elapsed` seconds into the phase."""
        if not self.cosine:
            return self.lr
        if step < self.warmup_steps:
            return self.lr / 10 + (self.lr - self.lr / 10) * step / self.warmup_steps
        if self.warm_end is None:
            self.warm_end = elapsed
        end = self.seconds - self.reserve
        by_time = (elapsed - self.warm_end) / max(end - self.warm_end, 1e-9)
        by_steps = (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1)
        done = min(1.0, max(0.0, by_time, by_steps))
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * done))

    def spent(self, elapsed: float, step_seconds: float = 0.0) -> bool:
        """Whether the step just finished (of step_seconds) leaves no time for another one and the validation."""
        return elapsed + step_seconds + self.reserve >= self.seconds


def time_budget_for(p: Train, phase: str, lr: float, epochs: int, steps: int) -> TimeBudget | None:
    """train.scratch_minutes as a TimeBudget for the scratch phase (None: the phase runs its epochs)."""
    if phase != "scratch" or not p.scratch_minutes:
        return None
    warmup = min(p.scratch_warmup_epochs, epochs) * steps
    return TimeBudget(p.scratch_minutes * 60, lr, warmup, epochs * steps, cosine=p.scratch_schedule == "cosine")
