"""Opaque TCP: the relay, its own TLS stream, the explicit-mode listeners.
"""
