"""Neophytos: client/server backup with delta sync both ways, on Twisted."""

__version__ = "0.1.0"
