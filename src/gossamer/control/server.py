"""The control plane process: flags → settings, then the config API and the stream server
in one uvloop event loop, with graceful shutdown on SIGTERM/SIGINT.

``gossamer control`` calls :func:`main`; ``python -m gossamer.control`` does too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import uvicorn

from gossamer.config.duration import parse_duration
from gossamer.control.api import create_app
from gossamer.control.ca import CertificateAuthority, import_issuer
from gossamer.control.datadir import (
    ensure_serving_cert,
    load_or_create_admin_token,
    prepare_data_dir,
)
from gossamer.control.plane import ControlPlane
from gossamer.control.serving_tls import ServingTls
from gossamer.control.settings import (
    DEFAULT_CERT_LIFETIME,
    ControlSettings,
    HostPort,
    default_data_dir,
    is_loopback,
)
from gossamer.control.store import Store
from gossamer.control.stream import StreamServer, server_ssl_context

__all__ = ["build_parser", "main", "parse_settings", "serve"]

log = logging.getLogger("gossamer.control")
API_SHUTDOWN_GRACE = 3


def _bind(address: HostPort) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address.host, address.port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _ready_line(api: str, stream: str) -> None:
    print(f"gossamer control plane ready api={api} stream={stream}", flush=True)


async def serve(
    settings: ControlSettings,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str, str], None] = _ready_line,
) -> None:
    """Run the control plane until ``stop`` is set (or SIGTERM/SIGINT when not given)."""
    data_dir = prepare_data_dir(settings.data_dir)
    admin_token = load_or_create_admin_token(data_dir)
    if settings.ca_files is not None:
        cert_file, key_file, bundle_file = settings.ca_files
        import_issuer(data_dir / "ca", cert_file.read_bytes(), key_file.read_bytes(),
                      bundle_file.read_bytes())  # fmt: skip
        log.info("the mesh's certificates are signed by %s", cert_file)
    ca = CertificateAuthority.load_or_create(data_dir, settings.trust_domain)
    api_socket = _bind(settings.api_addr)
    store = Store(data_dir / "store.db")
    loop = asyncio.get_running_loop()
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    plane = ControlPlane(settings, store, ca)
    stream_tls, api_tls = _serving_tls(settings, data_dir, plane)
    stream = StreamServer(
        plane, settings.stream_addr.host, settings.stream_addr.port, stream_tls.context
    )
    api = _api_server(settings, plane, admin_token, api_tls.context)
    try:
        await plane.start()
        stream_host, stream_port = await stream.start()
        await api.startup(sockets=[api_socket])
        api_task = asyncio.create_task(api.main_loop(), name="control-api-ticks")
        api_bound = api_socket.getsockname()
        scheme = "https://" if settings.api_tls else ""
        on_ready(
            scheme + str(HostPort(str(api_bound[0]), int(api_bound[1]))),
            str(HostPort(stream_host, stream_port)),
        )
        await stop.wait()
        log.info("shutting down")
        plane.stopping.set()
        api.should_exit = True
        await api_task
        await api.shutdown(sockets=[api_socket])
    finally:
        await stream.stop()
        await plane.stop()
        store.close()
        with contextlib.suppress(OSError):
            api_socket.close()


def _serving_tls(
    settings: ControlSettings, data_dir: Path, plane: ControlPlane
) -> tuple[ServingTls, ServingTls]:
    """The stream's and the API's TLS, made again whenever the plane's trust changes (a root
    rotation): the serving certificate is issued by the signer of the moment, and
    ``ca/root.crt`` holds the bundle of the moment (``control/rotation.py``)."""
    names = (settings.api_addr.host, settings.stream_addr.host, *settings.tls_sans)
    cert_path, key_path = ensure_serving_cert(data_dir, plane.ca, names)
    stream_tls = ServingTls(
        lambda: server_ssl_context(cert_path, key_path, data_dir / "ca" / "root.crt")
    )
    api_tls = ServingTls(lambda: api_ssl_context(cert_path, key_path))

    def trust_changed() -> None:
        ensure_serving_cert(data_dir, plane.ca, names)  # issued again by a new signer
        stream_tls.reload()
        api_tls.reload()

    plane.on_trust_change = trust_changed
    return stream_tls, api_tls


def api_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The config API's TLS server context (``--api-tls``): the serving certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def _api_server(
    settings: ControlSettings, plane: ControlPlane, admin_token: str, tls: ssl.SSLContext
) -> uvicorn.Server:
    """The config API's server (over TLS with ``tls`` when ``--api-tls``), ready for
    ``startup`` on our own socket."""
    config = uvicorn.Config(
        create_app(plane, admin_token),
        lifespan="off",
        log_config=None,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=API_SHUTDOWN_GRACE,
        server_header=False,
    )
    config.load()
    if settings.api_tls:  # uvicorn listens with the context it finds here after load()
        config.ssl = tls
    api = uvicorn.Server(config)
    api.lifespan = config.lifespan_class(config)
    return api


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gossamer control", description="Run the Gossamer control plane."
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="state directory (default: $GOSSAMER_DATA_DIR or ~/.gossamer)",
    )
    parser.add_argument("--api-addr", default="127.0.0.1:15010", help="config API HOST:PORT")
    parser.add_argument(
        "--api-tls",
        action="store_true",
        help="serve the config API over TLS with the control plane's certificate (from the "
        "mesh CA); required when --api-addr is not a loopback address",
    )
    parser.add_argument(
        "--tls-san",
        action="append",
        default=[],
        metavar="NAME",
        help="an extra DNS name or IP address for the serving certificate (repeatable)",
    )
    parser.add_argument(
        "--stream-addr", default="127.0.0.1:15012", help="sidecar stream (TLS) HOST:PORT"
    )
    parser.add_argument("--trust-domain", default="gossamer.local")
    _add_ca_flags(parser)
    parser.add_argument(
        "--endpoint-grace",
        type=float,
        default=3.0,
        help="seconds an endpoint outlives its closed stream",
    )
    parser.add_argument(
        "--restore-grace",
        type=float,
        default=30.0,
        help="seconds a proxy the previous control plane knew keeps its endpoint while it "
        "reconnects after a restart",
    )
    parser.add_argument(
        "--cert-lifetime",
        default="24h",
        help="default workload certificate lifetime (MeshConfig overrides)",
    )
    parser.add_argument(
        "--peer-timeout",
        type=float,
        default=15.0,
        help="seconds of silence after which a sidecar stream is dropped",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    return parser


def _add_ca_flags(parser: argparse.ArgumentParser) -> None:
    """Bring your own CA (``control/ca.py`` ``import_issuer``): all three flags or none."""
    parser.add_argument(
        "--ca-cert",
        type=Path,
        help="bring your own CA: an intermediate under your organisation's root (PEM; any "
        "intermediates above it may follow), which signs every workload certificate",
    )
    parser.add_argument("--ca-key", type=Path, help="the private key of --ca-cert (PEM)")
    parser.add_argument(
        "--ca-bundle", type=Path, help="the root(s) every peer is to trust (PEM): the trust bundle"
    )


def parse_settings(argv: list[str] | None = None) -> ControlSettings:
    """Flags → settings; exits with status 2 and a message on bad flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        api_addr = HostPort.parse(args.api_addr)
        stream_addr = HostPort.parse(args.stream_addr)
        lifetime = parse_duration(args.cert_lifetime) if args.cert_lifetime else None
    except ValueError as exc:
        parser.error(str(exc))
    if not args.api_tls and not is_loopback(api_addr.host):
        parser.error(
            f"--api-addr {api_addr} is not a loopback address: the config API carries the "
            "admin token and the mesh's configuration, so off this machine it is served only "
            "over TLS (add --api-tls)"
        )
    if args.restore_grace < 0:
        parser.error("--restore-grace must not be negative")
    if args.endpoint_grace < 0:
        parser.error("--endpoint-grace must not be negative")
    if args.peer_timeout <= 0:
        parser.error("--peer-timeout must be positive")
    ca_files = (args.ca_cert, args.ca_key, args.ca_bundle)
    if any(ca_files) and not all(ca_files):
        parser.error("--ca-cert, --ca-key and --ca-bundle go together")
    return ControlSettings(
        data_dir=args.data_dir or default_data_dir(),
        api_addr=api_addr,
        stream_addr=stream_addr,
        trust_domain=args.trust_domain,
        endpoint_grace=args.endpoint_grace,
        cert_lifetime=lifetime or DEFAULT_CERT_LIFETIME,
        log_level=args.log_level,
        peer_timeout=args.peer_timeout,
        ping_interval=min(5.0, args.peer_timeout / 3),
        restore_grace=args.restore_grace,
        api_tls=args.api_tls,
        tls_sans=tuple(args.tls_san),
        ca_files=ca_files if all(ca_files) else None,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gossamer control``; returns the exit status."""
    settings = parse_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency
        runner = asyncio.Runner()
    else:
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    try:
        with runner:
            runner.run(serve(settings))
    except OSError as exc:
        log.error("cannot start the control plane: %s", exc)
        return 1
    except ValueError as exc:
        log.error("cannot start the control plane: %s", exc)
        return 1
    return 0
