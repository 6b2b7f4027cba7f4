"""CONNECT on the outbound port: tunnels for clients that reach the mesh through a proxy.

Every gRPC implementation honours ``grpc_proxy``/``https_proxy``/``http_proxy`` by opening a
tunnel with ``CONNECT greeter:80``, and HTTPS clients reach ``https://`` URLs through
``https_proxy`` the same way. The outbound connection parses the CONNECT head
(``OutboundConnection.connect_head``: authority form, no content, not inside a tunnel) and
``open_tunnel`` decides where the tunnel goes, by the CONNECT authority:

- a mesh service's HTTP, HTTP/2 or gRPC port: ``200`` at once, then the connection serves
  what the tunnel carries as if the app had connected directly (the HTTP/2 preface goes to the
  HTTP/2 path, anything else is parsed as HTTP/1.1), every request going to the CONNECT
  authority through the request pipeline: routes, retries, policy, metrics, mTLS to the
  destination. A TLS ClientHello there is answered with a TLS alert: the mesh encrypts
  between sidecars, the app should ask for ``http://`` (or the port be declared ``tcp``);
- a mesh service's ``tcp`` port: the TCP path (``TcpProxy.tunnel_to_service``): the mTLS
  connection to an endpoint is opened first and ``200`` sent once it is up, then bytes are
  relayed, counted as the service's TCP traffic;
- a host outside the mesh: as the egress policy says (``snapshot.egress``). Allowed, a plain
  TCP connection to the host (``TcpProxy.tunnel_to_host``), then ``200`` and the relay,
  counted under ``egress:<host>``; refused, ``403 egress-denied``.

A tunnel that cannot be opened is answered with the proxy's error response, naming the cause
in ``x-gossamer-error`` (404 ``unknown-service``, 403 ``egress-denied``, 503
``proxy-not-ready``/``discovery-timeout``/``no-healthy-endpoints``, 502 ``connect-failed``),
and the connection closed; never a silent close.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gossamer.protocol.http1 import ProxyError, connect_target
from gossamer.proxy.pipeline.outbound import destination, outside_refusal
from gossamer.proxy.snapshot.egress import external_host

if TYPE_CHECKING:
    from gossamer.proxy.http1.exchange import Exchange
    from gossamer.proxy.http1.outbound import OutboundConnection
    from gossamer.proxy.tcp.relay import Relay

__all__ = ["open_tunnel"]

log = logging.getLogger("gossamer.proxy")


async def open_tunnel(conn: OutboundConnection, ex: Exchange) -> None:
    """Open the tunnel CONNECT ``ex`` asks for (see the module docstring), or answer why not."""
    try:
        relay = await _relay_or_http(conn, ex)
    except ProxyError as exc:
        log.info("CONNECT %s refused (%s): %s", ex.authority.decode("latin-1"), exc.cause,
                 exc.detail)  # fmt: skip
        if conn.wants(ex):
            conn.respond_error(ex, exc.status, exc.cause, exc.detail)
        return
    if relay is None:
        return  # HTTP inside: served by the connection itself
    if relay.closed or not conn.wants(ex):
        relay.close()
        if conn.wants(ex):
            conn.respond_error(ex, 502, "upstream-reset", "the tunnel closed while connecting")
        return
    conn.tunnel_relay(ex, relay)


async def _relay_or_http(conn: OutboundConnection, ex: Exchange) -> Relay | None:
    """The relay for a TCP or egress tunnel, its upstream end connected; None when the tunnel
    carries HTTP to a mesh service (then already answered and handed to the connection)."""
    proxy = conn.proxy
    host, port = connect_target(ex.authority)
    service = await destination(proxy, ex.authority)
    if not conn.wants(ex):
        return None
    tunnels = proxy.tunnels
    if service is not None:
        if service.port_protocol(port) != "tcp":
            conn.tunnel_http(ex)
            return None
        if tunnels is None:
            raise ProxyError(503, "proxy-not-ready", "no TCP relays in this sidecar")
        relay: Relay = await tunnels.tunnel_to_service(service.key)
        return relay
    table = proxy.table
    authority = ex.authority.decode("latin-1")
    addresses = table.egress.where(host, port) if table is not None else None
    if addresses is None or external_host(authority) is None:
        raise outside_refusal(authority)
    if tunnels is None:
        raise ProxyError(503, "proxy-not-ready", "no TCP relays in this sidecar")
    relay = await tunnels.tunnel_to_host(host, addresses)
    return relay
