"""Restoration tools behind one declared interface (:mod:`tools.base`) and a registry."""

from tools.base import REGISTRY, Param, Tool, ToolError, ToolRegistry, ToolResult, ToolSpec, register_tool

_USER_TOOLS_LOADED = False


def default_registry() -> ToolRegistry:
    """The process-wide registry: the built-in tools plus the user checkpoints of ``restora tools add``."""
    global _USER_TOOLS_LOADED
    import tools.classical  # noqa: F401  (importing registers the classical tools)

    if not _USER_TOOLS_LOADED:
        _USER_TOOLS_LOADED = True
        from tools.learned.user import load_user_tools

        load_user_tools(REGISTRY)
    return REGISTRY


__all__ = [
    "REGISTRY",
    "Param",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "ToolSpec",
    "default_registry",
    "register_tool",
]
