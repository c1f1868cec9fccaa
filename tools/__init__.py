"""Restoration tools behind one declared interface (:mod:`tools.base`) and a registry."""

from tools.base import REGISTRY, Param, Tool, ToolError, ToolRegistry, ToolResult, ToolSpec, register_tool


def default_registry() -> ToolRegistry:
    """The process-wide registry filled with the built-in tools."""
    import tools.classical  # noqa: F401  (importing registers the classical tools)

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
