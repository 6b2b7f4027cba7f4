"""Entry point of the ``gossamer`` console script.

``gossamer proxy`` runs in every pod, so it must not pay for typer, rich or pydantic: ``main``
looks at the first argument before importing anything and hands ``proxy`` (and ``control``)
straight to their own entry points.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["proxy"]:
        from gossamer.proxy.process.main import main as proxy_main

        # the sidecar reads flags from sys.argv[1:]; drop the sub-command word
        sys.argv = [f"{sys.argv[0]} proxy", *args[1:]]
        return proxy_main()
    if args[:1] == ["control"]:
        from gossamer.control.server import main as control_main

        return control_main(args[1:])
    from gossamer.cli.app import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
