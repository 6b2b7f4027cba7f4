"""The workload's credentials: its current key, certificate and trust bundle, and the TLS contexts
built from them.

``Credentials`` owns the sidecar's private workdir (mode 0700) and three ``ssl.SSLContext``
objects that live as long as the process: ``server_context`` (the inbound mTLS port),
``client_context`` (mTLS to other sidecars) and ``control_context`` (the control-plane stream),
plus one client context per ALPN protocol (``alpn_client_context``: ``h2`` and ``gossamer-tcp``
to other sidecars; ALPN is a property of a context, so the shared client context, which offers
none, cannot serve them). ``install`` writes a new certificate to disk and loads it into all of
those same contexts in place, so new handshakes present the new certificate while open
connections carry on undisturbed.

This module must stay free of ``cryptography`` (DESIGN §3): keys and CSRs come from the
``gossamer.identity.keygen`` child process, and the few certificate fields the sidecar needs
(URI SAN, notAfter) are read with a tiny DER walk or from ``getpeercert()``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import ssl
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gossamer.identity.spiffe import SpiffeId

__all__ = [
    "CONTROL_PLANE_NAMESPACE",
    "CONTROL_PLANE_SERVICE_ACCOUNT",
    "CertificateInfo",
    "CredentialFiles",
    "Credentials",
    "CredentialsError",
    "KeygenError",
    "TlsContexts",
    "build_alpn_context",
    "bundle_digest",
    "generate_key_and_csr",
    "is_control_plane_id",
    "mtls_client_context",
    "mtls_server_context",
    "no_session_tickets",
    "parse_certificate",
    "peer_spiffe_id",
    "pem_certificates",
    "write_atomic",
]

log = logging.getLogger(__name__)

CONTROL_PLANE_NAMESPACE = "gossamer-system"
CONTROL_PLANE_SERVICE_ACCOUNT = "control-plane"

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
BUNDLE_FILE = "bundle.pem"
PENDING_KEY_PREFIX = "pending-"

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.+?)\s*-----END CERTIFICATE-----", re.DOTALL
)
_SAN_OID = bytes.fromhex("0603551d11")  # OBJECT IDENTIFIER 2.5.29.17 (subjectAltName)



def build_alpn_context(
    protocol: str, bundles: Iterable[str], cert_path: Path, key_path: Path
) -> ssl.SSLContext | None:
    """An mTLS client context offering only ``protocol`` by ALPN, with the given trust
    bundles (PEM text) and our cert/key files; None (logged) when they do not load."""
    ctx = mtls_client_context()
    ctx.set_alpn_protocols([protocol])
    try:
        for text in bundles:
            ctx.load_verify_locations(cadata=text)
        ctx.load_cert_chain(cert_path, key_path)
    except (OSError, ssl.SSLError, ValueError) as exc:
        log.warning("cannot make the %s client context: %s", protocol, exc)
        return None
    return ctx

class CredentialsError(Exception):
    """A certificate, key or bundle could not be read, parsed or installed."""


class KeygenError(CredentialsError):
    """The keygen child process failed; the message carries its stderr."""


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temporary file (created with ``mode``) and a rename."""
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- certificate fields


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """The fields of a leaf certificate the sidecar cares about."""

    not_after: float  # unix seconds
    uris: tuple[str, ...]  # URI SANs, in certificate order

    @property
    def spiffe_id(self) -> SpiffeId | None:
        for uri in self.uris:
            if uri.startswith("spiffe://"):
                try:
                    return SpiffeId.parse(uri)
                except ValueError:
                    return None
        return None


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """Read one DER tag-length header at ``pos``; return (tag, content start, content end)."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("truncated DER")
    return tag, pos, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        tag, cstart, cend = _tlv(data, start)
        out.append((tag, cstart, cend))
        start = cend
    return out


def _der_time(tag: int, text: bytes) -> float:
    value = text.decode("ascii")
    if not value.endswith("Z"):
        raise ValueError("certificate time is not UTC")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ
        year = int(value[0:2])
        year += 1900 if year >= 50 else 2000
        rest = value[2:-1]
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        year, rest = int(value[0:4]), value[4:-1]
    else:
        raise ValueError("unexpected time tag")
    parts = (int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]), int(rest[8:10]))
    return float(_utc_seconds(year, *parts))


def _utc_seconds(year: int, month: int, day: int, hour: int, minute: int, second: int) -> int:
    """Seconds since the epoch of a UTC civil time (the days-from-civil algorithm; no
    ``calendar`` import in the sidecar for one conversion)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hour * 3600 + minute * 60 + second


def parse_certificate(pem: bytes) -> CertificateInfo:
    """Read notAfter and the URI SANs of the first certificate in ``pem`` (no cryptography)."""
    match = _PEM_CERT.search(pem)
    if match is None:
        raise CredentialsError("no PEM certificate found")
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        _, cstart, _ = _tlv(der, 0)
        _, tstart, tend = _tlv(der, cstart)  # tbsCertificate
        fields = _children(der, tstart, tend)
        if fields and fields[0][0] == 0xA0:  # explicit version
            fields = fields[1:]
        # serial, signature, issuer, validity, subject, spki, [1], [2], [3] extensions
        vstart, vend = fields[3][1], fields[3][2]
        times = _children(der, vstart, vend)
        not_after = _der_time(times[1][0], der[times[1][1] : times[1][2]])
        uris: list[str] = []
        for tag, estart, _ in fields[6:]:
            if tag != 0xA3:
                continue
            _, sstart, send = _tlv(der, estart)
            for _, xstart, xend in _children(der, sstart, send):
                if der[xstart : xstart + len(_SAN_OID)] != _SAN_OID:
                    continue
                ostart = _children(der, xstart, xend)[-1][1]  # extnValue OCTET STRING
                _, nstart, nend = _tlv(der, ostart)
                for ntag, gstart, gend in _children(der, nstart, nend):
                    if ntag == 0x86:  # [6] uniformResourceIdentifier
                        uris.append(der[gstart:gend].decode("ascii"))
        return CertificateInfo(not_after=not_after, uris=tuple(uris))
    except (ValueError, IndexError) as exc:
        raise CredentialsError(f"cannot parse certificate: {exc}") from exc


# --------------------------------------------------------------------------- peer identities


def peer_spiffe_id(peer: ssl.SSLObject | ssl.SSLSocket | Mapping[str, Any] | None) -> str | None:
    """The first ``spiffe://`` URI SAN of a verified peer (an SSL object or ``getpeercert()``)."""
    if peer is None:
        return None
    cert = peer.getpeercert() if isinstance(peer, ssl.SSLObject | ssl.SSLSocket) else peer
    if not cert:
        return None
    for entry in cert.get("subjectAltName", ()):
        value = entry[1]
        if entry[0] == "URI" and isinstance(value, str) and value.startswith("spiffe://"):
            return value
    return None


def is_control_plane_id(uri: str | None, trust_domain: str | None = None) -> bool:
    """True when ``uri`` names the control plane (in ``trust_domain`` when one is given)."""
    if uri is None:
        return False
    try:
        sid = SpiffeId.parse(uri)
    except ValueError:
        return False
    return (
        sid.namespace == CONTROL_PLANE_NAMESPACE
        and sid.service_account == CONTROL_PLANE_SERVICE_ACCOUNT
        and (trust_domain is None or sid.trust_domain == trust_domain)
    )


# --------------------------------------------------------------------------- key generation


async def generate_key_and_csr(
    workdir: Path, hint: str, *, timeout: float = 30.0
) -> tuple[Path, bytes]:
    """Run the keygen child; return (path of the new key in ``workdir``, PEM CSR)."""
    key_path = workdir / f"{PENDING_KEY_PREFIX}{os.urandom(6).hex()}.key"
    env = dict(os.environ)
    src_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gossamer.identity.keygen",
        "--key-out",
        str(key_path),
        "--identity-hint",
        hint,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        key_path.unlink(missing_ok=True)
        raise KeygenError(f"keygen did not finish within {timeout:g} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0 or b"BEGIN CERTIFICATE REQUEST" not in out:
        key_path.unlink(missing_ok=True)
        message = err.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise KeygenError(f"keygen failed: {message}")
    return key_path, out


# --------------------------------------------------------------------------- credentials


def mtls_client_context() -> ssl.SSLContext:
    """A fresh TLS 1.2+ client context requiring a peer certificate (no certificate loaded)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # peers are checked by SPIFFE URI SAN, not host name
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def mtls_server_context() -> ssl.SSLContext:
    """A fresh TLS 1.2+ server context requiring a client certificate (none loaded), which
    sends no TLS 1.3 session tickets (``no_session_tickets``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    no_session_tickets(ctx)
    return ctx


def no_session_tickets(ctx: ssl.SSLContext) -> None:
    """Have a server context send no TLS 1.3 session tickets (OpenSSL sends two by default).

    Mesh clients never resume: a sidecar pools long-lived connections, and Python's client
    resumes only when handed a session. Yet a client keeps every ticket it is sent for the
    life of the connection, each a session with its own copy of the server's certificate:
    16 KiB per connection for the two (bench/RESULTS.md, "Session 13": the mesh pair's client
    sidecar holds 0.3-0.5 MiB less after its load). The server also saves encrypting two
    tickets per handshake."""
    ctx.num_tickets = 0


class TlsContexts(Protocol):
    """Where the data path gets its TLS contexts, read when it accepts or opens a connection:
    ``Credentials`` or a worker's ``WorkerCredentials``. A renewal loads into the same contexts;
    a root leaving the trust bundle replaces them (an ``SSLContext``'s trust store only grows),
    so holders must not keep a context across connections."""

    @property
    def server_context(self) -> ssl.SSLContext: ...

    @property
    def client_context(self) -> ssl.SSLContext: ...

    def offer_alpn(self, protocols: list[str]) -> None: ...

    def alpn_client_context(self, protocol: str) -> ssl.SSLContext | None: ...

    def expiries(self) -> list[tuple[str, str, float]]: ...


def pem_certificates(pem: bytes) -> list[bytes]:
    """The certificates of a PEM bundle, each as its normalised base64 body (how roots are
    compared: the same root written with other line breaks is the same root)."""
    return [b"".join(m.group(1).split()) for m in _PEM_CERT.finditer(pem)]


def pem_bundle(bodies: Iterable[bytes]) -> str:
    """PEM text of certificates given as ``pem_certificates`` bodies."""
    out = []
    for body in bodies:
        lines = [body[i : i + 64].decode("ascii") for i in range(0, len(body), 64)]
        body_text = "\n".join(lines)
        out.append(f"-----BEGIN CERTIFICATE-----\n{body_text}\n-----END CERTIFICATE-----\n")
    return "".join(out)


def bundle_digest(pem: bytes) -> str:
    """The trust bundle's fingerprint: SHA-256 over its roots in order (how the control plane
    learns which bundle a sidecar trusts)."""
    return _roots_digest(pem_certificates(pem))


def _roots_digest(roots: list[bytes]) -> str:
    return hashlib.sha256(b"\n".join(roots)).hexdigest()


class CredentialFiles:
    """What every holder of a workload identity shares (``Credentials``, and a worker
    process's copy): where the certificate, key and trust bundle live in ``workdir``, the
    roots trusted now, and the TLS contexts made from them: the server context, the client
    context, and one client context per ALPN protocol, made on first use.

    Roots are added to the live contexts in place; when a root leaves the bundle every context
    is built again without it and replaces the old one (``_rebuild``): connections open on the
    old contexts carry on, new ones use the new contexts."""

    workdir: Path
    _info: CertificateInfo | None
    _alpn_contexts: dict[str, ssl.SSLContext]
    _roots: list[bytes]  # the trusted roots (``pem_certificates`` bodies), in bundle order
    _server_alpn: list[str]
    _issuers: list[float]  # when each certificate after the leaf in our chain expires
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext

    @property
    def cert_path(self) -> Path:
        return self.workdir / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.workdir / KEY_FILE

    @property
    def bundle_path(self) -> Path:
        return self.workdir / BUNDLE_FILE

    @property
    def has_bundle(self) -> bool:
        return bool(self._roots)

    @property
    def bundle_digest(self) -> str | None:
        """The fingerprint (``bundle_digest``) of the roots trusted now; None without any."""
        return _roots_digest(self._roots) if self._roots else None

    def _trust_bundles(self) -> list[str]:
        """The trusted CA bundle, as PEM text (what a new context is given)."""
        return [pem_bundle(self._roots)] if self._roots else []

    def _live_contexts(self) -> tuple[ssl.SSLContext, ...]:
        return (self.server_context, self.client_context, *self._alpn_contexts.values())

    def offer_alpn(self, protocols: list[str]) -> None:
        """Offer ``protocols`` by ALPN on the server context, now and after every rebuild."""
        self._server_alpn = list(protocols)
        self.server_context.set_alpn_protocols(self._server_alpn)

    def _trust(self, pem: bytes, *, only: bool) -> bool:
        """Trust the roots of ``pem``; with ``only``, exactly those (roots not in ``pem``
        leave). Returns whether the contexts were rebuilt. Raises ``ssl.SSLError`` or
        ``ValueError`` for a bundle OpenSSL refuses (nothing changed then)."""
        roots = pem_certificates(pem)
        if not roots:
            return False
        mtls_client_context().load_verify_locations(cadata=pem_bundle(roots))  # refuse first
        if only and any(root not in roots for root in self._roots):
            self._rebuild(roots)
            return True
        added = [root for root in roots if root not in self._roots]
        if added:
            text = pem_bundle(added)
            for ctx in self._live_contexts():
                ctx.load_verify_locations(cadata=text)
            self._roots += added
        return False

    def _rebuild(self, roots: list[bytes]) -> None:
        """Fresh contexts trusting ``roots`` alone, with the current certificate. Nothing
        changes when one does not load (the caller's error): the roots are taken only once
        every context is made."""
        bundle = pem_bundle(roots)
        fresh = self._fresh_contexts()
        for ctx in fresh.values():
            ctx.load_verify_locations(cadata=bundle)
            if self._info is not None:
                ctx.load_cert_chain(self.cert_path, self.key_path)
        if self._server_alpn:
            fresh["server_context"].set_alpn_protocols(self._server_alpn)
        for name, ctx in fresh.items():
            setattr(self, name, ctx)
        self._roots = roots
        self._alpn_contexts = {}  # made again on first use, from the new roots
        log.info("trust bundle now holds %d root(s); TLS contexts rebuilt", len(self._roots))

    def _fresh_contexts(self) -> dict[str, ssl.SSLContext]:
        """New, empty contexts for every attribute ``_rebuild`` replaces."""
        return {"server_context": mtls_server_context(), "client_context": mtls_client_context()}

    def expiries(self) -> list[tuple[str, str, float]]:
        """When the certificates this identity relies on expire (unix seconds): its own
        (``("workload", "", t)``), each intermediate its certificate came with
        (``("intermediate", "<n>", t)``, an operator's CA) and each root of its trust bundle
        (``("root", "<n>", t)``, in bundle order), for the expiry metric."""
        found: list[tuple[str, str, float]] = []
        if self._info is not None:
            found.append(("workload", "", self._info.not_after))
            found += [("intermediate", str(i), when) for i, when in enumerate(self._issuers)]
        for index, text in enumerate(pem_bundle([r]) for r in self._roots):
            try:
                not_after = parse_certificate(text.encode("ascii")).not_after
            except CredentialsError:
                continue
            found.append(("root", str(index), not_after))
        return found

    def _note_chain(self, cert_pem: bytes) -> None:
        """Remember when the intermediates after the leaf in ``cert_pem`` expire."""
        found = []
        for body in pem_certificates(cert_pem)[1:]:
            try:
                found.append(parse_certificate(pem_bundle([body]).encode("ascii")).not_after)
            except CredentialsError:
                continue
        self._issuers = found

    def alpn_client_context(self, protocol: str) -> ssl.SSLContext | None:
        """The mTLS client context offering ALPN ``protocol`` (None without a certificate).

        Made on first use per protocol and then kept: renewals are loaded into it in place.
        """
        if self._info is None:
            return None
        ctx = self._alpn_contexts.get(protocol)
        if ctx is None:
            ctx = build_alpn_context(protocol, self._trust_bundles(), self.cert_path, self.key_path)
            if ctx is not None:
                self._alpn_contexts[protocol] = ctx
        return ctx


class Credentials(CredentialFiles):
    """The current key/certificate/bundle in ``workdir`` and the long-lived TLS contexts."""

    def __init__(self, workdir: Path, bundle_file: Path | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)
        self.server_context = mtls_server_context()
        self.client_context = mtls_client_context()
        self.control_context = mtls_client_context()
        self._info: CertificateInfo | None = None
        self._expires_override: float | None = None
        self._roots = []
        self._server_alpn = []
        self._issuers = []
        self._alpn_contexts = {}
        if bundle_file is not None:
            try:  # the root to meet the control plane with, until it sends the bundle
                self._trust(bundle_file.read_bytes(), only=False)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise CredentialsError(f"cannot load trust bundle {bundle_file}: {exc}") from exc
        self._load_existing()
        for stale in workdir.glob(f"{PENDING_KEY_PREFIX}*"):
            stale.unlink(missing_ok=True)

    @property
    def contexts(self) -> tuple[ssl.SSLContext, ...]:
        return (self.server_context, self.client_context, self.control_context)

    def _live_contexts(self) -> tuple[ssl.SSLContext, ...]:
        return (*self.contexts, *self._alpn_contexts.values())

    def _fresh_contexts(self) -> dict[str, ssl.SSLContext]:
        return {**super()._fresh_contexts(), "control_context": mtls_client_context()}

    @property
    def identity(self) -> SpiffeId | None:
        """The SPIFFE ID in our current certificate (None before the first install)."""
        return None if self._info is None else self._info.spiffe_id

    @property
    def expires_at(self) -> float | None:
        """When our current certificate expires (unix seconds), None without one."""
        if self._info is None:
            return None
        return self._expires_override or self._info.not_after

    @property
    def has_certificate(self) -> bool:
        return self._info is not None

    @property
    def ready(self) -> bool:
        """A certificate is loaded, has not expired, and a trust bundle is present."""
        expires = self.expires_at
        return expires is not None and bool(self._roots) and time.time() < expires

    def install(
        self, cert_pem: bytes, key_path: Path, ca_pem: bytes, *, expires: float | None = None
    ) -> None:
        """Adopt a new certificate (and its key file and CA bundle) without dropping connections.

        The pair is checked on a scratch context first; only then are the files moved into
        place and loaded into the live contexts. ``key_path`` is renamed to ``tls.key``.
        ``ca_pem`` is the whole trust bundle (``adopt_bundle``). ``expires`` (the control
        plane's figure) is used only if it is earlier than notAfter.
        """
        info = parse_certificate(cert_pem)
        pending_cert = self.workdir / f"{PENDING_KEY_PREFIX}{os.urandom(6).hex()}.crt"
        write_atomic(pending_cert, cert_pem)
        try:
            scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            scratch.load_cert_chain(pending_cert, key_path)
            if ca_pem.strip():
                scratch.load_verify_locations(cadata=ca_pem.decode("ascii"))
        except (OSError, ssl.SSLError, ValueError) as exc:
            pending_cert.unlink(missing_ok=True)
            raise CredentialsError(f"new certificate does not load: {exc}") from exc
        try:
            os.chmod(key_path, 0o600)
            os.replace(key_path, self.key_path)
        except OSError:  # e.g. another file system: copy privately instead of renaming
            write_atomic(self.key_path, key_path.read_bytes(), mode=0o600)
            key_path.unlink(missing_ok=True)
        os.replace(pending_cert, self.cert_path)
        self._info = info
        self._note_chain(cert_pem)
        rebuilt = False
        if ca_pem.strip():
            write_atomic(self.bundle_path, ca_pem)
            rebuilt = self._trust(ca_pem, only=True)
        if not rebuilt:
            for ctx in self._live_contexts():
                ctx.load_cert_chain(self.cert_path, self.key_path)
        earlier = expires is not None and expires < info.not_after
        self._expires_override = expires if earlier else None
        log.info("installed certificate for %s, expires %.0f", self.identity, info.not_after)

    async def settled(self) -> None:
        """Return once what was installed or adopted last is in force in every process of
        this sidecar (at once here; a multi-process sidecar waits for its workers)."""

    def adopt_bundle(self, ca_pem: bytes) -> None:
        """Trust exactly the roots of ``ca_pem`` from now on (the control plane's bundle
        message): new roots are added in place; when one leaves, the contexts are rebuilt.
        Raises ``CredentialsError`` (nothing changed) when the bundle does not load."""
        if not pem_certificates(ca_pem):
            raise CredentialsError("the trust bundle holds no certificate")
        try:
            self._trust(ca_pem, only=True)  # refuses a bundle OpenSSL does not load, first
        except (ssl.SSLError, ValueError) as exc:
            raise CredentialsError(f"the trust bundle does not load: {exc}") from exc
        write_atomic(self.bundle_path, ca_pem)

    def _load_existing(self) -> None:
        """Pick up a still-valid certificate left by an earlier run of this sidecar."""
        if not (self.cert_path.exists() and self.key_path.exists()):
            return
        try:
            cert_pem = self.cert_path.read_bytes()
            info = parse_certificate(cert_pem)
            if info.not_after <= time.time():
                log.warning("stored certificate in %s has expired; ignoring it", self.workdir)
                return
            for ctx in self._live_contexts():
                ctx.load_cert_chain(self.cert_path, self.key_path)
            self._info = info
            self._note_chain(cert_pem)
            if self.bundle_path.exists():  # the control plane's last bundle is what we trust
                self._trust(self.bundle_path.read_bytes(), only=True)
        except (OSError, ssl.SSLError, ValueError, CredentialsError) as exc:
            log.warning("cannot reuse stored certificate in %s: %s", self.workdir, exc)
            self._info = None
            return
