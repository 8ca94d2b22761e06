"""FHIR client behaviour that needs a misbehaving server: retries, auth tokens, foreign next links."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fhir.resources.R4B.patient import Patient

from hl7_fhir.fhir_auth import ClientCredentials, FhirAuthError
from hl7_fhir.fhir_client import FhirClient, FhirError, parse_resource, retry_after_s

BASE = "http://emr.test/fhir"
EMPTY = {"resourceType": "Bundle", "type": "searchset", "entry": []}


def client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: object) -> FhirClient:
    return FhirClient(BASE, transport=httpx.MockTransport(handler), sleep=lambda s: None, **kwargs)  # type: ignore[arg-type]


def test_5xx_is_retried_and_4xx_is_not() -> None:
    calls: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("Patient") and len(calls) == 1:
            return httpx.Response(503)
        if request.url.path.endswith("Condition"):
            return httpx.Response(400, json={"resourceType": "OperationOutcome",
                                              "issue": [{"severity": "error", "code": "invalid",
                                                         "details": {"text": "unknown parameter foo"}}]})
        return httpx.Response(200, json=EMPTY)

    fhir = client(flaky, retries=2)
    assert fhir.search("Patient", {}) == [] and len(calls) == 2
    with pytest.raises(FhirError, match="answered 400: OperationOutcome: error invalid"):
        fhir.search("Condition", {"foo": "1"})
    assert len(calls) == 3


def test_a_server_asking_for_a_longer_pause_is_left_alone_and_says_how_long() -> None:
    """A 503 with Retry-After: 120 was retried at once in the client's own short pauses, against the server's word;
    the delivery now waits what the server asked (radfusion.delivery) and an HTTP date is read too."""
    calls: list[str] = []

    def busy(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        retry_after = "120" if len(calls) == 1 else "Wed, 21 Oct 2099 07:28:00 GMT"
        return httpx.Response(503, headers={"Retry-After": retry_after})

    fhir = client(busy, retries=2)
    with pytest.raises(FhirError) as refused:
        fhir.search("Patient", {})
    assert len(calls) == 1 and (refused.value.status, refused.value.retry_after_s) == (503, 120.0)
    with pytest.raises(FhirError) as refused:
        fhir.search("Patient", {})
    assert len(calls) == 2 and refused.value.retry_after_s > 365 * 24 * 3600
    pauses: list[float] = []
    short = FhirClient(BASE, transport=httpx.MockTransport(lambda request: httpx.Response(
        503, headers={"Retry-After": "1"})), sleep=pauses.append, retries=2)
    with pytest.raises(FhirError) as refused:  # a pause of up to a second is waited out here: every retry is made
        short.search("Patient", {})
    assert pauses == [1.0, 1.0] and refused.value.retry_after_s == 1.0
    assert retry_after_s({"retry-after": "\u00b9"}) is None and retry_after_s({"retry-after": "-5"}) is None


def test_a_failed_search_names_the_resource_not_the_patient() -> None:
    """The error is logged and kept with the clinical context: the search's identifier must not be in it."""
    fhir = client(lambda request: httpx.Response(503), retries=0)
    with pytest.raises(FhirError) as failure:
        fhir.search("Patient", {"identifier": "urn:oid:1.2.3|PAT-0042"})
    assert str(failure.value).startswith(f"FHIR GET {BASE}/Patient answered 503") and "PAT-0042" not in str(failure.value)


def test_no_error_quotes_a_next_page_link_an_outcome_text_or_a_body() -> None:
    """Before, a next page's failure quoted its link (the search, the patient's identifier in it), and an
    OperationOutcome's text or a non-JSON body was copied into the error, which is logged and stored."""
    def server(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("page") == "2":
            raise httpx.ConnectError("connection dropped")
        if request.url.path.endswith("Condition"):
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "invalid", "diagnostics": "no such patient PAT-0042"}]})
        if request.url.path.endswith("Procedure"):
            return httpx.Response(200, text="<html>PAT-0042</html>")
        return httpx.Response(200, json={**EMPTY, "link": [{"relation": "next", "url":
                                         f"{BASE}/Patient?identifier=urn%3Aoid%3A1.2.3%7CPAT-0042&page=2"}]})

    fhir = client(server, retries=0)
    for resource in ("Patient", "Condition", "Procedure"):
        with pytest.raises(FhirError) as failure:
            fhir.search(resource, {"identifier": "urn:oid:1.2.3|PAT-0042"})
        assert "PAT-0042" not in str(failure.value), str(failure.value)


def test_create_is_not_retried_after_a_server_error() -> None:
    calls: list[str] = []

    def failing(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(500, text="boom")

    with pytest.raises(FhirError, match="answered 500"):
        client(failing, retries=3).create(Patient())
    assert calls == ["POST"]


def test_next_link_outside_the_base_is_not_followed() -> None:
    def paged(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={**EMPTY, "link": [{"relation": "next", "url": "http://evil.test/x"}]})

    with pytest.raises(FhirError, match="outside the FHIR base"):
        client(paged).search("Patient", {})


def test_client_credentials_token_is_cached_refreshed_and_renewed_on_401() -> None:
    now = [0.0]
    tokens: list[str] = []
    revoked: set[str] = set()

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            form = dict(x.split("=") for x in request.content.decode().split("&"))
            assert form["grant_type"] == "client_credentials" and form["client_secret"] == "pw"
            tokens.append(f"t{len(tokens)}")
            return httpx.Response(200, json={"access_token": tokens[-1], "expires_in": 300})
        token = request.headers["Authorization"].removeprefix("Bearer ")
        return httpx.Response(401) if token in revoked else httpx.Response(200, json=EMPTY)

    auth = ClientCredentials("http://emr.test/token", "radfusion", "pw", clock=lambda: now[0])
    fhir = client(server, auth=auth)
    fhir.search("Patient", {})
    fhir.search("Patient", {})
    assert tokens == ["t0"]
    now[0] = 280.0  # within the expiry margin: a new token
    fhir.search("Patient", {})
    assert tokens == ["t0", "t1"]
    revoked.add("t1")
    fhir.search("Patient", {})
    assert tokens == ["t0", "t1", "t2"]


def test_token_endpoint_refusal_names_the_endpoint() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client"})

    fhir = client(refuse, auth=ClientCredentials("http://emr.test/token", "radfusion", "wrong",
                                                 method="client_secret_basic"))
    with pytest.raises(FhirAuthError, match="token endpoint http://emr.test/token answered 401"):
        fhir.search("Patient", {})


def test_a_resource_that_is_not_valid_r4_is_named_without_its_values() -> None:
    """The error is logged and kept with the clinical context: before, pydantic's message quoted the input."""
    with pytest.raises(FhirError) as failure:
        parse_resource({"resourceType": "Patient", "id": "p1", "name": "Jane Doe", "birthDate": "1950-13-45"})
    assert str(failure.value).startswith("Patient/p1 is not valid R4: ")
    assert "Jane" not in str(failure.value) and "1950-13-45" not in str(failure.value)


def test_identity_checks_see_every_match_even_one_that_is_not_valid_r4() -> None:
    """Two Patients share the identifier and one of them is malformed: refusing to guess must not turn into
    picking the valid one (gathering's searches leave such resources out; find_patient may not)."""
    good = {"resourceType": "Patient", "id": "p1"}
    bad = {"resourceType": "Patient", "id": "p2", "birthDate": "1950-13-45"}
    fhir = client(lambda request: httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                                            "entry": [{"resource": good}, {"resource": bad}]}))
    with pytest.raises(FhirError, match="Patient/p2 is not valid R4"):
        fhir.find_patient("urn:oid:1.2.3", "12345")
    assert [p.id for p in fhir.search("Patient", {}, lenient=True)] == ["p1"]


def test_a_retired_record_sharing_the_identifier_does_not_hide_the_patient() -> None:
    """After an EMR merge the old record stays, inactive and linked 'replaced-by': two Patients shared the
    identifier, and the whole record was unavailable."""
    survivor = {"resourceType": "Patient", "id": "p1", "active": True}
    retired = {"resourceType": "Patient", "id": "p2", "active": False,
               "link": [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}]}
    linked_only = {"resourceType": "Patient", "id": "p3",
                   "link": [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}]}
    for others in ([retired], [linked_only], [retired, linked_only]):
        body = {"resourceType": "Bundle", "type": "searchset",
                "entry": [{"resource": r} for r in (*others, survivor)]}
        assert client(lambda request, body=body: httpx.Response(200, json=body)).find_patient(
            "urn:oid:1.2.3", "12345").id == "p1"
    twins = {"resourceType": "Bundle", "type": "searchset",
             "entry": [{"resource": survivor}, {"resource": {**survivor, "id": "p4"}}]}
    with pytest.raises(FhirError, match="2 Patients share identifier"):  # two active records: still no guess
        client(lambda request: httpx.Response(200, json=twins)).find_patient("urn:oid:1.2.3", "12345")


def test_a_record_only_its_retired_copy_carries_is_found_by_its_replaced_by_link() -> None:
    """Only the retired record carried the identifier: it was read instead of the surviving one it names. The link is
    followed one hop on this server; one that leads elsewhere, to several records or to another retired one is not."""
    def retired(*targets: str) -> dict:
        return {"resourceType": "Patient", "id": f"old-{len(targets)}", "active": False,
                "link": [{"other": {"reference": target}, "type": "replaced-by"} for target in targets]}

    records = {"p1": {"resourceType": "Patient", "id": "p1", "active": True},
               "p9": {**retired("Patient/p1"), "id": "p9"}}

    def emr(*matches: dict) -> FhirClient:
        def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/Patient"):
                return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                                 "entry": [{"resource": m} for m in matches]})
            ident = request.url.path.rsplit("/", 1)[-1]
            return httpx.Response(200, json=records[ident]) if ident in records else httpx.Response(404)
        return client(handler)

    for link in ("Patient/p1", f"{BASE}/Patient/p1/_history/3"):
        assert emr(retired(link)).find_patient("urn:oid:1.2.3", "12345").id == "p1"
    assert emr(retired("Patient/p1"), {**retired("Patient/p1"), "id": "old-2"}).find_patient(
        "urn:oid:1.2.3", "12345").id == "p1"  # two retired copies of one survivor
    unlinked = {"resourceType": "Patient", "id": "p5", "active": False}
    assert emr(unlinked).find_patient("urn:oid:1.2.3", "12345").id == "p5"  # retired, but nothing says where to
    for matches, reason in (([retired("https://other.test/fhir/Patient/p1")], "cannot be followed"),
                            ([retired("Patient/p1", "Patient/p2")], "cannot be followed"),
                            ([retired("Patient/p9")], "itself retired"), ([retired("Patient/gone")], "answered 404")):
        with pytest.raises(FhirError, match=reason) as refused:
            emr(*matches).find_patient("urn:oid:1.2.3", "12345")
        assert "12345" not in str(refused.value)
