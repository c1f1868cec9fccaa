"""Learned restorers: small NAFNet-class models trained here, and user checkpoints loaded through spandrel.

:func:`tools.default_registry` calls :func:`register_all`, which adds the learned tools to the process-wide
registry (a tool whose weights are missing fails its step with an error naming the command that trains them).
"""

from __future__ import annotations


def register_all(include_user: bool = True) -> list[str]:
    """Register the learned tools (and, by default, the catalogued user checkpoints); return their names."""
    from tools.base import REGISTRY
    from tools.learned import restorers

    names = []
    for cls in restorers.RESTORERS.values():
        REGISTRY.register(cls)  # idempotent; re-adds them if a test restored the registry meanwhile
        names.append(cls.spec.name)
    if include_user:
        from tools.learned.user import load_user_tools

        names += load_user_tools(REGISTRY)
    return names


def available_tasks() -> list[str]:
    """The tasks whose trained weights are present (package folder or ``$RESTORA_WEIGHTS``)."""
    from tools.learned.tasks import ALL_TASKS, has_weights, weights_dir

    return [task for task in ALL_TASKS if has_weights(weights_dir(task))]
