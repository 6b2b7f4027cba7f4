"""The protocol-neutral request pipeline: its stages, the slots where features plug in, the filter
API.
"""
