"""Gossamer: a service mesh written in Python."""

from gossamer import compiled

__version__ = "0.1.0"
__all__ = ["__version__"]

compiled.install()  # the proxy's modules compiled by mypyc, when built and current
