"""Certificates: create (Self), get, update, versions, list, policy (§4, §5, §6)."""

from __future__ import annotations

import base64
import datetime

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.certificates import (
    CertificateContentType,
    CertificatePolicy,
    CertificatePolicyAction,
    KeyVaultCertificate,
    LifetimeAction,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import support
from support import (
    B64STD_RE,
    B64URL_RE,
    EKU_CLIENT,
    EKU_SERVER,
    LRO,
    VERSION_RE,
    assert_error,
    b64url,
    describe,
    load_cer,
    ok_json,
    raw_policy,
    self_policy,
    sha1,
    unique,
    wait_operation_done,
)

CREATE_CASES = [
    pytest.param(("RSA", 2048, None), id="rsa-2048"),
    pytest.param(("RSA", 3072, None), id="rsa-3072"),
    pytest.param(("EC", None, "P-256"), id="ec-p256"),
    pytest.param(("EC", None, "P-384"), id="ec-p384"),
    pytest.param(("EC", None, "P-521"), id="ec-p521"),
]
EC_CURVE_CLASSES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


def create(certs, name, policy, **kw):
    poller = certs.begin_create_certificate(name, policy, **kw, **LRO)
    result = poller.result(timeout=60)
    assert poller.status() == "completed", f"poller status {poller.status()}"
    assert isinstance(result, KeyVaultCertificate), f"poller returned {type(result).__name__}: {result!r}"
    return result


# ----------------------------------------------------------------------------- create (Self)


@pytest.fixture(scope="module", params=CREATE_CASES)
def created(request, certs):
    kty, size, curve = request.param
    name = unique(f"self-{kty.lower()}{size or curve.replace('-', '')}")
    dns = [f"{name}.example.test", "alt.example.test"]
    policy = self_policy(f"CN={name}.example.test", key_type=kty, key_size=size, curve=curve, dns=dns,
                         validity=6)
    cert = create(certs, name, policy, tags={"suite": "sdk", "kty": kty})
    return {"name": name, "kty": kty, "size": size, "curve": curve, "dns": dns, "cert": cert,
            "x509": load_cer(cert.cer)}


def test_create_result_ids(created, server):
    cert, name = created["cert"], created["name"]
    v = cert.properties.version
    assert v and VERSION_RE.match(v), f"version {v!r} is not 32 lowercase hex"
    assert cert.name == name
    assert cert.id == f"{server.url}/certificates/{name}/{v}"
    assert cert.key_id == f"{server.url}/keys/{name}/{v}"
    assert cert.secret_id == f"{server.url}/secrets/{name}/{v}"


def test_create_result_x5t_is_sha1_of_cer(created):
    cert = created["cert"]
    assert cert.cer, "no cer"
    assert cert.properties.x509_thumbprint == sha1(bytes(cert.cer))


def test_create_subject_and_sans_match_policy(created):
    x = created["x509"]
    cn = x.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == [f"{created['name']}.example.test"], x.subject.rfc4514_string()
    san = x.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(created["dns"])


def test_create_eku_and_key_usage_match_policy(created):
    x = created["x509"]
    eku = x.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku_ext = x.extensions.get_extension_for_class(x509.KeyUsage)
    ku = ku_ext.value
    assert ku.digital_signature is True
    assert ku.key_encipherment is (created["kty"] == "RSA")
    assert ku.key_cert_sign is False and ku.crl_sign is False and ku.data_encipherment is False


def test_create_key_type_and_size(created):
    pub = created["x509"].public_key()
    if created["kty"] == "RSA":
        assert isinstance(pub, rsa.RSAPublicKey)
        assert pub.key_size == created["size"]
        assert pub.public_numbers().e == 65537
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert isinstance(pub.curve, EC_CURVE_CLASSES[created["curve"]]), pub.curve.name


def test_create_is_self_signed(created):
    x = created["x509"]
    assert x.issuer == x.subject
    x.verify_directly_issued_by(x)


def test_create_validity_and_attributes(created):
    cert, x = created["cert"], created["x509"]
    p = cert.properties
    assert p.enabled is True
    assert p.not_before is not None and p.expires_on is not None, "nbf/exp missing"
    assert p.not_before == x.not_valid_before_utc, (p.not_before, x.not_valid_before_utc)
    assert p.expires_on == x.not_valid_after_utc, (p.expires_on, x.not_valid_after_utc)
    now = support.now()
    assert p.not_before <= now <= p.expires_on
    days = (p.expires_on - now).days
    assert 175 <= days <= 186, f"validity_months 6 gave {days} days"
    assert p.created_on is not None and p.updated_on is not None
    assert abs((p.created_on - now).total_seconds()) < 600


def test_create_tags(created):
    assert created["cert"].properties.tags.get("suite") == "sdk"


def test_create_result_has_policy(created):
    pol = created["cert"].policy
    assert pol is not None and pol.issuer_name == "Self"
    assert pol.subject == f"CN={created['name']}.example.test"
    assert pol.validity_in_months == 6


# ----------------------------------------------------------------------------- create on the wire


def test_raw_create_returns_202_in_progress(server, api):
    name = unique("raw-create")
    r = api.post(f"/certificates/{name}/create", json={"policy": raw_policy(f"CN={name}")})
    body = ok_json(r, 202)
    assert body.get("status") == "inProgress", f"Self create must answer inProgress (§6): {body}"
    assert body.get("id") == f"{server.url}/certificates/{name}/pending", body
    assert (body.get("issuer") or {}).get("name") == "Self", body
    assert body.get("cancellation_requested") is False, body
    done = wait_operation_done(api, name)
    assert done["status"] == "completed", done
    assert done.get("target") == f"{server.url}/certificates/{name}", done
    assert "error" not in done or done["error"] is None, done


def test_raw_create_then_get_certificate(server, api):
    name = unique("raw-create-get")
    ok_json(api.post(f"/certificates/{name}/create", json={"policy": raw_policy(f"CN={name}")}), 202)
    wait_operation_done(api, name)
    body = ok_json(api.get(f"/certificates/{name}/"))
    assert body.get("cer") and B64STD_RE.match(body["cer"]), body
    assert body["x5t"] == b64url(sha1(base64.b64decode(body["cer"])))
    assert body["attributes"]["enabled"] is True


def test_second_create_without_policy_uses_stored_policy(server, api):
    """A policy is required on the first create only (§5 CertificatePolicy, Validation)."""
    name = unique("create-twice")
    ok_json(api.post(f"/certificates/{name}/create", json={"policy": raw_policy(f"CN={name}")}), 202)
    wait_operation_done(api, name)
    first = ok_json(api.get(f"/certificates/{name}/"))
    ok_json(api.post(f"/certificates/{name}/create", json={}), 202)
    wait_operation_done(api, name)
    second = ok_json(api.get(f"/certificates/{name}/"))
    assert second["id"] != first["id"], "no new version"
    assert load_cer(base64.b64decode(second["cer"])).subject.rfc4514_string() == f"CN={name}"


def test_response_content_type_is_json_utf8(api, rsa_cert):
    r = api.get(f"/certificates/{rsa_cert.name}/")
    assert r.status_code == 200, describe(r)
    assert r.headers.get("Content-Type", "").lower().replace(" ", "") == "application/json;charset=utf-8"


# ----------------------------------------------------------------------------- get


@pytest.mark.parametrize("suffix", ["", "/"], ids=["no-slash", "trailing-slash"])
def test_raw_get_latest_both_forms(server, api, rsa_cert, suffix):
    name, v = rsa_cert.name, rsa_cert.properties.version
    body = ok_json(api.get(f"/certificates/{name}{suffix}"))
    assert body["id"] == f"{server.url}/certificates/{name}/{v}"
    assert body["kid"] == f"{server.url}/keys/{name}/{v}"
    assert body["sid"] == f"{server.url}/secrets/{name}/{v}"
    assert base64.b64decode(body["cer"]) == bytes(rsa_cert.cer)
    assert B64URL_RE.match(body["x5t"]) and body["x5t"] == b64url(sha1(bytes(rsa_cert.cer)))
    pol = body.get("policy")
    assert isinstance(pol, dict), f"get latest must carry policy: {body}"
    assert pol.get("id") == f"{server.url}/certificates/{name}/policy"
    for k in ("created", "updated", "nbf", "exp"):
        assert isinstance(body["attributes"].get(k), int), f"attributes.{k} must be integer seconds: {body}"


def test_get_certificate_sdk(certs, rsa_cert):
    c = certs.get_certificate(rsa_cert.name)
    assert c.name == rsa_cert.name
    assert c.properties.version == rsa_cert.properties.version
    assert bytes(c.cer) == bytes(rsa_cert.cer)
    assert c.policy is not None and c.policy.issuer_name == "Self"


def test_get_certificate_version(certs, rsa_cert):
    c = certs.get_certificate_version(rsa_cert.name, rsa_cert.properties.version)
    assert c.id == rsa_cert.id
    assert bytes(c.cer) == bytes(rsa_cert.cer)
    assert c.properties.x509_thumbprint == rsa_cert.properties.x509_thumbprint


def test_get_name_is_case_insensitive_and_keeps_spelling(server, api, certs):
    name = unique("MixedCase")
    create(certs, name, self_policy(f"CN={name}", key_type="EC", curve="P-256"))
    body = ok_json(api.get(f"/certificates/{name.upper()}/"))
    assert body["id"].startswith(f"{server.url}/certificates/{name}/"), body["id"]
    body = ok_json(api.get(f"/certificates/{name.lower()}"))
    assert body["id"].startswith(f"{server.url}/certificates/{name}/"), body["id"]


def test_get_missing_certificate_is_404(certs, api):
    name = unique("missing")
    with pytest.raises(ResourceNotFoundError) as ei:
        certs.get_certificate(name)
    assert support.sdk_error_code(ei.value) == "CertificateNotFound"
    assert_error(api.get(f"/certificates/{name}/"), 404, "CertificateNotFound")


def test_get_missing_version_is_404(certs, rsa_cert):
    with pytest.raises(ResourceNotFoundError):
        certs.get_certificate_version(rsa_cert.name, "0" * 32)


# ----------------------------------------------------------------------------- update properties


def test_update_tags_on_latest(certs):
    name = unique("upd-tags")
    create(certs, name, self_policy(f"CN={name}", key_type="EC", curve="P-256"), tags={"a": "1"})
    out = certs.update_certificate_properties(name, tags={"a": "2", "b": "3"})
    assert out.properties.tags == {"a": "2", "b": "3"}
    assert certs.get_certificate(name).properties.tags == {"a": "2", "b": "3"}


def test_update_specific_version_enabled(certs):
    name = unique("upd-ver")
    pol = self_policy(f"CN={name}", key_type="EC", curve="P-256")
    first = create(certs, name, pol)
    second = create(certs, name, pol)
    v1 = first.properties.version
    assert second.properties.version != v1
    out = certs.update_certificate_properties(name, v1, enabled=False)
    assert out.properties.version == v1 and out.properties.enabled is False
    assert certs.get_certificate_version(name, v1).properties.enabled is False
    latest = certs.get_certificate(name)
    assert latest.properties.version == second.properties.version and latest.properties.enabled is True
    out = certs.update_certificate_properties(name, v1, enabled=True)
    assert out.properties.enabled is True


def test_update_latest_raw_trailing_slash(server, api, certs):
    name = unique("upd-raw")
    c = create(certs, name, self_policy(f"CN={name}", key_type="EC", curve="P-256"))
    body = ok_json(api.patch(f"/certificates/{name}/", json={"tags": {"k": "v"}, "attributes": {"enabled": False}}))
    assert body["id"] == f"{server.url}/certificates/{name}/{c.properties.version}"
    assert body["tags"] == {"k": "v"}
    assert body["attributes"]["enabled"] is False
    assert body["attributes"]["updated"] >= body["attributes"]["created"]
    assert certs.get_certificate(name).properties.enabled is False


# ----------------------------------------------------------------------------- versions and lists


@pytest.fixture(scope="module")
def three_versions(certs):
    name = unique("versions")
    pol = self_policy(f"CN={name}", key_type="EC", curve="P-256")
    made = [create(certs, name, pol) for _ in range(3)]
    return name, [c.properties.version for c in made]


def test_list_versions_sdk_paging(certs, three_versions):
    name, versions = three_versions
    items = list(certs.list_properties_of_certificate_versions(name, max_page_size=1))
    assert sorted(i.version for i in items) == sorted(versions)
    for i in items:
        assert i.name == name
        assert i.x509_thumbprint, f"version item without x5t: {i.id}"


def test_list_versions_raw_paging(server, api, three_versions):
    name, versions = three_versions
    pages = support.follow_pages(api, f"/certificates/{name}/versions", {"maxresults": 1})
    assert len(pages) >= 3, f"maxresults=1 over 3 versions gave {len(pages)} pages"
    ids = []
    for p in pages:
        body = p.json()
        assert len(body["value"]) <= 1, body
        nxt = body.get("nextLink")
        if nxt:
            assert nxt.startswith(f"{server.url}/"), f"nextLink not absolute on the vault origin: {nxt}"
        ids += [it["id"] for it in body["value"]]
    assert sorted(ids) == sorted(f"{server.url}/certificates/{name}/{v}" for v in versions)


def test_list_certificates_sdk_paging(certs, three_versions, rsa_cert):
    names = [p.name for p in certs.list_properties_of_certificates(max_page_size=1)]
    assert three_versions[0] in names and rsa_cert.name in names
    assert len(names) == len(set(n.lower() for n in names)), "duplicates across pages"


def test_list_certificates_raw_paging(server, api, three_versions, rsa_cert):
    pages = support.follow_pages(api, "/certificates", {"maxresults": 2})
    items = [it for p in pages for it in p.json()["value"]]
    for p in pages:
        body = p.json()
        assert len(body["value"]) <= 2
        if body.get("nextLink"):
            assert body["nextLink"].startswith(f"{server.url}/"), body["nextLink"]
    by_id = {it["id"]: it for it in items}
    assert len(by_id) == len(items), "duplicate items across pages"
    it = by_id.get(f"{server.url}/certificates/{rsa_cert.name}")
    assert it is not None, f"list item id must be unversioned {server.url}/certificates/<name>"
    assert it.get("x5t") == b64url(rsa_cert.properties.x509_thumbprint)
    assert it["attributes"]["enabled"] is True


def test_list_certificates_include_pending(certs):
    name = unique("list-pending")
    op = certs.begin_create_certificate(name, self_policy(f"CN={name}", issuer="Unknown"), **LRO).result(timeout=60)
    assert op.status == "inProgress"
    default = [p.name for p in certs.list_properties_of_certificates()]
    assert name not in default, "pending certificate listed without includePending"
    pending = [p.name for p in certs.list_properties_of_certificates(include_pending=True)]
    assert name in pending, "pending certificate missing with includePending=true"


# ----------------------------------------------------------------------------- policy


def test_get_policy_matches_create(certs):
    name = unique("policy-get")
    pol = self_policy(f"CN={name}.example.test", dns=[f"{name}.example.test"], validity=3)
    create(certs, name, pol)
    p = certs.get_certificate_policy(name)
    assert p.issuer_name == "Self"
    assert p.subject == f"CN={name}.example.test"
    assert p.san_dns_names == [f"{name}.example.test"]
    assert p.key_type == "RSA" and p.key_size == 2048 and p.exportable is True and p.reuse_key is False
    assert p.content_type == CertificateContentType.pkcs12
    assert set(p.enhanced_key_usage) == {EKU_SERVER, EKU_CLIENT}
    assert set(p.key_usage) == {"digitalSignature", "keyEncipherment"}
    assert p.validity_in_months == 3
    assert len(p.lifetime_actions) == 1
    assert p.lifetime_actions[0].action == CertificatePolicyAction.auto_renew
    assert p.lifetime_actions[0].lifetime_percentage == 80


def test_update_policy_patch_merges(server, api, certs):
    name = unique("policy-merge")
    create(certs, name, self_policy(f"CN={name}", dns=[f"{name}.example.test"], validity=3))
    before = ok_json(api.get(f"/certificates/{name}/policy"))
    after = ok_json(api.patch(f"/certificates/{name}/policy", json={"x509_props": {"validity_months": 24}}))
    assert after["x509_props"]["validity_months"] == 24
    for section in ("key_props", "secret_props", "lifetime_actions", "issuer"):
        assert after.get(section) == before.get(section), f"PATCH dropped/changed {section}: {before} -> {after}"
    for member in ("subject", "sans", "ekus", "key_usage"):
        assert after["x509_props"].get(member) == before["x509_props"].get(member), f"x509_props.{member} changed"
    again = ok_json(api.get(f"/certificates/{name}/policy"))
    assert again["x509_props"]["validity_months"] == 24
    assert again["key_props"] == before["key_props"]


def test_update_policy_sdk_lifetime_actions(certs):
    name = unique("policy-sdk")
    create(certs, name, self_policy(f"CN={name}", key_type="EC", curve="P-256"))
    newp = CertificatePolicy(lifetime_actions=[LifetimeAction(CertificatePolicyAction.email_contacts,
                                                              days_before_expiry=30)])
    out = certs.update_certificate_policy(name, newp)
    assert len(out.lifetime_actions) == 1
    la = out.lifetime_actions[0]
    assert la.action == CertificatePolicyAction.email_contacts and la.days_before_expiry == 30
    assert la.lifetime_percentage is None
    stored = certs.get_certificate_policy(name)
    assert stored.lifetime_actions[0].days_before_expiry == 30
    assert stored.subject == f"CN={name}" and stored.key_type == "EC" and stored.key_curve_name == "P-256"


def test_update_policy_roundtrip_with_readonly_fields(certs):
    """The SDK echoes id/attributes back; they must be ignored (§5 PATCH policy merges)."""
    name = unique("policy-echo")
    create(certs, name, self_policy(f"CN={name}", key_type="EC", curve="P-256", validity=3))
    p = certs.get_certificate_policy(name)
    out = certs.update_certificate_policy(name, p)
    assert out.subject == p.subject and out.validity_in_months == 3 and out.key_curve_name == "P-256"


def test_policy_defaults_self(server, api):
    name = unique("defaults-self")
    policy = {"x509_props": {"subject": f"CN={name}"}, "issuer": {"name": "Self"}}
    ok_json(api.post(f"/certificates/{name}/create", json={"policy": policy}), 202)
    op = wait_operation_done(api, name)
    assert op["status"] == "completed", op
    p = ok_json(api.get(f"/certificates/{name}/policy"))
    kp = p["key_props"]
    assert kp.get("kty") == "RSA" and kp.get("key_size") == 2048, kp
    assert kp.get("exportable") is True and kp.get("reuse_key") is False, kp
    assert p["secret_props"].get("contentType") == "application/x-pkcs12", p
    xp = p["x509_props"]
    assert xp["subject"] == f"CN={name}"
    assert set(xp.get("ekus") or []) == {EKU_SERVER, EKU_CLIENT}, xp
    assert set(xp.get("key_usage") or []) == {"digitalSignature", "keyEncipherment"}, xp
    assert xp.get("validity_months") == 12, xp
    assert support.strip_none(p.get("lifetime_actions")) == [
        {"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}], p
    cert = load_cer(base64.b64decode(ok_json(api.get(f"/certificates/{name}/"))["cer"]))
    assert isinstance(cert.public_key(), rsa.RSAPublicKey) and cert.public_key().key_size == 2048
    days = (cert.not_valid_after_utc - support.now()).days
    assert 360 <= days <= 367, f"default validity 12 months gave {days} days"


def test_policy_defaults_unknown_issuer_email_contacts(api):
    name = unique("defaults-unknown")
    policy = {"x509_props": {"subject": f"CN={name}"}, "issuer": {"name": "Unknown"}}
    op = ok_json(api.post(f"/certificates/{name}/create", json={"policy": policy}), 202)
    assert op["status"] == "inProgress"
    p = ok_json(api.get(f"/certificates/{name}/policy"))
    assert support.strip_none(p.get("lifetime_actions")) == [
        {"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}], p
    assert p["key_props"].get("kty") == "RSA" and p["key_props"].get("key_size") == 2048


def test_policy_subject_echoed_as_given(api):
    name = unique("subject-echo")
    policy = {"x509_props": {"subject": f"cn={name}"}, "issuer": {"name": "Self"}}
    ok_json(api.post(f"/certificates/{name}/create", json={"policy": policy}), 202)
    wait_operation_done(api, name)
    p = ok_json(api.get(f"/certificates/{name}/policy"))
    assert p["x509_props"]["subject"] == f"cn={name}"


def test_policy_sans_only_no_subject(certs):
    name = unique("sans-only")
    pol = self_policy(None, key_type="EC", curve="P-256", dns=[f"{name}.example.test"])
    c = create(certs, name, pol)
    san = load_cer(c.cer).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"{name}.example.test"]


def test_create_with_ip_and_uri_sans(certs):
    """sans.ipAddresses and sans.uris exist from 2025-07-01 (§1)."""
    name = unique("ip-uri-sans")
    pol = self_policy(f"CN={name}", key_type="EC", curve="P-256", dns=[f"{name}.example.test"],
                      san_ip_addresses=["127.0.0.1"], san_uris=["spiffe://example.test/svc"])
    c = create(certs, name, pol)
    san = load_cer(c.cer).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.test/svc"]
    p = certs.get_certificate_policy(name)
    assert p.san_ip_addresses == ["127.0.0.1"] and p.san_uris == ["spiffe://example.test/svc"]


def test_certificate_attributes_recovery_fields(api, rsa_cert):
    attrs = ok_json(api.get(f"/certificates/{rsa_cert.name}/"))["attributes"]
    assert attrs.get("recoveryLevel") in {
        "Purgeable", "Recoverable+Purgeable", "Recoverable", "Recoverable+ProtectedSubscription",
        "CustomizedRecoverable+Purgeable", "CustomizedRecoverable", "CustomizedRecoverable+ProtectedSubscription",
    }, attrs
    assert isinstance(attrs.get("recoverableDays"), int) and 7 <= attrs["recoverableDays"] <= 90, attrs


def test_created_timestamps_are_recent(rsa_cert):
    created = rsa_cert.properties.created_on
    assert created is not None
    assert abs(support.now() - created) < datetime.timedelta(hours=1)
