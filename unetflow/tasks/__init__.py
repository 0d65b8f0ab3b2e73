"""The label representations a U-Net can be trained for, one module each, and their registry.

>>> sorted(TASKS)
['boundary', 'distance', 'flow', 'flow3d']
>>> get_task("flow").channels
3

Adding a representation: a module with a :class:`Task` subclass, listed here, plus its configs
and tests.  See :mod:`unetflow.tasks.base` for what a task owns.
"""
from __future__ import annotations

import functools
from types import MappingProxyType

from .base import Task
from .boundary import BoundaryTask
from .distance import DistanceTask
from .flow import FlowTask
from .flow3d import Flow3DTask

__all__ = ["Task", "TASKS", "get_task", "array_kinds"]

#: name -> task, for every representation.
TASKS = {t.name: t for t in (BoundaryTask(), FlowTask(), DistanceTask(), Flow3DTask())}


def get_task(name) -> Task:
    """The task called `name` (a :class:`Task` is returned as it is).

    Raises
    ------
    ValueError
        If no task has that name, listing the known ones.
    """
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


@functools.cache
def array_kinds() -> MappingProxyType:
    """How augmentation resamples each array a crop may hold: the image, labels, and every task's targets.

    Derived once from the registry (it is read for every training crop); read-only.
    """
    kinds = {"image": "linear", "labels": "nearest"}
    for task in TASKS.values():
        for key, kind in task.kinds.items():
            if kinds.setdefault(key, kind) != kind:
                raise ValueError(f"tasks disagree on how to resample {key!r}")
    return MappingProxyType(kinds)
