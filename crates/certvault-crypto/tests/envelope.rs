//! Envelope encryption at rest, random bytes and hashes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use certvault_crypto::*;

#[test]
fn seal_open_round_trip() {
    let k = SymKey::generate().unwrap();
    for pt in [&b""[..], b"x", &[7u8; 5000]] {
        let sealed = seal(&k, b"aad", pt).unwrap();
        assert_eq!(sealed.len(), pt.len() + 29);
        assert_eq!(sealed[0], 1);
        assert_eq!(&open(&k, b"aad", &sealed).unwrap()[..], pt);
    }
    // Random nonces: the same input seals differently.
    assert_ne!(
        seal(&k, b"", b"same").unwrap(),
        seal(&k, b"", b"same").unwrap()
    );
}

#[test]
fn seal_detects_tampering_wrong_key_and_aad() {
    let k = SymKey::generate().unwrap();
    let sealed = seal(&k, b"vault/cert/a/1", b"private key bytes").unwrap();
    for i in 1..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x80;
        assert_eq!(
            open(&k, b"vault/cert/a/1", &bad).unwrap_err(),
            CryptoError::Decrypt,
            "{i}"
        );
    }
    let mut bad = sealed.clone();
    bad[0] = 9;
    assert!(matches!(
        open(&k, b"vault/cert/a/1", &bad),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(
        open(&k, b"", &sealed[..20]),
        Err(CryptoError::Malformed(_))
    ));
    assert_eq!(
        open(&k, b"vault/cert/a/2", &sealed).unwrap_err(),
        CryptoError::Decrypt
    );
    let other = SymKey::generate().unwrap();
    assert_eq!(
        open(&other, b"vault/cert/a/1", &sealed).unwrap_err(),
        CryptoError::Decrypt
    );
}

#[test]
fn seal_object_round_trip_and_failures() {
    let vk = SymKey::generate().unwrap();
    let blob = seal_object(&vk, b"obj-1", b"payload").unwrap();
    assert_eq!(blob[0], 2);
    assert_eq!(blob.len(), 7 + 91);
    assert_eq!(&open_object(&vk, b"obj-1", &blob).unwrap()[..], b"payload");
    let other = SymKey::generate().unwrap();
    assert_eq!(
        open_object(&other, b"obj-1", &blob).unwrap_err(),
        CryptoError::Decrypt
    );
    assert_eq!(
        open_object(&vk, b"obj-2", &blob).unwrap_err(),
        CryptoError::Decrypt
    );
    let mut bad = blob.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert_eq!(
        open_object(&vk, b"obj-1", &bad).unwrap_err(),
        CryptoError::Decrypt
    );
    assert!(matches!(
        open_object(&vk, b"obj-1", &blob[..50]),
        Err(CryptoError::Malformed(_))
    ));
    assert!(matches!(
        open_object(&vk, b"obj-1", &seal(&vk, b"", b"x").unwrap()),
        Err(CryptoError::Malformed(_))
    ));
    // Two objects never share a data key: swapping the payload halves fails.
    let blob2 = seal_object(&vk, b"obj-1", b"payload").unwrap();
    let mut mixed = blob[..62].to_vec();
    mixed.extend_from_slice(&blob2[62..]);
    assert_eq!(
        open_object(&vk, b"obj-1", &mixed).unwrap_err(),
        CryptoError::Decrypt
    );
}

#[test]
fn rewrap_object_rotates_vault_key() {
    let old = SymKey::generate().unwrap();
    let new = SymKey::generate().unwrap();
    let blob = seal_object(&old, b"id", b"data").unwrap();
    let rewrapped = rewrap_object(&old, &new, b"id", &blob).unwrap();
    assert_eq!(&rewrapped[62..], &blob[62..], "payload untouched");
    assert_eq!(&open_object(&new, b"id", &rewrapped).unwrap()[..], b"data");
    assert_eq!(
        open_object(&old, b"id", &rewrapped).unwrap_err(),
        CryptoError::Decrypt
    );
    assert_eq!(
        rewrap_object(&new, &old, b"id", &blob).unwrap_err(),
        CryptoError::Decrypt
    );
}

#[test]
fn sym_key_handling() {
    let k = SymKey::from_bytes([42; 32]);
    assert_eq!(k.as_bytes(), &[42; 32]);
    assert_eq!(format!("{k:?}"), "[redacted]");
    assert!(SymKey::from_slice(&[0; 31]).is_err());
    assert_eq!(SymKey::from_slice(&[1; 32]).unwrap().as_bytes(), &[1; 32]);
    assert_ne!(
        SymKey::generate().unwrap().as_bytes(),
        SymKey::generate().unwrap().as_bytes()
    );
}

#[test]
fn random_and_hashes() {
    assert_eq!(random_bytes(0).unwrap().len(), 0);
    let a = random_bytes(32).unwrap();
    assert_eq!(a.len(), 32);
    assert_ne!(a, random_bytes(32).unwrap());
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex(&sha1(b"abc")),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
}

#[test]
fn hmac_sha256_matches_a_reference_and_parts_concatenate() {
    let key: [u8; 32] = core::array::from_fn(|i| u8::try_from(i).unwrap());
    let k = SymKey::from_bytes(key);
    // Python: hmac.new(bytes(range(32)), b"what do ya want for nothing?", sha256)
    let want = "099805f4ac310786968565c098db515cc50862b420ae31e20238312344bed36a";
    let one = hmac_sha256(&k, &[b"what do ya want for nothing?"]);
    let two = hmac_sha256(&k, &[b"what do ya want ", b"", b"for nothing?"]);
    let hex: String = one.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, want);
    assert_eq!(one, two);
    let other = SymKey::from_bytes([1; 32]);
    assert_ne!(hmac_sha256(&other, &[b"what do ya want for nothing?"]), one);
}

/// The set-up key gives the same MAC as the one-shot function (the audit chain switched from
/// one to the other: existing chains must still verify), and depends on every part.
#[test]
fn prepared_hmac_key_matches_the_one_shot_mac() {
    let key = SymKey::generate().unwrap();
    let other = SymKey::generate().unwrap();
    let prepared = HmacSha256Key::new(&key);
    for parts in [
        vec![],
        vec![&b""[..]],
        vec![&b"prev"[..], &b"{\"seq\":1}"[..]],
        vec![
            &[0u8; 200][..],
            &b"certvault/audit-head/v1\0"[..],
            &7i64.to_be_bytes()[..],
        ],
    ] {
        assert_eq!(prepared.sign(&parts), hmac_sha256(&key, &parts));
        assert_ne!(prepared.sign(&parts), hmac_sha256(&other, &parts));
    }
    assert_ne!(prepared.sign(&[b"a"]), prepared.sign(&[b"b"]));
    // reused many times, the key keeps giving the same answer
    let first = prepared.sign(&[b"x", b"y"]);
    for _ in 0..100 {
        assert_eq!(prepared.sign(&[b"x", b"y"]), first);
    }
    assert_eq!(format!("{prepared:?}"), "HmacSha256Key([redacted])");
}
