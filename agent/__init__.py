"""Restora's agent: the LangGraph loop that perceives, plans, acts, verifies and traces."""

__version__ = "0.1.0"
