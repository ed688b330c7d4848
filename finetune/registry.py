"""Tasks register themselves by name; ``get_task(name)`` finds one (importing the task modules
on first use, so ``xfm-finetune --task NAME`` lists every task that exists)."""
from __future__ import annotations

_TASKS: dict[str, type] = {}


def register(name: str):
    """Class decorator: ``@register("glue")`` makes the task available as ``--task glue``."""

    def wrap(cls):
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} registered twice ({_TASKS[name].__module__}, {cls.__module__})")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    import xfm.finetune.tasks  # noqa: F401  (imports every task module, which registers it)


def task_names() -> list[str]:
    _load_all()
    return sorted(_TASKS)


def get_task(name: str) -> type:
    _load_all()
    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]
