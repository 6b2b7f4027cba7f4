"""The typer application: every sub-command of ``gossamer`` except the fast paths in main.py."""

from __future__ import annotations

from typing import Annotated

import typer

from gossamer import __version__
from gossamer.cli import audit, certs, mesh, resources, stat, tap

__all__ = ["app", "run"]

app = typer.Typer(
    name="gossamer",
    help="Gossamer: a service mesh in Python.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"gossamer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit")] = False,
) -> None:
    """Gossamer: a service mesh in Python."""


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True,
                 "help_option_names": []}


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def control(ctx: typer.Context) -> None:
    """Run the control plane (config API, CA, config push)."""
    from gossamer.control.server import main as control_main

    raise typer.Exit(control_main(list(ctx.args)))


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def proxy(ctx: typer.Context) -> None:
    """Run a sidecar proxy (settings from GOSSAMER_PROXY_* variables)."""
    from gossamer.proxy.process.main import main as proxy_main

    raise typer.Exit(proxy_main())


resources.register(app)
mesh.register(app)
certs.register(app)
stat.register(app)
audit.register(app)
tap.register(app)


def run(args: list[str]) -> int:
    """Run the typer app on ``args``; return its exit code."""
    try:
        app(args=args, prog_name="gossamer", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
