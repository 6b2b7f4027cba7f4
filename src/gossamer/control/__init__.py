"""The Gossamer control plane: config API, store, CA, registry, snapshot pushes.

Run it with :func:`gossamer.control.server.main` (``gossamer control``) or
``python -m gossamer.control``. Modules: ``store`` (SQLite), ``ca`` (certificates),
``registry`` (connected proxies), ``snapshots`` (per-proxy config), ``plane`` (the core),
``api`` (HTTP), ``stream`` (sidecar TLS stream), ``server`` (process wiring).
"""
