"""HTTP/1.1 connections: the downstream and upstream protocol classes of both directions.
"""
