"""The sidecar process: start-up, settings, the admin server, the control-plane client, GC policy.
"""
