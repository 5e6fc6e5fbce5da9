//! Parsers must return errors, never panic, on corrupted input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use certvault_crypto::*;
use common::*;

/// Deterministic byte mutations: flip, truncate, extend.
fn mutations(data: &[u8], n: usize) -> Vec<Vec<u8>> {
    let r = random_bytes(n * 3).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let mut d = data.to_vec();
        let pos = (usize::from(r[3 * i]) << 8 | usize::from(r[3 * i + 1])) % d.len();
        match r[3 * i + 2] % 4 {
            0 => d[pos] ^= 1 << (r[3 * i + 2] % 8),
            1 => d[pos] = r[3 * i + 2],
            2 => d.truncate(pos),
            _ => d.insert(pos, r[3 * i + 2]),
        }
        out.push(d);
    }
    out
}

#[test]
fn corrupted_inputs_do_not_panic() {
    let cert = fixture_cert("leaf.crt");
    for m in mutations(&cert, 400) {
        let _ = parse_certificate(&m);
        let _ = order_chain(None, vec![m.clone(), cert.clone()]);
        let _ = verify_signed_by(&m, &cert);
        let _ = PublicKey::from_spki_der(&m);
    }
    let key = parse_pem(&fixture("leaf.key")).unwrap().key.unwrap();
    for m in mutations(key.pkcs8_der(), 100) {
        let _ = PrivateKey::from_pkcs8_der(&m);
    }
    for m in mutations(&fixture("nomac-noenc.pfx"), 300) {
        let _ = parse_pfx(&m, "");
    }
    for m in mutations(&fixture("3des.pfx"), 50) {
        let _ = parse_pfx(&m, FIXTURE_PASS);
    }
    let pem = [fixture("leaf.key"), fixture("chain.crt")].concat();
    for m in mutations(&pem, 200) {
        let _ = parse_pem(&m);
    }
    let vk = SymKey::generate().unwrap();
    let blob = seal_object(&vk, b"a", b"payload").unwrap();
    for m in mutations(&blob, 200) {
        assert!(open_object(&vk, b"a", &m).is_err() || m == blob);
    }
    for s in [
        "CN=\u{0}", "CN=\\", "+", ",", "=", "CN=a+", "CN=\"\\", "\\41=x", "CN=\\4",
    ] {
        let _ = validate_subject(s);
    }
}
