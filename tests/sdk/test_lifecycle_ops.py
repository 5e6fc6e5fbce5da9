"""Issuer Unknown + merge, pending operations, delete/recover/purge, backup/restore, issuers,
contacts (§4, §5, §6)."""

from __future__ import annotations

import base64

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.certificates import (
    AdministratorContact,
    CertificateContact,
    CertificateContentType,
    CertificateOperation,
    CertificatePolicy,
    DeletedCertificate,
    KeyUsageType,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import support
from support import (
    B64URL_RE,
    LRO,
    assert_error,
    der,
    load_cer,
    make_ca,
    make_leaf,
    ok_json,
    pem_bundle,
    self_policy,
    self_signed,
    spki,
    unique,
)


PEM_POLICY = CertificatePolicy(content_type=CertificateContentType.pem)


def unknown_policy(name: str, **kw):
    return self_policy(f"CN={name}.example.test", issuer="Unknown", dns=[f"{name}.example.test",
                                                                          f"www.{name}.example.test"], **kw)


def begin_unknown(certs, name, **kw) -> CertificateOperation:
    op = certs.begin_create_certificate(name, unknown_policy(name, **kw), **LRO).result(timeout=60)
    assert isinstance(op, CertificateOperation), f"Unknown issuer: poller must return the operation, got {op!r}"
    return op


def sign_csr(csr: x509.CertificateSigningRequest, ca_key, ca, public_key=None):
    try:
        dns = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except x509.ExtensionNotFound:
        dns = []
    return make_leaf(ca_key, ca, csr.subject, public_key or csr.public_key(), dns=dns)


@pytest.fixture(scope="module")
def local_ca():
    return make_ca("certvault sdk-suite CA")


# ----------------------------------------------------------------------------- Unknown issuer


def test_unknown_create_returns_operation_with_csr(certs, server):
    name = unique("unk-op")
    op = begin_unknown(certs, name)
    assert op.status == "inProgress"
    assert op.issuer_name == "Unknown"
    assert op.id == f"{server.url}/certificates/{name}/pending"
    assert op.csr, "no CSR in the operation"
    assert op.cancellation_requested is False
    assert op.target is None and op.error is None


def test_unknown_csr_is_valid_and_carries_extensions(certs):
    name = unique("unk-csr")
    op = begin_unknown(certs, name)
    csr = x509.load_der_x509_csr(bytes(op.csr))
    assert csr.is_signature_valid, "CSR signature invalid"
    assert [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [f"{name}.example.test"]
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted([f"{name}.example.test",
                                                                     f"www.{name}.example.test"])
    ku = csr.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical, "key usage must be critical in the CSR (§5 CertificateOperation)"
    assert ku.value.digital_signature and ku.value.key_encipherment
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    bc = csr.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is False


def test_unknown_csr_key_matches_policy(certs):
    name = unique("unk-csr-ec")
    op = begin_unknown(certs, name, key_type="EC", curve="P-384", key_size=None,
                       key_usage=[KeyUsageType.digital_signature])
    csr = x509.load_der_x509_csr(bytes(op.csr))
    assert csr.public_key().curve.name == "secp384r1"


def test_unknown_pending_get_operation(certs, api, server):
    name = unique("unk-pending")
    op = begin_unknown(certs, name)
    again = certs.get_certificate_operation(name)
    assert again.status == "inProgress"
    assert bytes(again.csr) == bytes(op.csr)
    assert again.request_id == op.request_id
    body = ok_json(api.get(f"/certificates/{name}/pending"))
    assert body["status"] == "inProgress" and body["issuer"]["name"] == "Unknown"
    assert base64.b64decode(body["csr"]) == bytes(op.csr), "csr must be standard base64"


def test_unknown_pending_certificate_bundle(certs, api, server):
    """While unfinished: no kid/sid/x5t/cer, enabled false, `pending` present (§5 CertificateBundle)."""
    name = unique("unk-bundle")
    begin_unknown(certs, name)
    body = ok_json(api.get(f"/certificates/{name}/"))
    for absent in ("kid", "sid", "x5t", "cer"):
        assert body.get(absent) is None, f"{absent} must be absent while pending: {body}"
    assert body["attributes"]["enabled"] is False
    assert body.get("pending", {}).get("id") == f"{server.url}/certificates/{name}/pending"
    assert body["id"].startswith(f"{server.url}/certificates/{name}/")


def test_merge_completes_certificate(certs, secrets, local_ca, server):
    ca_key, ca = local_ca
    name = unique("merge")
    op = begin_unknown(certs, name)
    leaf = sign_csr(x509.load_der_x509_csr(bytes(op.csr)), ca_key, ca)
    merged = certs.merge_certificate(name, [der(leaf), der(ca)])
    assert bytes(merged.cer) == der(leaf)
    assert merged.properties.enabled is True
    v = merged.properties.version
    assert merged.key_id == f"{server.url}/keys/{name}/{v}" and merged.secret_id == f"{server.url}/secrets/{name}/{v}"
    assert merged.properties.x509_thumbprint == support.sha1(der(leaf))
    assert merged.properties.expires_on == leaf.not_valid_after_utc
    k, c, extra = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret(name).value), None)
    assert der(c) == der(leaf)
    assert [der(e) for e in extra] == [der(ca)], "secret must hold the chain"
    assert spki(k.public_key()) == spki(leaf.public_key())
    done = certs.get_certificate_operation(name)
    assert done.status == "completed", done.status
    assert done.target == f"{server.url}/certificates/{name}"


def test_merge_raw_returns_201(certs, api, local_ca, server):
    ca_key, ca = local_ca
    name = unique("merge-raw")
    op = begin_unknown(certs, name)
    leaf = sign_csr(x509.load_der_x509_csr(bytes(op.csr)), ca_key, ca)
    r = api.post(f"/certificates/{name}/pending/merge",
                 json={"x5c": [base64.b64encode(der(leaf)).decode(), base64.b64encode(der(ca)).decode()],
                       "tags": {"merged": "yes"}})
    body = ok_json(r, 201)
    assert base64.b64decode(body["cer"]) == der(leaf)
    assert body["tags"] == {"merged": "yes"}
    assert body["id"].startswith(f"{server.url}/certificates/{name}/")


def test_merge_with_enabled_false_attribute(certs, local_ca):
    """`enabled` becomes true on merge, or follows attributes.enabled (§6 Issuer Unknown and merge)."""
    ca_key, ca = local_ca
    name = unique("merge-disabled")
    op = begin_unknown(certs, name)
    leaf = sign_csr(x509.load_der_x509_csr(bytes(op.csr)), ca_key, ca)
    merged = certs.merge_certificate(name, [der(leaf), der(ca)], enabled=False)
    assert merged.properties.enabled is False
    assert certs.get_certificate(name).properties.enabled is False


def test_merge_leaf_with_other_key_is_rejected(certs, api, local_ca):
    ca_key, ca = local_ca
    name = unique("merge-wrongkey")
    op = begin_unknown(certs, name)
    csr = x509.load_der_x509_csr(bytes(op.csr))
    other = support.rsa_key()
    bad_leaf = sign_csr(csr, ca_key, ca, public_key=other.public_key())
    r = api.post(f"/certificates/{name}/pending/merge", json={"x5c": [base64.b64encode(der(bad_leaf)).decode()]})
    assert_error(r, 400, "BadParameter")
    # nothing changed
    still = certs.get_certificate_operation(name)
    assert still.status == "inProgress" and bytes(still.csr) == bytes(op.csr)
    body = ok_json(api.get(f"/certificates/{name}/"))
    assert body.get("cer") is None and body["attributes"]["enabled"] is False
    # and the right leaf still merges
    good = sign_csr(csr, ca_key, ca)
    assert bytes(certs.merge_certificate(name, [der(good)]).cer) == der(good)


def test_merge_without_pending_operation_fails(certs, rsa_cert, local_ca):
    ca_key, ca = local_ca
    key, _ = self_signed("x")
    leaf = make_leaf(ca_key, ca, support.name_cn("x"), key.public_key())
    with pytest.raises(HttpResponseError) as ei:
        certs.merge_certificate(rsa_cert.name, [der(leaf)])
    assert 400 <= ei.value.status_code < 500
    assert bytes(certs.get_certificate(rsa_cert.name).cer) == bytes(rsa_cert.cer)


def test_cancel_operation(certs):
    name = unique("unk-cancel")
    begin_unknown(certs, name)
    op = certs.cancel_certificate_operation(name)
    assert op.cancellation_requested is True
    assert op.status in ("inProgress", "cancelled"), op.status
    assert certs.get_certificate_operation(name).cancellation_requested is True


def test_cancel_operation_raw(api, certs):
    name = unique("unk-cancel-raw")
    begin_unknown(certs, name)
    body = ok_json(api.patch(f"/certificates/{name}/pending", json={"cancellation_requested": True}))
    assert body["cancellation_requested"] is True
    assert isinstance(body.get("status"), str)


def test_delete_operation(certs, api):
    name = unique("unk-delop")
    op = begin_unknown(certs, name)
    deleted = certs.delete_certificate_operation(name)
    assert bytes(deleted.csr) == bytes(op.csr)
    with pytest.raises(ResourceNotFoundError) as ei:
        certs.get_certificate_operation(name)
    assert support.sdk_error_code(ei.value) == "PendingCertificateNotFound"
    assert_error(api.get(f"/certificates/{name}/pending"), 404, "PendingCertificateNotFound")


def test_get_operation_of_missing_certificate_is_404(api):
    assert_error(api.get(f"/certificates/{unique('never')}/pending"), 404)


# ----------------------------------------------------------------------------- delete / recover / purge


def make_pem_cert(certs, name):
    key, cert = self_signed(f"{name}.example.test", support.ec_key())
    certs.import_certificate(name, pem_bundle(key, cert), policy=PEM_POLICY)
    return key, cert


def delete(certs, name) -> DeletedCertificate:
    poller = certs.begin_delete_certificate(name, **LRO)
    result = poller.result()
    poller.wait(timeout=60)
    assert poller.done(), "delete poller did not finish"
    return result


def test_delete_returns_deleted_bundle(certs, server):
    name = unique("del")
    _key, cert = make_pem_cert(certs, name)
    d = delete(certs, name)
    assert isinstance(d, DeletedCertificate)
    assert d.name == name
    assert d.recovery_id == f"{server.url}/deletedcertificates/{name}"
    assert d.deleted_on is not None and d.scheduled_purge_date is not None
    assert abs((support.now() - d.deleted_on).total_seconds()) < 600
    days = d.properties.recoverable_days or 90
    assert abs((d.scheduled_purge_date - d.deleted_on).total_seconds() - days * 86400) < 5
    assert bytes(d.cer) == der(cert)


def test_delete_raw_body(api, certs, server):
    name = unique("del-raw")
    make_pem_cert(certs, name)
    body = ok_json(api.delete(f"/certificates/{name}"))
    assert body["recoveryId"] == f"{server.url}/deletedcertificates/{name}"
    assert isinstance(body["deletedDate"], int) and isinstance(body["scheduledPurgeDate"], int)
    assert body["scheduledPurgeDate"] > body["deletedDate"]
    assert body["id"].startswith(f"{server.url}/certificates/{name}/")


def test_deleted_certificate_get_list_and_gone(certs, secrets, keys, api, server):
    name = unique("del-get")
    _key, cert = make_pem_cert(certs, name)
    delete(certs, name)
    g = certs.get_deleted_certificate(name)
    assert g.name == name and bytes(g.cer) == der(cert)
    assert g.recovery_id == f"{server.url}/deletedcertificates/{name}"
    listed = {d.name: d for d in certs.list_deleted_certificates(max_page_size=5)}
    assert name in listed, "not in list_deleted_certificates"
    assert listed[name].recovery_id == g.recovery_id and listed[name].deleted_on is not None
    with pytest.raises(ResourceNotFoundError) as ei:
        certs.get_certificate(name)
    assert support.sdk_error_code(ei.value) == "CertificateNotFound"
    assert name not in [p.name for p in certs.list_properties_of_certificates()]
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret(name)
    with pytest.raises(ResourceNotFoundError):
        keys.get_key(name)


def test_create_or_import_under_deleted_name_is_409(certs, api):
    name = unique("del-reuse")
    make_pem_cert(certs, name)
    delete(certs, name)
    r = api.post(f"/certificates/{name}/create", json={"policy": support.raw_policy(f"CN={name}")})
    assert_error(r, 409, "Conflict", inner="ObjectIsDeletedButRecoverable")
    key, cert = self_signed(name, support.ec_key())
    r = api.post(f"/certificates/{name}/import", json={
        "value": pem_bundle(key, cert).decode(), "policy": {"secret_props": {"contentType": "application/x-pem-file"}}})
    assert_error(r, 409, "Conflict", inner="ObjectIsDeletedButRecoverable")
    with pytest.raises(ResourceExistsError):
        certs.import_certificate(name, pem_bundle(key, cert), policy=PEM_POLICY)
    # names match case-insensitively (§2), so another spelling is the same deleted name
    r = api.post(f"/certificates/{name.upper()}/create", json={"policy": support.raw_policy(f"CN={name}")})
    assert_error(r, 409, "Conflict", inner="ObjectIsDeletedButRecoverable")


def test_recover_restores_certificate_and_secret(certs, secrets, keys):
    name = unique("recover")
    key, cert = make_pem_cert(certs, name)
    secret_before = secrets.get_secret(name)
    key_before = keys.get_key(name)
    delete(certs, name)
    rec = certs.begin_recover_deleted_certificate(name, **LRO)
    rec.wait(timeout=60)
    assert rec.done(), "recover poller did not finish"
    recovered = rec.result()
    assert recovered.name == name and bytes(recovered.cer) == der(cert)
    got = certs.get_certificate(name)
    assert bytes(got.cer) == der(cert)
    assert got.properties.version == secret_before.properties.version
    secret_after = secrets.get_secret(name)
    assert secret_after.value == secret_before.value
    assert secret_after.id == secret_before.id
    assert keys.get_key(name).key.x == key_before.key.x
    with pytest.raises(ResourceNotFoundError):
        certs.get_deleted_certificate(name)


def test_recover_raw_returns_bundle(api, certs, server):
    name = unique("recover-raw")
    _key, cert = make_pem_cert(certs, name)
    delete(certs, name)
    body = ok_json(api.post(f"/deletedcertificates/{name}/recover"))
    assert body["id"].startswith(f"{server.url}/certificates/{name}/")
    assert base64.b64decode(body["cer"]) == der(cert)


def test_purge(certs, api):
    name = unique("purge")
    make_pem_cert(certs, name)
    delete(certs, name)
    r = api.delete(f"/deletedcertificates/{name}")
    assert r.status_code == 204, support.describe(r)
    assert r.content == b"", "204 must have no body"
    with pytest.raises(ResourceNotFoundError):
        certs.get_deleted_certificate(name)
    assert name not in [d.name for d in certs.list_deleted_certificates()]
    # the name is free again
    key, cert = self_signed(name, support.ec_key())
    out = certs.import_certificate(name, pem_bundle(key, cert), policy=PEM_POLICY)
    assert bytes(out.cer) == der(cert)
    assert len(list(certs.list_properties_of_certificate_versions(name))) == 1, "purged versions came back"


def test_purge_sdk(certs):
    name = unique("purge-sdk")
    make_pem_cert(certs, name)
    delete(certs, name)
    certs.purge_deleted_certificate(name)
    with pytest.raises(ResourceNotFoundError):
        certs.get_deleted_certificate(name)


def test_purge_of_live_certificate_fails(api, certs):
    name = unique("purge-live")
    make_pem_cert(certs, name)
    r = api.delete(f"/deletedcertificates/{name}")
    assert_error(r, (404, 409, 400))
    certs.get_certificate(name)


def test_get_deleted_missing_is_404(certs):
    with pytest.raises(ResourceNotFoundError) as ei:
        certs.get_deleted_certificate(unique("never-deleted"))
    assert support.sdk_error_code(ei.value) == "CertificateNotFound"


# ----------------------------------------------------------------------------- backup / restore


def test_backup_value_is_base64url(api, ec_cert):
    body = ok_json(api.post(f"/certificates/{ec_cert.name}/backup"))
    assert isinstance(body.get("value"), str) and body["value"]
    assert B64URL_RE.match(body["value"]), "backup value must be base64url without padding"


def test_backup_restore_after_purge(certs, secrets):
    name = unique("backup")
    pol = self_policy(f"CN={name}", key_type="EC", curve="P-256", content_type="application/x-pem-file")
    v1 = certs.begin_create_certificate(name, pol, **LRO).result(timeout=60)
    v2 = certs.begin_create_certificate(name, pol, **LRO).result(timeout=60)
    secret_before = secrets.get_secret(name).value
    blob = certs.backup_certificate(name)
    assert isinstance(blob, bytes) and len(blob) > 100
    delete(certs, name)
    certs.purge_deleted_certificate(name)
    support.wait_until(lambda: name not in [d.name for d in certs.list_deleted_certificates()], "purge")
    restored = certs.restore_certificate_backup(blob)
    assert restored.name == name
    assert restored.properties.version == v2.properties.version
    assert bytes(restored.cer) == bytes(v2.cer)
    versions = sorted(p.version for p in certs.list_properties_of_certificate_versions(name))
    assert versions == sorted([v1.properties.version, v2.properties.version])
    assert bytes(certs.get_certificate_version(name, v1.properties.version).cer) == bytes(v1.cer)
    assert secrets.get_secret(name).value == secret_before
    assert certs.get_certificate_policy(name).content_type == "application/x-pem-file"


def test_restore_onto_existing_name_is_409(certs, api, ec_cert):
    blob = certs.backup_certificate(ec_cert.name)
    with pytest.raises(ResourceExistsError):
        certs.restore_certificate_backup(blob)
    r = api.post("/certificates/restore", json={"value": support.b64url(blob)})
    assert_error(r, 409, "Conflict")
    assert bytes(certs.get_certificate(ec_cert.name).cer) == bytes(ec_cert.cer)


def test_restore_garbage_is_400(api):
    assert_error(api.post("/certificates/restore", json={"value": support.b64url(b"not a backup" * 10)}), 400)


# ----------------------------------------------------------------------------- issuers


ADMINS = [AdministratorContact(first_name="Ada", last_name="Admin", email="ada@example.test", phone="555-0100")]


def test_issuer_create_get(certs, api, server):
    name = unique("issuer")
    i = certs.create_issuer(name, "Test", account_id="acct-1", password="s3cret", organization_id="org-1",
                            admin_contacts=ADMINS, enabled=True)
    assert i.name == name and i.provider == "Test" and i.account_id == "acct-1"
    assert i.id == f"{server.url}/certificates/issuers/{name}"
    assert i.password is None, "issuer password echoed"
    g = certs.get_issuer(name)
    assert g.provider == "Test" and g.enabled is True and g.account_id == "acct-1"
    assert g.organization_id == "org-1"
    assert [(a.first_name, a.last_name, a.email, a.phone) for a in g.admin_contacts] == [
        ("Ada", "Admin", "ada@example.test", "555-0100")]
    assert g.password is None
    body = ok_json(api.get(f"/certificates/issuers/{name}"))
    assert "pwd" not in (body.get("credentials") or {}), f"password on the wire: {body}"
    assert "s3cret" not in api.get(f"/certificates/issuers/{name}").text


def test_issuer_update_disable(certs):
    name = unique("issuer-upd")
    certs.create_issuer(name, "Test", account_id="a", password="p")
    u = certs.update_issuer(name, enabled=False)
    assert u.enabled is False and u.provider == "Test" and u.account_id == "a"
    assert certs.get_issuer(name).enabled is False


def test_issuer_list(certs):
    names = [unique("issuer-list") for _ in range(2)]
    for n in names:
        certs.create_issuer(n, "Test")
    listed = {p.name: p for p in certs.list_properties_of_issuers(max_page_size=1)}
    for n in names:
        assert n in listed and listed[n].provider == "Test"


def test_issuer_delete(certs, api):
    name = unique("issuer-del")
    certs.create_issuer(name, "Test", account_id="a")
    d = certs.delete_issuer(name)
    assert d.name == name and d.provider == "Test"
    with pytest.raises(ResourceNotFoundError) as ei:
        certs.get_issuer(name)
    assert support.sdk_error_code(ei.value) == "CertificateIssuerNotFound"
    assert_error(api.get(f"/certificates/issuers/{name}"), 404, "CertificateIssuerNotFound")


def test_issuer_without_provider_is_400(api):
    assert_error(api.put(f"/certificates/issuers/{unique('issuer-bad')}", json={}), 400, "BadParameter")


# ----------------------------------------------------------------------------- contacts


CONTACTS = [CertificateContact(email="ops@example.test", name="Ops", phone="555-0101"),
            CertificateContact(email="sec@example.test", name="Sec", phone="555-0102")]


def clear_contacts(certs):
    try:
        certs.delete_contacts()
    except ResourceNotFoundError:
        pass


def test_contacts_get_when_none_is_404(certs, api):
    clear_contacts(certs)
    with pytest.raises(ResourceNotFoundError) as ei:
        certs.get_contacts()
    assert support.sdk_error_code(ei.value) == "ContactsNotFound"
    assert_error(api.get("/certificates/contacts"), 404, "ContactsNotFound")


def test_contacts_set_get_delete(certs, api, server):
    clear_contacts(certs)
    got = certs.set_contacts(CONTACTS)
    assert sorted((c.email, c.name, c.phone) for c in got) == [
        ("ops@example.test", "Ops", "555-0101"), ("sec@example.test", "Sec", "555-0102")]
    body = ok_json(api.get("/certificates/contacts"))
    assert body["id"] == f"{server.url}/certificates/contacts"
    assert len(body["contacts"]) == 2
    got = certs.get_contacts()
    assert sorted(c.email for c in got) == ["ops@example.test", "sec@example.test"]
    deleted = certs.delete_contacts()
    assert sorted(c.email for c in deleted) == ["ops@example.test", "sec@example.test"]
    with pytest.raises(ResourceNotFoundError):
        certs.get_contacts()


def test_contacts_set_replaces(certs):
    clear_contacts(certs)
    certs.set_contacts(CONTACTS)
    certs.set_contacts([CertificateContact(email="only@example.test")])
    assert [c.email for c in certs.get_contacts()] == ["only@example.test"]
    clear_contacts(certs)


def test_route_words_are_not_certificate_names(certs, api):
    """`contacts`, `issuers` and `restore` are route words under /certificates (§2)."""
    clear_contacts(certs)
    assert_error(api.get("/certificates/contacts"), 404, "ContactsNotFound")
    body = ok_json(api.get("/certificates/issuers"))
    assert isinstance(body.get("value"), list)


def test_cer_of_recovered_imported_chain(certs, secrets, local_ca):
    """Chain survives delete + recover."""
    ca_key, ca = local_ca
    name = unique("recover-chain")
    key = support.rsa_key()
    leaf = make_leaf(ca_key, ca, support.name_cn(name), key.public_key())
    certs.import_certificate(name, pem_bundle(key, leaf, [ca]), policy=PEM_POLICY)
    delete(certs, name)
    certs.begin_recover_deleted_certificate(name, **LRO).wait(timeout=60)
    blocks = support.pem_blocks(secrets.get_secret(name).value)
    assert [b[1] for b in blocks if b[0] == "CERTIFICATE"] == [der(leaf), der(ca)]
    assert load_cer(certs.get_certificate(name).cer) == leaf
