"""Restoration tools behind one declared interface (:mod:`tools.base`) and a registry."""

from tools.base import REGISTRY, Param, Tool, ToolError, ToolRegistry, ToolResult, ToolSpec, register_tool

_USER_TOOLS_LOADED = False


def default_registry() -> ToolRegistry:
    """The process-wide registry: classical and learned tools plus the user checkpoints of ``restora tools add``.

    The learned tools (``nafnet_*``) are always catalogued; their weights load on first use and a tool whose
    weights are missing fails its step with an error naming the command that trains them.
    """
    global _USER_TOOLS_LOADED
    import tools.classical  # noqa: F401  (importing registers the classical tools)
    from tools.diffusion import register as register_diffusion
    from tools.learned import register_all

    register_all(include_user=False)
    register_diffusion(REGISTRY)

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
