//! Envelope encryption at rest (master key → vault key → per-object data key), random bytes and
//! hashes.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::CryptoError;

/// Format byte of a [`seal`] blob (AES-256-GCM, 96-bit nonce, 128-bit tag).
const SEAL_V1: u8 = 0x01;
/// Format byte of a [`seal_object`] blob.
const OBJECT_V1: u8 = 0x02;
const TAG_LEN: usize = 16;
/// Length of a sealed 32-byte data key.
const SEALED_KEY_LEN: usize = 1 + NONCE_LEN + 32 + TAG_LEN;
/// Domain separation for the data-key layer's AAD.
const DEK_AAD_PREFIX: &[u8] = b"certvault/dek/v1\0";

/// A 256-bit symmetric key (AES-256-GCM), held in zeroizing memory. `Debug` prints `[redacted]`.
#[derive(Clone)]
pub struct SymKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for SymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl SymKey {
    /// A fresh random key from the system CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(k.as_mut())
            .map_err(|_| CryptoError::internal("random number generator failed"))?;
        Ok(Self(k))
    }

    /// Wraps existing key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Wraps existing key bytes from a slice, which must be exactly 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::bad("a symmetric key must be 32 bytes"))?;
        Ok(Self::from_bytes(arr))
    }

    /// The raw key bytes. Handle with care.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> Result<LessSafeKey, CryptoError> {
        let unbound = UnboundKey::new(&AES_256_GCM, self.0.as_ref())
            .map_err(|_| CryptoError::internal("AES key setup failed"))?;
        Ok(LessSafeKey::new(unbound))
    }
}

/// Fills a vector with `n` random bytes from the system CSPRNG.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut v)
        .map_err(|_| CryptoError::internal("random number generator failed"))?;
    Ok(v)
}

/// SHA-256.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// An HMAC-SHA-256 key set up once (its inner and outer pads computed), for a caller that
/// MACs many messages with the same key (the audit chain: one MAC per record).
pub struct HmacSha256Key(aws_lc_rs::hmac::Key);

impl fmt::Debug for HmacSha256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacSha256Key([redacted])")
    }
}

impl HmacSha256Key {
    /// Sets up `key`.
    pub fn new(key: &SymKey) -> Self {
        Self(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            key.as_bytes(),
        ))
    }

    /// The MAC of the concatenation of `parts`; equal to [`hmac_sha256`] with the same key.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        for p in parts {
            ctx.update(p);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// HMAC-SHA256 of the concatenation of `parts` under `key` (the audit chain).
pub fn hmac_sha256(key: &SymKey, parts: &[&[u8]]) -> [u8; 32] {
    let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key.as_bytes());
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// SHA-1 (certificate thumbprints and key identifiers only).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let d = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    let mut out = [0u8; 20];
    out.copy_from_slice(d.as_ref());
    out
}

/// Encrypts with AES-256-GCM and a random 96-bit nonce. `aad` is authenticated, not stored.
///
/// Output: `0x01 ‖ nonce (12) ‖ ciphertext ‖ tag (16)` — 29 bytes of overhead.
pub fn seal(key: &SymKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| CryptoError::internal("random number generator failed"))?;
    // Pre-sized and encrypted in place, so no plaintext copy is left behind by a reallocation.
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(SEAL_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let tag = key
        .aead()?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[1 + NONCE_LEN..],
        )
        .map_err(|_| CryptoError::internal("AES-GCM encryption failed"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypts a [`seal`] blob. Errors: [`CryptoError::Malformed`] for a wrong format byte or a
/// too-short blob; [`CryptoError::Decrypt`] for a wrong key, wrong `aad` or tampered data.
pub fn open(key: &SymKey, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != SEAL_V1 {
        return Err(CryptoError::malformed("sealed data"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
    let mut body = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
    let len = key
        .aead()?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| CryptoError::Decrypt)?
        .len();
    body.truncate(len);
    Ok(body)
}

fn dek_aad(aad: &[u8]) -> Vec<u8> {
    [DEK_AAD_PREFIX, aad].concat()
}

/// Envelope-encrypts one object: a fresh random data key encrypts `plaintext`, and `vault_key`
/// encrypts the data key. Both layers authenticate `aad` (bind it to the object's identity,
/// e.g. `b"vault/cert/name/version"`).
///
/// Output: `0x02 ‖ seal(vault_key, data key) (61 bytes) ‖ seal(data key, plaintext)` — 91 bytes
/// of overhead.
pub fn seal_object(
    vault_key: &SymKey,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let dek = SymKey::generate()?;
    let wrapped = seal(vault_key, &dek_aad(aad), dek.as_bytes())?;
    let body = seal(&dek, aad, plaintext)?;
    let mut out = Vec::with_capacity(1 + wrapped.len() + body.len());
    out.push(OBJECT_V1);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&body);
    Ok(out)
}

fn split_object(blob: &[u8]) -> Result<(&[u8], &[u8]), CryptoError> {
    if blob.len() < 1 + SEALED_KEY_LEN || blob[0] != OBJECT_V1 {
        return Err(CryptoError::malformed("sealed object"));
    }
    Ok(blob[1..].split_at(SEALED_KEY_LEN))
}

/// Decrypts a [`seal_object`] blob. Errors as for [`open`].
pub fn open_object(
    vault_key: &SymKey,
    aad: &[u8],
    blob: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let (wrapped, body) = split_object(blob)?;
    let dek = SymKey::from_slice(&open(vault_key, &dek_aad(aad), wrapped)?)
        .map_err(|_| CryptoError::malformed("sealed object"))?;
    open(&dek, aad, body)
}

/// Re-encrypts only the data key of a [`seal_object`] blob under a new vault key (for vault-key
/// rotation) without touching the payload. The `aad` must be the one used to seal the object.
pub fn rewrap_object(
    old_vault_key: &SymKey,
    new_vault_key: &SymKey,
    aad: &[u8],
    blob: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let (wrapped, body) = split_object(blob)?;
    let dek = open(old_vault_key, &dek_aad(aad), wrapped)?;
    let rewrapped = seal(new_vault_key, &dek_aad(aad), &dek)?;
    let mut out = Vec::with_capacity(blob.len());
    out.push(OBJECT_V1);
    out.extend_from_slice(&rewrapped);
    out.extend_from_slice(body);
    Ok(out)
}
