"""The multi-process sidecar: the supervisor, its workers and the channels between them.
"""
