"""The ``gossamer`` command line.

``main.py`` is the console-script entry and dispatches ``gossamer proxy`` / ``gossamer control``
before anything heavy is imported; ``app.py`` builds the typer application from the command
modules (``resources.py``: apply/get/delete, ``mesh.py``: up/down/status/run).
"""
