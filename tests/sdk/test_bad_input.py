"""Bad input: every case gets a 4xx in the Key Vault error shape and changes nothing (§2 Errors, §5)."""

from __future__ import annotations

import base64
import copy

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.certificates import CertificateContact

import support
from support import LRO, assert_error, ok_json, pem_bundle, raw_policy, self_policy, self_signed, unique


def assert_absent(api, name):
    assert_error(api.get(f"/certificates/{name}/"), 404, "CertificateNotFound")


def pem_import_body(name):
    key, cert = self_signed(f"{name}.example.test", support.ec_key())
    return {"value": pem_bundle(key, cert).decode(),
            "policy": {"secret_props": {"contentType": "application/x-pem-file"}}}


@pytest.fixture(scope="module")
def existing(certs):
    """A completed certificate whose state the bad requests must not change."""
    name = unique("bad-existing")
    cert = certs.begin_create_certificate(
        name, self_policy(f"CN={name}", key_type="EC", curve="P-256"), tags={"keep": "me"}, **LRO).result(timeout=60)
    return cert


def snapshot(api, name):
    cert = ok_json(api.get(f"/certificates/{name}/"))
    policy = ok_json(api.get(f"/certificates/{name}/policy"))
    versions = sorted(it["id"] for p in support.follow_pages(api, f"/certificates/{name}/versions", {})
                      for it in p.json()["value"])
    return cert, policy, versions


# ----------------------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize("body", ['{"policy": ', "not json", "[]", '"a string"', "{'policy': {}}"],
                         ids=["truncated", "text", "array", "string", "single-quotes"])
def test_create_malformed_json_is_400(api, body):
    name = unique("bad-json")
    assert_error(api.post(f"/certificates/{name}/create", data=body), 400, "BadParameter")
    assert_absent(api, name)


def test_import_malformed_json_is_400(api):
    name = unique("bad-json-imp")
    assert_error(api.post(f"/certificates/{name}/import", data='{"value": "abc"'), 400, "BadParameter")
    assert_absent(api, name)


def test_update_malformed_json_changes_nothing(api, existing):
    before = snapshot(api, existing.name)
    assert_error(api.patch(f"/certificates/{existing.name}/", data='{"tags": {"keep": '), 400, "BadParameter")
    assert snapshot(api, existing.name) == before


def test_policy_patch_malformed_json_changes_nothing(api, existing):
    before = snapshot(api, existing.name)
    assert_error(api.patch(f"/certificates/{existing.name}/policy", data="{{"), 400, "BadParameter")
    assert snapshot(api, existing.name) == before


# ----------------------------------------------------------------------------- enums are exact (§5)


def mutate(policy: dict, path: list, value):
    p = copy.deepcopy(policy)
    cur = p
    for k in path[:-1]:
        cur = cur.setdefault(k, {})
    cur[path[-1]] = value
    return p


BAD_POLICY_MEMBERS = [
    pytest.param(["key_props", "kty"], "rsa", id="kty-rsa"),
    pytest.param(["key_props", "kty"], "oct", id="kty-oct"),
    pytest.param(["key_props", "key_size"], 1024, id="key-size-1024"),
    pytest.param(["secret_props", "contentType"], "application/pkcs12", id="content-type"),
    pytest.param(["x509_props", "key_usage"], ["DigitalSignature"], id="key-usage-case"),
    pytest.param(["lifetime_actions"], [{"trigger": {"lifetime_percentage": 80},
                                         "action": {"action_type": "autoRenew"}}], id="action-autoRenew"),
    pytest.param(["lifetime_actions"], [{"trigger": {"lifetime_percentage": 80, "days_before_expiry": 10},
                                         "action": {"action_type": "AutoRenew"}}], id="trigger-both"),
    pytest.param(["lifetime_actions"], [{"trigger": {"lifetime_percentage": 100},
                                         "action": {"action_type": "AutoRenew"}}], id="percentage-100"),
    pytest.param(["lifetime_actions"], [{"trigger": {"days_before_expiry": 12 * 27 + 1},
                                         "action": {"action_type": "EmailContacts"}}], id="days-too-many"),
    pytest.param(["platformManaged"], {"certificateUsage": "x", "metadata": {}}, id="platformManaged"),
]


@pytest.mark.parametrize("path,value", BAD_POLICY_MEMBERS)
def test_create_with_bad_policy_member_is_400(api, path, value):
    name = unique("bad-policy")
    policy = mutate(raw_policy(f"CN={name}"), path, value)
    assert_error(api.post(f"/certificates/{name}/create", json={"policy": policy}), 400, "BadParameter")
    assert_absent(api, name)


def test_create_ec_with_bad_curve_is_400(api):
    name = unique("bad-crv")
    policy = raw_policy(f"CN={name}", kty="EC", crv="p-256")
    assert_error(api.post(f"/certificates/{name}/create", json={"policy": policy}), 400, "BadParameter")
    assert_absent(api, name)


@pytest.mark.parametrize("path,value", BAD_POLICY_MEMBERS[:6])
def test_policy_patch_with_bad_member_changes_nothing(api, existing, path, value):
    before = snapshot(api, existing.name)
    patch = mutate({}, path, value)
    assert_error(api.patch(f"/certificates/{existing.name}/policy", json=patch), 400, "BadParameter")
    assert snapshot(api, existing.name) == before


# ----------------------------------------------------------------------------- names (§2)


BAD_NAMES = [pytest.param("bad_name", id="underscore"), pytest.param("x" * 128, id="128-chars"),
             pytest.param("dot.name", id="dot"), pytest.param("caf%C3%A9", id="non-ascii")]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_create_with_bad_name_is_400(api, name):
    assert_error(api.post(f"/certificates/{name}/create", json={"policy": raw_policy("CN=bad")}), 400, "BadParameter")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_import_with_bad_name_is_400(api, name):
    assert_error(api.post(f"/certificates/{name}/import", json=pem_import_body("bad")), 400, "BadParameter")


def test_bad_names_were_not_created(api):
    names = [it["id"].rsplit("/", 1)[1] for p in support.follow_pages(api, "/certificates", {"includePending": "true"})
             for it in p.json()["value"]]
    assert not [n for n in names if "_" in n or "." in n or len(n) > 127], names


def test_name_of_127_chars_is_accepted(api, certs):
    name = ("n" + unique("long"))[:20]
    name = name + "x" * (127 - len(name))
    body = ok_json(api.post(f"/certificates/{name}/import", json=pem_import_body("long")))
    assert body["id"].split("/")[4] == name


# ----------------------------------------------------------------------------- sizes and paging


def test_oversize_body_is_rejected(api):
    name = unique("bad-huge")
    body = {"value": "A" * (2 * 1024 * 1024), "policy": {}}
    assert_error(api.post(f"/certificates/{name}/import", json=body), (400, 413))
    assert_absent(api, name)


@pytest.mark.parametrize("path", ["/certificates", "/deletedcertificates", "/certificates/issuers"])
@pytest.mark.parametrize("maxresults", ["26", "0", "-1", "abc"])
def test_maxresults_out_of_range_is_400(api, path, maxresults):
    assert_error(api.get(path, params={"maxresults": maxresults}), 400, "BadParameter")


def test_versions_maxresults_26_is_400(api, existing):
    assert_error(api.get(f"/certificates/{existing.name}/versions", params={"maxresults": "26"}), 400, "BadParameter")


def test_maxresults_25_is_accepted(api):
    body = ok_json(api.get("/certificates", params={"maxresults": "25"}))
    assert len(body["value"]) <= 25


# ----------------------------------------------------------------------------- create rules


@pytest.mark.parametrize("body", [{}, {"policy": None}, {"tags": {"a": "b"}}], ids=["empty", "null", "tags-only"])
def test_first_create_without_policy_is_400(api, body):
    name = unique("bad-nopolicy")
    assert_error(api.post(f"/certificates/{name}/create", json=body), 400, "BadParameter")
    assert_absent(api, name)


def test_policy_without_subject_or_sans_is_400(api):
    name = unique("bad-nosubject")
    policy = raw_policy("CN=x")
    del policy["x509_props"]["subject"]
    assert_error(api.post(f"/certificates/{name}/create", json={"policy": policy}), 400, "BadParameter")
    assert_absent(api, name)


def test_create_while_operation_in_progress_is_409(api, certs):
    name = unique("bad-busy")
    op = certs.begin_create_certificate(name, self_policy(f"CN={name}", issuer="Unknown"), **LRO).result(timeout=60)
    r = api.post(f"/certificates/{name}/create", json={"policy": raw_policy(f"CN={name}", issuer="Unknown")})
    assert_error(r, 409, "Conflict")
    still = certs.get_certificate_operation(name)
    assert still.status == "inProgress" and bytes(still.csr) == bytes(op.csr)
    assert still.request_id == op.request_id


def test_cancel_without_flag_is_400(api, certs):
    name = unique("bad-cancel")
    certs.begin_create_certificate(name, self_policy(f"CN={name}", issuer="Unknown"), **LRO).result(timeout=60)
    assert_error(api.patch(f"/certificates/{name}/pending", json={}), 400, "BadParameter")
    assert certs.get_certificate_operation(name).cancellation_requested is False


@pytest.mark.parametrize("x5c", [[], ["%%%not-base64%%%"], [base64.b64encode(b"not a certificate").decode()]],
                         ids=["empty", "not-base64", "not-der"])
def test_merge_with_bad_x5c_is_400(api, certs, x5c):
    name = unique("bad-merge")
    op = certs.begin_create_certificate(name, self_policy(f"CN={name}", issuer="Unknown"), **LRO).result(timeout=60)
    assert_error(api.post(f"/certificates/{name}/pending/merge", json={"x5c": x5c}), 400, "BadParameter")
    still = certs.get_certificate_operation(name)
    assert still.status == "inProgress" and bytes(still.csr) == bytes(op.csr)


def test_update_properties_with_bad_attribute_type_is_400(api, existing):
    before = snapshot(api, existing.name)
    assert_error(api.patch(f"/certificates/{existing.name}/", json={"attributes": {"enabled": "yes"}}),
                 400, "BadParameter")
    assert snapshot(api, existing.name) == before


def test_contacts_malformed_is_400(api, certs):
    certs.set_contacts([CertificateContact(email="keep@example.test", name="Keep")])
    assert_error(api.put("/certificates/contacts", data='{"contacts": [{"email": '), 400, "BadParameter")
    assert [c.email for c in certs.get_contacts()] == ["keep@example.test"]
    certs.delete_contacts()
    with pytest.raises(ResourceNotFoundError):
        certs.get_contacts()


def test_unknown_route_is_404_error_shape(api):
    assert_error(api.get("/nosuchcollection/x"), 404)
