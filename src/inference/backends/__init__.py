"""Backends that ship with the core distribution (standard library only)."""
