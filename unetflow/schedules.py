"""Learning-rate schedules (serialisable with the model, so a resumed run continues the schedule)."""
from __future__ import annotations

import math

import keras
from keras import ops

__all__ = ["WarmupSchedule"]


@keras.saving.register_keras_serializable(package="unetflow")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `learning_rate` over `warmup_steps`, then constant or cosine decay to 0.

    Parameters
    ----------
    learning_rate : float
    warmup_steps : int
    total_steps : int
        Last step of the cosine decay.
    decay : {"constant", "cosine"}
    """

    def __init__(self, learning_rate, warmup_steps=0, total_steps=1, decay="constant"):
        if decay not in ("constant", "cosine"):
            raise ValueError(f"`decay` must be 'constant' or 'cosine', got {decay!r}")
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), self.warmup_steps + 1)
        self.decay = decay

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.warmup_steps > 0:
            lr = lr * ops.minimum(1.0, (step + 1.0) / self.warmup_steps)
        if self.decay == "cosine":
            span = float(self.total_steps - self.warmup_steps)
            frac = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + ops.cos(math.pi * frac))
        return lr

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "total_steps": self.total_steps, "decay": self.decay}
