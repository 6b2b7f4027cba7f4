"""Validation of resource documents: each refusal reason, with its document and field path."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.config import (
    MeshConfig,
    Problem,
    Service,
    ValidationFailed,
    kind_for,
    validate_documents,
)
from gossamer.config.selector import selected_service

API = "gossamer.dev/v1alpha1"


def service(name: str = "catalog", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Service", "metadata": {"name": name}, "spec": spec}


def mesh(name: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "MeshConfig", "metadata": {"name": name}, "spec": spec}


def problems(*docs: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ValidationFailed) as caught:
        validate_documents(list(docs))
    return caught.value.problems


def only(*docs: dict[str, Any]) -> Problem:
    found = problems(*docs)
    assert len(found) == 1, found
    return found[0]


class TestRefusals:
    def test_unknown_kind(self) -> None:
        """An unknown kind is refused at path 'kind' naming the known kinds."""
        problem = only({"apiVersion": API, "kind": "Gadget", "metadata": {"name": "x"}})
        assert (problem.path, problem.kind, problem.name) == ("kind", "Gadget", "x")
        assert "unknown kind" in problem.message and "Service" in problem.message

    def test_wrong_api_version(self) -> None:
        """Another apiVersion is refused at path 'apiVersion'."""
        doc = service()
        doc["apiVersion"] = "v1"
        problem = only(doc)
        assert problem.path == "apiVersion"
        assert "unsupported apiVersion 'v1'" in problem.message

    def test_missing_api_version(self) -> None:
        """A document without apiVersion is refused at 'apiVersion'."""
        doc = service()
        del doc["apiVersion"]
        assert only(doc).path == "apiVersion"

    def test_missing_kind(self) -> None:
        """A document without kind is refused at 'kind'."""
        problem = only({"apiVersion": API, "metadata": {"name": "x"}})
        assert (problem.path, problem.message) == ("kind", "required field is missing")

    def test_missing_name(self) -> None:
        """metadata.name is required."""
        doc = service()
        doc["metadata"] = {}
        problem = only(doc)
        assert (problem.path, problem.message) == ("metadata.name", "required field is missing")

    def test_wrong_type(self) -> None:
        """A port given as a string is a type error at spec.ports[0].port."""
        problem = only(service(ports=[{"port": "80"}]))
        assert problem.path == "spec.ports[0].port"
        assert "valid integer" in problem.message and "'80'" in problem.message

    @pytest.mark.parametrize("port", [0, 65536])
    def test_port_out_of_range(self, port: int) -> None:
        """Ports outside 1..65535 are refused with their exact path."""
        problem = only(service(ports=[{"port": 80}, {"port": port}]))
        assert problem.path == "spec.ports[1].port"
        assert str(port) in problem.message

    def test_unknown_spec_field(self) -> None:
        """An unknown field in spec is refused at its own path."""
        problem = only(service(replicas=3))
        assert (problem.path, problem.message) == ("spec.replicas", "unknown field")

    def test_unknown_nested_field(self) -> None:
        """An unknown field inside a list item is refused with the item index."""
        problem = only(service(ports=[{"port": 80, "targetPort": 8080}]))
        assert problem.path == "spec.ports[0].targetPort"

    def test_snake_case_field_is_unknown(self) -> None:
        """Fields are camelCase; service_account is not accepted for serviceAccount."""
        assert only(service(service_account="x")).path == "spec.service_account"

    def test_unknown_protocol(self) -> None:
        """Only http, http2, grpc and tcp are protocols."""
        problem = only(service(ports=[{"port": 53, "protocol": "udp"}]))
        assert problem.path == "spec.ports[0].protocol"

    def test_bad_name(self) -> None:
        """Names must be DNS labels."""
        problem = only(service(name="Bad_Name"))
        assert problem.path == "metadata.name"
        assert "not a DNS label" in problem.message

    def test_bad_call_reference(self) -> None:
        """spec.calls entries must be 'name' or 'name.namespace'."""
        problem = only(service(calls=["orders", "a.b.c"]))
        assert problem.path == "spec.calls[1]"

    def test_duplicate_port(self) -> None:
        """The same port twice in one Service is refused at the second."""
        problem = only(service(ports=[{"port": 80}, {"port": 80}]))
        assert problem.path == "spec.ports[1].port"

    def test_duplicate_resource_in_one_apply(self) -> None:
        """Two documents for the same kind/namespace/name are refused at the second."""
        problem = only(service(), service())
        assert (problem.document, problem.path) == (1, "metadata.name")
        assert "duplicate" in problem.message

    def test_bad_duration(self) -> None:
        """A certificate lifetime that is not a duration is refused with its path."""
        problem = only(mesh(certificates={"lifetime": "24x"}))
        assert problem.path == "spec.certificates.lifetime"
        assert "invalid duration" in problem.message

    @pytest.mark.parametrize("lifetime", ["5s", "91d"])
    def test_duration_out_of_range(self, lifetime: str) -> None:
        """Certificate lifetimes must be within 10s..90d."""
        problem = only(mesh(certificates={"lifetime": lifetime}))
        assert problem.path == "spec.certificates.lifetime"

    def test_bad_mtls_mode(self) -> None:
        """mTLS mode is STRICT or PERMISSIVE."""
        assert only(mesh(mtls={"mode": "OFF"})).path == "spec.mtls.mode"

    def test_bad_tracing_settings(self) -> None:
        """Tracing needs an http(s):// OTLP endpoint; each bound is refused at its field, and
        a header the exporter sets itself, or one that is not one printable line."""
        assert only(mesh(tracing={})).path == "spec.tracing.otlpEndpoint"
        assert only(mesh(tracing={"otlpEndpoint": "grpc://x:4317"})).path == (
            "spec.tracing.otlpEndpoint")  # fmt: skip
        assert only(mesh(tracing={"otlpEndpoint": "http://x:99999"})).path == (
            "spec.tracing.otlpEndpoint")  # fmt: skip
        base = {"otlpEndpoint": "http://127.0.0.1:4318"}
        for field, value in (("samplingPercent", 100.5), ("samplingPercent", -1.0),
                             ("maxQueue", 0), ("batchSize", 10_001),
                             ("flushInterval", "5ms"), ("sampling", 1.0)):  # fmt: skip
            assert only(mesh(tracing={**base, field: value})).path == f"spec.tracing.{field}"
        for headers in ({"Content-Type": "text/plain"}, {"x-key": "caf\u00e9"},
                        {"x-key": "a\r\nb: c"}, {"bad name": "1"}, {"X-Key": "1", "x-key": "2"},
                        {f"x-{i}": "1" for i in range(33)}):  # fmt: skip
            found = only(mesh(tracing={**base, "headers": headers}))
            assert found.path.startswith("spec.tracing.headers"), (headers, found)

    def test_mesh_config_must_be_named_default(self) -> None:
        """There is one MeshConfig, named default."""
        assert only(mesh(name="prod")).path == "metadata.name"

    def test_document_that_is_not_a_mapping_spec(self) -> None:
        """A spec that is a list is a type error at 'spec'."""
        doc = service()
        doc["spec"] = [1]
        assert only(doc).path == "spec"

    def test_every_problem_is_reported_at_once(self) -> None:
        """Problems from several documents come back together, in document order."""
        found = problems(service(ports=[{"port": 0}]), mesh(mtls={"mode": "x"}), service("ok"))
        assert [(p.document, p.path) for p in found] == [
            (0, "spec.ports[0].port"),
            (1, "spec.mtls.mode"),
        ]


class TestAccepted:
    def test_service_defaults(self) -> None:
        """A bare Service gets one http port 80 and its own name as service account."""
        (resource,) = validate_documents(
            [{"apiVersion": API, "kind": "Service", "metadata": {"name": "web"}}]
        )
        assert isinstance(resource, Service)
        assert [(p.port, p.protocol) for p in resource.spec.ports] == [(80, "http")]
        assert resource.service_account == "web"
        assert resource.key.namespace == "default"

    def test_service_account_override(self) -> None:
        """spec.serviceAccount sets the identity's account."""
        (resource,) = validate_documents([service(serviceAccount="shop")])
        assert isinstance(resource, Service)
        assert resource.service_account == "shop"

    def test_mesh_config_namespace_is_forced_to_default(self) -> None:
        """MeshConfig is cluster-wide: any namespace is stored as default."""
        doc = mesh(certificates={"lifetime": "30m"})
        doc["metadata"]["namespace"] = "prod"
        (resource,) = validate_documents([doc])
        assert isinstance(resource, MeshConfig)
        assert resource.key.namespace == "default"
        assert resource.certificate_lifetime is not None
        assert resource.certificate_lifetime.total_seconds() == 1800

    def test_tracing_settings_and_their_snapshot_form(self) -> None:
        tracing = {"otlpEndpoint": "http://127.0.0.1:4318", "samplingPercent": 100,
                   "flushInterval": "250ms"}  # fmt: skip
        (resource,) = validate_documents([mesh(tracing=tracing)])
        assert isinstance(resource, MeshConfig) and resource.spec.tracing is not None
        assert resource.spec.tracing.to_snapshot() == {
            "endpoint": "http://127.0.0.1:4318", "headers": [], "ratio": 1.0, "max_queue": 2048,
            "batch": 512, "interval": 0.25}  # fmt: skip
        secure = {"otlpEndpoint": "https://otlp.example.com/v1/traces",
                  "headers": {"X-Api-Key": "k-1", "x-tenant": "acme"}}  # fmt: skip
        (resource,) = validate_documents([mesh(tracing=secure)])
        assert isinstance(resource, MeshConfig) and resource.spec.tracing is not None
        snapshot = resource.spec.tracing.to_snapshot()
        assert snapshot["endpoint"] == "https://otlp.example.com/v1/traces"
        assert snapshot["headers"] == [["x-api-key", "k-1"], ["x-tenant", "acme"]]

    def test_store_bookkeeping_fields_are_accepted_and_dropped(self) -> None:
        """A document read back from the store (revision, generation) can be re-applied."""
        doc = service()
        doc["metadata"].update(revision=4, generation=2)
        (resource,) = validate_documents([doc])
        assert "revision" not in resource.to_document()["metadata"]

    @pytest.mark.parametrize("spelling", ["Service", "service", "SERVICES"])
    def test_kind_lookup_is_case_insensitive(self, spelling: str) -> None:
        """Kinds are found by singular or plural in any case."""
        assert kind_for(spelling) is Service


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({"kind": "Service", "metadata": {"name": "web\n"}, "spec": {}}, "metadata.name"),
        ({"kind": "Service", "metadata": {"name": "web", "namespace": "default\n"}, "spec": {}},
         "metadata.namespace"),
        ({"kind": "Service", "metadata": {"name": "web"}, "spec": {"calls": ["orders\n"]}},
         "spec.calls[0]"),
        ({"kind": "HTTPRoute", "metadata": {"name": "r"},
          "spec": {"service": "web", "rules": [{"matches": [{"method": "GET\n"}]}]}},
         "spec.rules[0].matches[0].method"),
    ],
)  # fmt: skip
def test_a_trailing_newline_is_not_a_name(document: dict[str, Any], path: str) -> None:
    """``$`` matches before a final newline: names are checked whole (issue 11, lows)."""
    with pytest.raises(ValidationFailed) as caught:
        validate_documents([{"apiVersion": "gossamer.dev/v1alpha1", **document}])
    assert [p.path for p in caught.value.problems] == [path]


class TestEgressEndpoints:
    def egress(self, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": API, "kind": "Egress", "metadata": {"name": "partner"},
                "spec": {"hosts": ["api.partner.example"], **spec}}  # fmt: skip

    def test_endpoints_are_accepted_with_or_without_a_port(self) -> None:
        (doc,) = validate_documents([self.egress(endpoints=[
            {"address": "10.0.0.9", "port": 8443}, {"address": "edge.partner.example"}])])
        assert [(e.address, e.port) for e in doc.spec.endpoints] == [  # type: ignore[attr-defined]
            ("10.0.0.9", 8443), ("edge.partner.example", None)]

    @pytest.mark.parametrize(("endpoint", "path"), [
        ({"address": "10.0.0.9", "port": 70000}, "spec.endpoints[0].port"),
        ({"address": "*.partner.example"}, "spec.endpoints[0].address"),
        ({"address": "Not A Host"}, "spec.endpoints[0].address"),
        ({"port": 80}, "spec.endpoints[0].address"),
        ({"address": "10.0.0.9", "weight": 3}, "spec.endpoints[0].weight"),
    ])  # fmt: skip
    def test_a_bad_endpoint_is_refused_at_its_path(
        self, endpoint: dict[str, Any], path: str
    ) -> None:
        assert only(self.egress(endpoints=[endpoint])).path == path


class TestAuthorizationPolicy:
    def policy(self, **spec: Any) -> dict[str, Any]:
        metadata = {"name": "orders-readers", "namespace": "shop"}
        return {"apiVersion": API, "kind": "AuthorizationPolicy", "metadata": metadata,
                "spec": spec}  # fmt: skip

    def test_a_policy_with_every_part_is_accepted(self) -> None:
        (doc,) = validate_documents([self.policy(
            selector={"service": "orders"}, action="DENY",
            rules=[{"from": [{"source": {"principals": ["*/sa/batch"]}}],
                    "to": [{"operation": {"methods": ["DELETE"], "paths": ["/orders/*"]}}],
                    "when": [{"key": "request.headers[X-Tenant]", "values": ["acme"]}]}],
        )])  # fmt: skip
        snap = doc.to_snapshot()  # type: ignore[attr-defined]
        assert snap["name"] == "shop/orders-readers" and snap["action"] == "DENY"
        assert snap["rules"][0]["when"][0]["key"] == "request.headers[x-tenant]"
        selector = doc.spec.selector  # type: ignore[attr-defined]
        assert selected_service(selector, "shop") == ("shop", "orders")
        other = selector.model_copy(update={"service": "orders.default"})
        assert selected_service(other, "shop") == ("", "")  # another namespace's: nothing
        assert selected_service(None, "shop") is None  # the whole namespace

    @pytest.mark.parametrize(("rules", "path", "words"), [
        ([{"from": [{"source": {"requestPrincipals": ["iss / sub"]}}]}],
         "spec.rules[0].from[0].source.requestPrincipals[0]", "visible ASCII"),
        ([{"when": [{"key": "request.auth.claims", "values": ["x"]}]}],
         "spec.rules[0].when[0].key", "not a condition key"),
        ([{"when": [{"key": "request.body", "values": ["x"]}]}],
         "spec.rules[0].when[0].key", "not a condition key"),
        ([{"when": [{"key": "source.principal"}]}], "spec.rules[0].when[0]", "values"),
        ([{"to": [{"operation": {"paths": ["/a*b"]}}]}],
         "spec.rules[0].to[0].operation.paths[0]", "'*' may stand only"),
        ([{"to": [{"operation": {"methods": ["get"]}}]}],
         "spec.rules[0].to[0].operation.methods[0]", ""),
        ([{"to": [{"operation": {"ports": [0]}}]}],
         "spec.rules[0].to[0].operation.ports[0]", ""),
        ([{"from": [{"source": {"principals": ["has space"]}}]}],
         "spec.rules[0].from[0].source.principals[0]", "visible ASCII"),
    ])  # fmt: skip
    def test_a_bad_rule_is_refused_at_its_path(
        self, rules: list[dict[str, Any]], path: str, words: str
    ) -> None:
        problem = only(self.policy(rules=rules))
        assert problem.path == path, problem
        assert words in problem.message

    def test_an_unknown_action_is_refused(self) -> None:
        assert only(self.policy(action="CUSTOM")).path == "spec.action"


class TestRequestAuthentication:
    def authn(self, *rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
        spec = {"jwtRules": list(rules), **spec}
        return {"apiVersion": API, "kind": "RequestAuthentication",
                "metadata": {"name": "tokens"}, "spec": spec}  # fmt: skip

    def test_a_rule_with_every_field_is_accepted(self) -> None:
        (doc,) = validate_documents([self.authn({
            "issuer": "https://idp.example.com/realms/shop", "audiences": ["orders-api"],
            "fromHeaders": [{"name": "X-Token"}], "fromCookies": ["session"],
            "outputClaimToHeaders": [{"header": "X-Roles", "claim": "realm_access.roles"}],
            "forwardOriginalToken": False, "clockSkew": "30s", "jwksRefresh": "1m",
        }, selector={"service": "orders"})])  # fmt: skip
        rule = doc.spec.jwt_rules[0]  # type: ignore[attr-defined]
        assert rule.token_headers == [("x-token", "")]
        assert selected_service(doc.spec.selector, "default") == (  # type: ignore[attr-defined]
            "default", "orders")

    @pytest.mark.parametrize(("rule", "path"), [
        ({"issuer": "not-a-url"}, "spec.jwtRules[0]"),  # keys from discovery need a URL
        ({"issuer": "https://a.example", "jwksUri": "ftp://x"}, "spec.jwtRules[0].jwksUri"),
        ({"issuer": "https://a.example", "fromCookies": ["a b"]},
         "spec.jwtRules[0].fromCookies[0]"),
        ({"issuer": "https://a.example",
          "outputClaimToHeaders": [{"header": "x", "claim": "a..b"}]},
         "spec.jwtRules[0].outputClaimToHeaders[0].claim"),
        ({"issuer": "https://a.example", "clockSkew": "soon"}, "spec.jwtRules[0].clockSkew"),
    ])  # fmt: skip
    def test_a_bad_rule_is_refused_at_its_path(self, rule: dict[str, Any], path: str) -> None:
        assert only(self.authn(rule)).path == path

    def test_no_rules_and_an_issuer_twice_are_refused(self) -> None:
        assert only(self.authn()).path == "spec.jwtRules"
        twice = {"issuer": "https://a.example"}
        assert only(self.authn(twice, twice)).path == "spec"


class TestPeerAuthentication:
    def peer(self, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": API, "kind": "PeerAuthentication", "metadata": {"name": "p"},
                "spec": spec}  # fmt: skip

    def test_levels_are_accepted(self) -> None:
        docs = validate_documents([
            self.peer(mtls={"mode": "PERMISSIVE"}),
            {**self.peer(selector={"service": "orders"}, mtls={"mode": "DISABLE"},
                         portLevelMtls={"8080": {"mode": "STRICT"}}),
             "metadata": {"name": "orders"}},
        ])  # fmt: skip
        assert docs[1].spec.port_level_mtls["8080"].mode == "STRICT"  # type: ignore[attr-defined]

    @pytest.mark.parametrize(("spec", "path"), [
        ({"portLevelMtls": {"8080": {"mode": "STRICT"}}}, "spec"),  # ports need a selector
        ({"selector": {"service": "orders"}, "portLevelMtls": {"http": {"mode": "STRICT"}}},
         "spec.portLevelMtls.http"),
        ({"mtls": {"mode": "OPTIONAL"}}, "spec.mtls.mode"),
    ])  # fmt: skip
    def test_a_bad_spec_is_refused_at_its_path(self, spec: dict[str, Any], path: str) -> None:
        assert only(self.peer(**spec)).path.startswith(path)
