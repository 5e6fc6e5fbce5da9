//! PEM and PKCS#12 containers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use certvault_crypto::*;
use common::*;

fn leaf_key() -> PrivateKey {
    parse_pem(&fixture("leaf.key")).unwrap().key.unwrap()
}

fn fixture_chain() -> Vec<Vec<u8>> {
    vec![
        fixture_cert("leaf.crt"),
        fixture_cert("inter.crt"),
        fixture_cert("ca.crt"),
    ]
}

// ------------------------------------------------------------------------------------------
// PEM
// ------------------------------------------------------------------------------------------

#[test]
fn pem_round_trip_all_key_encodings() {
    let chain = fixture_chain();
    for (file, alg) in [
        ("leaf.key", KeyAlg::Rsa(2048)),
        ("leaf-pkcs1.key", KeyAlg::Rsa(2048)),
        ("ec-sec1.key", KeyAlg::Ec(Curve::P384)),
        ("inter.key", KeyAlg::Ec(Curve::P384)),
    ] {
        let key = parse_pem(&fixture(file)).unwrap().key.unwrap();
        assert_eq!(key.alg(), alg, "{file}");
        let text = to_pem(Some(&key), &chain);
        let back = parse_pem(text.as_bytes()).unwrap();
        assert_eq!(back.key.unwrap().pkcs8_der(), key.pkcs8_der(), "{file}");
        assert_eq!(back.certs, chain);
    }
}

#[test]
fn to_pem_shape() {
    let key = leaf_key();
    let chain = fixture_chain();
    let text = to_pem(Some(&key), &chain);
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(text.ends_with("-----END CERTIFICATE-----\n"));
    assert!(!text.contains('\r'));
    assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 3);
    for line in text.lines() {
        assert!(line.len() <= 64, "{line}");
    }
    // The body lines are full 64-column lines except the last of each block.
    let body: Vec<&str> = text
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("-----"))
        .collect();
    assert!(body[..body.len() - 1].iter().all(|l| l.len() == 64));
    // OpenSSL-produced PEM for the certificate is byte-identical.
    let leaf_pem = String::from_utf8(fixture("leaf.crt")).unwrap();
    assert_eq!(to_pem(None, &chain[..1]), leaf_pem);
    assert_eq!(to_pem(None, &[]), "");
}

#[test]
fn pem_tolerates_crlf_text_and_garbage() {
    let key = String::from_utf8(fixture("leaf.key")).unwrap();
    let chain = String::from_utf8(fixture("chain.crt")).unwrap();
    let leaf = String::from_utf8(fixture("leaf.crt")).unwrap();
    let messy = format!(
        "Bag Attributes\n    friendlyName: leaf\nsubject=/CN=leaf.example.com\n{}\ntrailing junk\n{}",
        leaf.trim_end().to_string() + "garbage after END",
        key + &chain + "\n\n--- end of file ---\n"
    )
    .replace('\n', "\r\n");
    let b = parse_pem(messy.as_bytes()).unwrap();
    assert_eq!(b.key.unwrap().pkcs8_der(), leaf_key().pkcs8_der());
    assert_eq!(b.certs, fixture_chain());
    // Certificates only, no key.
    let b = parse_pem(chain.as_bytes()).unwrap();
    assert!(b.key.is_none());
    assert_eq!(b.certs.len(), 2);
}

#[test]
fn pem_errors() {
    for f in ["leaf-encrypted-pkcs8.key", "leaf-encrypted-pkcs1.key"] {
        let e = parse_pem(&fixture(f)).unwrap_err();
        assert!(matches!(e, CryptoError::Unsupported(_)), "{f}: {e:?}");
        assert!(e.to_string().contains("encrypted"), "{e}");
    }
    let two_keys = [fixture("leaf.key"), fixture("inter.key")].concat();
    assert!(matches!(
        parse_pem(&two_keys),
        Err(CryptoError::BadParameter(_))
    ));
    assert!(matches!(
        parse_pem(b"hello"),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(parse_pem(b""), Err(CryptoError::Malformed(_))));
    let truncated = String::from_utf8(fixture("leaf.crt")).unwrap();
    let truncated = &truncated[..truncated.len() - 30];
    assert!(matches!(
        parse_pem(truncated.as_bytes()),
        Err(CryptoError::Malformed(_))
    ));
    let bad_b64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        parse_pem(bad_b64.as_bytes()),
        Err(CryptoError::Malformed(_))
    ));
    let bad_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert!(matches!(
        parse_pem(bad_key.as_bytes()),
        Err(CryptoError::Malformed(_))
    ));
    // Errors never echo key bytes.
    let e = parse_pem(bad_key.as_bytes()).unwrap_err().to_string();
    assert!(!e.contains("AAAA"));
}

// ------------------------------------------------------------------------------------------
// PKCS#12 import of OpenSSL-made files
// ------------------------------------------------------------------------------------------

fn check_fixture_pfx(file: &str, password: &str) {
    let b = parse_pfx(&fixture(file), password).unwrap_or_else(|e| panic!("{file}: {e:?}"));
    assert_eq!(
        b.key.as_ref().unwrap().pkcs8_der(),
        leaf_key().pkcs8_der(),
        "{file}"
    );
    let ordered = order_chain(b.key.as_ref().map(|k| k.public_key()).as_ref(), b.certs).unwrap();
    assert_eq!(ordered, fixture_chain(), "{file}");
}

#[test]
fn pfx_openssl_modern_aes() {
    check_fixture_pfx("modern.pfx", FIXTURE_PASS);
}

#[test]
fn pfx_openssl_legacy_rc2() {
    check_fixture_pfx("legacy-rc2.pfx", FIXTURE_PASS);
}

#[test]
fn pfx_openssl_3des() {
    check_fixture_pfx("3des.pfx", FIXTURE_PASS);
}

#[test]
fn pfx_openssl_empty_password() {
    check_fixture_pfx("empty-password.pfx", "");
    assert_eq!(
        parse_pfx(&fixture("empty-password.pfx"), "x").unwrap_err(),
        CryptoError::BadPassword
    );
}

#[test]
fn pfx_openssl_no_mac() {
    check_fixture_pfx("nomac.pfx", FIXTURE_PASS);
    check_fixture_pfx("nomac-noenc.pfx", "");
    // Without a MAC a wrong password surfaces as a decryption failure: still BadPassword.
    assert_eq!(
        parse_pfx(&fixture("nomac.pfx"), "wrong").unwrap_err(),
        CryptoError::BadPassword
    );
}

#[test]
fn pfx_openssl_ec_and_certs_only() {
    let b = parse_pfx(&fixture("ec.pfx"), FIXTURE_PASS).unwrap();
    assert_eq!(b.key.as_ref().unwrap().alg(), KeyAlg::Ec(Curve::P384));
    assert_eq!(b.certs.len(), 2);
    let b = parse_pfx(&fixture("certs-only.pfx"), FIXTURE_PASS).unwrap();
    assert!(b.key.is_none());
    assert_eq!(b.certs.len(), 2);
}

#[test]
fn pfx_wrong_password_and_corruption() {
    for f in ["modern.pfx", "legacy-rc2.pfx", "3des.pfx"] {
        let e = parse_pfx(&fixture(f), "wrong").unwrap_err();
        assert_eq!(e, CryptoError::BadPassword, "{f}");
        assert!(!e.to_string().contains("wrong"));
    }
    assert!(matches!(
        parse_pfx(b"not a pfx", ""),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(parse_pfx(&[], ""), Err(CryptoError::Malformed(_))));
    let mut data = fixture("modern.pfx");
    data.truncate(data.len() / 2);
    assert!(matches!(
        parse_pfx(&data, FIXTURE_PASS),
        Err(CryptoError::Malformed(_))
    ));
    // A flipped byte inside the MAC-protected content: MAC failure.
    let mut data = fixture("modern.pfx");
    let i = data.len() / 2;
    data[i] ^= 0x01;
    assert!(parse_pfx(&data, FIXTURE_PASS).is_err());
}

// ------------------------------------------------------------------------------------------
// PKCS#12 export (Key Vault profile)
// ------------------------------------------------------------------------------------------

#[test]
fn write_pfx_round_trip() {
    let key = leaf_key();
    let chain = fixture_chain();
    for password in ["", "s3cret ü"] {
        let data = write_pfx(Some(&key), &chain, password).unwrap();
        let b = parse_pfx(&data, password).unwrap();
        assert_eq!(b.key.unwrap().pkcs8_der(), key.pkcs8_der());
        assert_eq!(b.certs, chain, "bag order = chain order");
        assert_eq!(
            parse_pfx(&data, "other").unwrap_err(),
            CryptoError::BadPassword
        );
    }
    // EC key, no chain; certificates without key.
    let ec = PrivateKey::generate(KeyAlg::Ec(Curve::P521)).unwrap();
    let b = parse_pfx(&write_pfx(Some(&ec), &[], "").unwrap(), "").unwrap();
    assert_eq!(b.key.unwrap().pkcs8_der(), ec.pkcs8_der());
    assert!(b.certs.is_empty());
    let many: Vec<Vec<u8>> = (0..12)
        .map(|_| chain[2].clone())
        .chain(chain.clone())
        .collect();
    let b = parse_pfx(&write_pfx(None, &many, "").unwrap(), "").unwrap();
    assert!(b.key.is_none());
    assert_eq!(b.certs, many);
}

#[test]
fn write_pfx_errors() {
    let key = leaf_key();
    assert!(matches!(
        write_pfx(None, &[], ""),
        Err(CryptoError::BadParameter(_))
    ));
    let mut chain = fixture_chain();
    chain.rotate_left(1);
    assert_eq!(
        write_pfx(Some(&key), &chain, "").unwrap_err(),
        CryptoError::KeyMismatch
    );
    assert!(matches!(
        write_pfx(None, &[b"junk".to_vec()], ""),
        Err(CryptoError::Malformed(_))
    ));
}

#[test]
fn write_pfx_is_key_vault_profile_per_openssl() {
    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let key = leaf_key();
    let data = write_pfx(Some(&key), &fixture_chain(), "").unwrap();
    let path = dir.path().join("out.pfx");
    std::fs::write(&path, &data).unwrap();
    let out = Command::new("openssl")
        .args(["pkcs12", "-in"])
        .arg(&path)
        .args(["-passin", "pass:", "-nodes", "-info"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("MAC: sha1, Iteration 2000"), "{stderr}");
    assert!(
        stderr.contains("PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2000"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2000"),
        "{stderr}"
    );
    assert_eq!(stdout.matches("-----BEGIN CERTIFICATE-----").count(), 3);
    assert_eq!(stdout.matches("-----BEGIN PRIVATE KEY-----").count(), 1);
    assert_eq!(
        stdout.matches("localKeyID:").count(),
        2,
        "key + leaf carry localKeyID"
    );
    // The key openssl extracted is ours.
    let b = parse_pem(stdout.as_bytes()).unwrap();
    assert_eq!(b.key.unwrap().pkcs8_der(), key.pkcs8_der());
}

#[test]
fn write_pfx_is_readable_by_python_cryptography() {
    require_python_cryptography();
    let key = leaf_key();
    let data = write_pfx(Some(&key), &fixture_chain(), "").unwrap();
    let script = r#"
import sys
from cryptography.hazmat.primitives.serialization import pkcs12
data = sys.stdin.buffer.read()
for pw in (None, b""):
    k, c, extra = pkcs12.load_key_and_certificates(data, pw)
    assert k is not None and k.key_size == 2048, "key"
    assert c is not None and "leaf.example.com" in c.subject.rfc4514_string(), "cert"
    assert len(extra) == 2, len(extra)
print("ok")
"#;
    let (ok, out) = python(script, &data);
    assert!(ok && out.contains("ok"), "{out}");
}
