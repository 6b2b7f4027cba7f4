"""SpiffeId parsing (strict), printing, and URI SANs from getpeercert() dicts."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId, peer_uri_sans

GOOD = "spiffe://gossamer.local/ns/default/sa/frontend"


class TestParse:
    def test_accepts_the_gossamer_shape(self) -> None:
        """``spiffe://td/ns/NS/sa/SA`` parses into its three parts."""
        sid = SpiffeId.parse("spiffe://td/ns/a/sa/b")
        assert (sid.trust_domain, sid.namespace, sid.service_account) == ("td", "a", "b")

    @pytest.mark.parametrize(
        "uri",
        [
            GOOD,
            "spiffe://example.org/ns/gossamer-system/sa/control-plane",
            "spiffe://my_td-1.example/ns/n1/sa/a-b-c",
            f"spiffe://{DEFAULT_TRUST_DOMAIN}/ns/{'a' * 63}/sa/x",
        ],
    )
    def test_string_round_trip(self, uri: str) -> None:
        """Printing a parsed ID (``str`` and ``.uri``) gives back the exact input."""
        sid = SpiffeId.parse(uri)
        assert str(sid) == uri
        assert sid.uri == uri
        assert SpiffeId.parse(str(sid)) == sid

    def test_ids_are_hashable_values(self) -> None:
        """Equal IDs compare and hash equal (a frozen value type)."""
        assert SpiffeId.parse(GOOD) == SpiffeId("gossamer.local", "default", "frontend")
        assert len({SpiffeId.parse(GOOD), SpiffeId.parse(GOOD)}) == 1

    @pytest.mark.parametrize(
        "uri",
        [
            "https://gossamer.local/ns/default/sa/frontend",
            "SPIFFE://gossamer.local/ns/default/sa/frontend",
            "spiffe:/gossamer.local/ns/default/sa/frontend",
            "gossamer.local/ns/default/sa/frontend",
            "",
        ],
    )
    def test_refuses_wrong_scheme(self, uri: str) -> None:
        """Anything not starting with ``spiffe://`` is refused."""
        with pytest.raises(ValueError, match="spiffe://"):
            SpiffeId.parse(uri)

    @pytest.mark.parametrize("suffix", ["?x=1", "#frag", "?", "#"])
    def test_refuses_query_and_fragment(self, suffix: str) -> None:
        """A query or fragment is refused."""
        with pytest.raises(ValueError, match="query or fragment"):
            SpiffeId.parse(GOOD + suffix)

    @pytest.mark.parametrize(
        "uri",
        [
            "spiffe://gossamer.local",
            "spiffe://gossamer.local/",
            "spiffe://gossamer.local/ns/default",
            "spiffe://gossamer.local/ns/default/sa/frontend/",
            "spiffe://gossamer.local/ns/default/sa/frontend/extra",
            "spiffe://gossamer.local/namespace/default/sa/frontend",
            "spiffe://gossamer.local/ns/default/serviceaccount/frontend",
            "spiffe://gossamer.local/sa/frontend/ns/default",
            "spiffe://gossamer.local//ns/default/sa/frontend",
        ],
    )
    def test_refuses_wrong_path_shape(self, uri: str) -> None:
        """Paths other than exactly ``/ns/<namespace>/sa/<account>`` are refused."""
        with pytest.raises(ValueError, match="path"):
            SpiffeId.parse(uri)

    @pytest.mark.parametrize(
        ("uri", "part"),
        [
            ("spiffe:///ns/default/sa/frontend", "trust domain"),
            ("spiffe://gossamer.local/ns//sa/frontend", "namespace"),
            ("spiffe://gossamer.local/ns/default/sa/", "service account"),
        ],
    )
    def test_refuses_empty_parts(self, uri: str, part: str) -> None:
        """An empty trust domain, namespace or service account is refused, naming the part."""
        with pytest.raises(ValueError, match=part):
            SpiffeId.parse(uri)

    @pytest.mark.parametrize(
        ("uri", "part"),
        [
            ("spiffe://Gossamer.local/ns/default/sa/frontend", "trust domain"),
            ("spiffe://gossamer.local:8443/ns/default/sa/frontend", "trust domain"),
            ("spiffe://user@gossamer.local/ns/default/sa/frontend", "trust domain"),
            ("spiffe://-gossamer.local/ns/default/sa/frontend", "trust domain"),
            ("spiffe://gossamer.local/ns/Default/sa/frontend", "namespace"),
            ("spiffe://gossamer.local/ns/de_fault/sa/frontend", "namespace"),
            ("spiffe://gossamer.local/ns/-default/sa/frontend", "namespace"),
            ("spiffe://gossamer.local/ns/default/sa/front%20end", "service account"),
            ("spiffe://gossamer.local/ns/default/sa/front.end", "service account"),
            ("spiffe://gossamer.local/ns/default/sa/frontend-", "service account"),
            ("spiffe://gossamer.local/ns/default/sa/fr ontend", "service account"),
            (f"spiffe://gossamer.local/ns/default/sa/{'a' * 64}", "service account"),
        ],
    )
    def test_refuses_bad_characters(self, uri: str, part: str) -> None:
        """Uppercase, ports, userinfo, underscores, dots, escapes and spaces are refused."""
        with pytest.raises(ValueError, match=part):
            SpiffeId.parse(uri)

    @pytest.mark.parametrize(
        "uri",
        [
            "spiffe://gossamer.local/ns/default/sa/frontend\n",
            "spiffe://gossamer.local\n/ns/default/sa/frontend",
            "spiffe://gossamer.local/ns/default\n/sa/frontend",
        ],
    )
    def test_refuses_a_trailing_newline_in_any_part(self, uri: str) -> None:
        """A newline at the end of any part is a bad character and is refused."""
        # BUG (found by this test): the part regexes end in ``$``, which also matches just
        # before a final "\n", so SpiffeId.parse accepts these and str() gives back the newline.
        with pytest.raises(ValueError):
            SpiffeId.parse(uri)

    def test_constructor_validates_too(self) -> None:
        """Building a SpiffeId directly applies the same checks as parsing."""
        with pytest.raises(ValueError, match="namespace"):
            SpiffeId("gossamer.local", "Bad", "frontend")


class TestPeerUriSans:
    def test_returns_uri_entries_only_in_order(self) -> None:
        """URI SANs come back in certificate order; DNS and IP entries are skipped."""
        cert: dict[str, Any] = {
            "subject": ((("commonName", "frontend"),),),
            "subjectAltName": (
                ("DNS", "localhost"),
                ("URI", GOOD),
                ("IP Address", "127.0.0.1"),
                ("URI", "https://example.com/x"),
            ),
        }
        assert peer_uri_sans(cert) == (GOOD, "https://example.com/x")

    def test_no_uri_sans_gives_empty(self) -> None:
        """A certificate with only DNS SANs, or with no SAN extension, gives ()."""
        assert peer_uri_sans({"subjectAltName": (("DNS", "localhost"),)}) == ()
        assert peer_uri_sans({"subject": ()}) == ()
        assert peer_uri_sans({}) == ()

    def test_no_certificate_gives_empty(self) -> None:
        """None (no peer certificate) gives ()."""
        assert peer_uri_sans(None) == ()
