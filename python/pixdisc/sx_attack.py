"""The S(x) attack under its documented path ``pixdisc.sx_attack``; the code lives in :mod:`pixdisc.attacks.sx`."""

from .attacks.sx import SearchBudget, search_members, sx_attack

__all__ = ["SearchBudget", "search_members", "sx_attack"]
