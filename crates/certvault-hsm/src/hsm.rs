//! [`Hsm`]: keys generated and used inside a PKCS#11 token.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use certvault_crypto::{
    CertSigner, CryptoError, Curve, EncAlg, KeyAlg, PublicKey, SignAlg, ecdsa_raw_to_der,
    random_bytes, x509_signing_digest,
};
use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::pool::{OpError, Pool, load_module, lock};
use crate::{HsmError, KeyRef};

/// Length of a random `CKA_ID`.
const ID_LEN: usize = 16;
/// Format byte of an [`Hsm::aes_seal`] blob: AES-256-GCM in the token, 96-bit IV, 128-bit tag.
const HSM_SEAL_V1: u8 = 0x10;
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
/// Largest `pool_size` accepted.
const MAX_POOL: usize = 256;

/// DER `OBJECT IDENTIFIER`s of the named curves (`CKA_EC_PARAMS`).
const EC_PARAMS_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const EC_PARAMS_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const EC_PARAMS_P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

/// DER `DigestInfo` prefixes (RFC 8017 §9.2 note 1) for RSASSA-PKCS1-v1_5 over `CKM_RSA_PKCS`.
const DIGEST_INFO_SHA256: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const DIGEST_INFO_SHA384: &[u8] = &[
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const DIGEST_INFO_SHA512: &[u8] = &[
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// How to reach the token.
///
/// `Debug` prints the PIN as `[redacted]`.
#[derive(Clone)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module, e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// Label of the token (as set by `softhsm2-util --init-token --label …` or the HSM's
    /// tools). Exactly one present token must carry it.
    pub token_label: String,
    /// The user PIN; read it with [`crate::read_pin`].
    pub pin: Zeroizing<String>,
    /// Number of logged-in R/W sessions to keep open: the most PKCS#11 calls that can run at
    /// once. 1 to 256; the number of blocking threads expected to use the HSM concurrently (for
    /// example 4–16) is a good value.
    pub pool_size: usize,
}

impl fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("pin", &"[redacted]")
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// The protection attributes of a key in the token, as the token reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyProtection {
    /// `CKA_SENSITIVE`: the key value can never be read in plaintext.
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE`: the key can be wrapped (exported encrypted). certvault keys: `false`.
    pub extractable: bool,
    /// `CKA_NEVER_EXTRACTABLE`: the key has never been extractable.
    pub never_extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`: the key has always been sensitive.
    pub always_sensitive: bool,
}

/// What a [`KeyRef`] resolved to.
#[derive(Clone)]
enum KeyKind {
    /// A key pair; the handle is the private key's.
    Pair(PublicKey),
    /// An AES secret key.
    Aes,
}

#[derive(Clone)]
struct Resolved {
    handle: ObjectHandle,
    kind: KeyKind,
}

struct Inner {
    pool: Pool,
    module: PathBuf,
    label: String,
    /// The module's lock for operations that create, destroy or search token objects.
    structure: Arc<Mutex<()>>,
    /// Take `structure` for every such operation (SoftHSM2), not only where certvault needs
    /// atomicity.
    serialize_structure: bool,
    /// `CKA_ID` → private/secret key handle and what it is. Token object handles stay valid for
    /// the process; a stale entry (`CKR_OBJECT_HANDLE_INVALID`) is dropped and looked up again.
    cache: Mutex<HashMap<Vec<u8>, Resolved>>,
}

/// A PKCS#11 token holding certvault's HSM keys.
///
/// Cheap to clone (an `Arc` inside), `Send + Sync`. Every method blocks on PKCS#11 calls: call
/// them from blocking threads (`tokio::task::spawn_blocking`). Up to `pool_size` calls run at
/// once; further callers wait up to 30 s for a free session, then get [`HsmError::Busy`].
///
/// Keys are created with `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE` and
/// `CKA_EXTRACTABLE=false`; the private key never leaves the token and nothing in this API
/// returns key material.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hsm")
            .field("module", &self.inner.module)
            .field("token_label", &self.inner.label)
            .field("pool_size", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Hsm>();
    send_sync::<HsmSigner>();
};

fn bool_attr(attrs: &[Attribute], t: AttributeType) -> Option<bool> {
    attrs.iter().find_map(|a| match (a, t) {
        (Attribute::Sensitive(v), AttributeType::Sensitive)
        | (Attribute::Extractable(v), AttributeType::Extractable)
        | (Attribute::NeverExtractable(v), AttributeType::NeverExtractable)
        | (Attribute::AlwaysSensitive(v), AttributeType::AlwaysSensitive) => Some(*v),
        _ => None,
    })
}

fn curve_params(curve: Curve) -> Result<&'static [u8], HsmError> {
    match curve {
        Curve::P256 => Ok(EC_PARAMS_P256),
        Curve::P384 => Ok(EC_PARAMS_P384),
        Curve::P521 => Ok(EC_PARAMS_P521),
        Curve::P256K => Err(CryptoError::Unsupported(
            "curve P-256K (secp256k1) is not allowed for certificates".to_string(),
        )
        .into()),
    }
}

fn curve_from_params(params: &[u8]) -> Result<Curve, HsmError> {
    match params {
        EC_PARAMS_P256 => Ok(Curve::P256),
        EC_PARAMS_P384 => Ok(Curve::P384),
        EC_PARAMS_P521 => Ok(Curve::P521),
        _ => Err(HsmError::Unsupported(
            "this EC key's curve (only P-256, P-384 and P-521 are used)".to_string(),
        )),
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING holding the point (PKCS#11 2.40); some modules return
/// the bare point. Returns the bare point.
fn unwrap_ec_point(v: &[u8]) -> &[u8] {
    let Some((&0x04, rest)) = v.split_first() else {
        return v;
    };
    let (len, body) = match rest.split_first() {
        Some((&l, body)) if l < 0x80 => (usize::from(l), body),
        Some((&0x81, body)) => match body.split_first() {
            Some((&l, body)) => (usize::from(l), body),
            None => return v,
        },
        _ => return v,
    };
    if body.len() == len && body.first() == Some(&0x04) {
        body
    } else {
        v
    }
}

impl Hsm {
    /// Loads the module (once per process), finds the token by label, opens `pool_size` R/W
    /// sessions and logs in as the user.
    ///
    /// Errors: [`HsmError::Config`], [`HsmError::ModuleLoad`], [`HsmError::TokenNotFound`],
    /// [`HsmError::TokenUnusable`], [`HsmError::WrongPin`], [`HsmError::PinLocked`].
    ///
    /// PKCS#11 login state is per process and token: if this process is already logged in to
    /// the token (another `Hsm` for the same token is open), the token accepts the session
    /// without checking `pin` again.
    ///
    /// SoftHSM2's file object store is not thread-safe when objects are created or destroyed
    /// while another thread searches the token (sporadic `CKR_GENERAL_ERROR` from
    /// `C_GenerateKeyPair`, objects seen twice). For a token whose manufacturer is SoftHSM,
    /// key generation, destruction and object searches are therefore serialised across the
    /// process; signing, decryption and AES operations on known keys still run in parallel.
    pub fn open(cfg: HsmConfig) -> Result<Self, HsmError> {
        if cfg.token_label.is_empty() {
            return Err(HsmError::Config("the token label is empty".to_string()));
        }
        if cfg.pool_size == 0 || cfg.pool_size > MAX_POOL {
            return Err(HsmError::Config(format!(
                "the session pool size must be between 1 and {MAX_POOL}, got {}",
                cfg.pool_size
            )));
        }
        if cfg.pin.is_empty() {
            return Err(HsmError::Config("the PIN is empty".to_string()));
        }
        let module = load_module(&cfg.module)?;
        let (slot, manufacturer) = find_token(&module.ctx, &cfg)?;
        let pin = AuthPin::from(cfg.pin.as_str());
        let pool = Pool::open(
            module.ctx,
            slot,
            pin,
            cfg.token_label.clone(),
            cfg.pool_size,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                module: cfg.module,
                label: cfg.token_label,
                structure: module.structure,
                serialize_structure: manufacturer.starts_with("SoftHSM"),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The token label.
    pub fn token_label(&self) -> &str {
        &self.inner.label
    }

    /// Generates a key pair inside the token.
    ///
    /// `alg`: RSA 2048/3072/4096 (public exponent 65537) or EC P-256/P-384/P-521. The private
    /// key gets `CKA_TOKEN`, `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_EXTRACTABLE=false`, a random
    /// 16-byte `CKA_ID` (shared with the public key object) and `CKA_LABEL = label`; RSA keys
    /// may sign, decrypt and unwrap, EC keys may only sign. After generation `CKA_SENSITIVE`
    /// and `CKA_EXTRACTABLE` are read back; a token that did not honour them gets the key
    /// destroyed and [`HsmError::NotProtected`] returned.
    ///
    /// Slow for RSA (SoftHSM2: about 0.3 s for RSA-2048, seconds for RSA-4096).
    pub fn generate(&self, alg: KeyAlg, label: &str) -> Result<(KeyRef, PublicKey), HsmError> {
        let (mechanism, pub_specific, priv_specific) = match alg {
            KeyAlg::Rsa(bits) => {
                if !matches!(bits, 2048 | 3072 | 4096) {
                    return Err(CryptoError::BadParameter(
                        "RSA key size must be 2048, 3072 or 4096 bits".to_string(),
                    )
                    .into());
                }
                (
                    Mechanism::RsaPkcsKeyPairGen,
                    vec![
                        Attribute::ModulusBits(u64::from(bits).into()),
                        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                        Attribute::Verify(true),
                        Attribute::Encrypt(true),
                        Attribute::Wrap(true),
                    ],
                    vec![
                        Attribute::Sign(true),
                        Attribute::Decrypt(true),
                        Attribute::Unwrap(true),
                    ],
                )
            }
            KeyAlg::Ec(curve) => (
                Mechanism::EccKeyPairGen,
                vec![
                    Attribute::EcParams(curve_params(curve)?.to_vec()),
                    Attribute::Verify(true),
                ],
                vec![
                    Attribute::Sign(true),
                    Attribute::Decrypt(false),
                    Attribute::Derive(false),
                ],
            ),
        };
        let id = random_bytes(ID_LEN)?;
        let key = KeyRef::new(self.inner.label.clone(), id.clone())?;
        let mut pub_template = vec![
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Id(id.clone()),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        pub_template.extend(pub_specific);
        let mut priv_template = vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Id(id),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        priv_template.extend(priv_specific);

        let (handle, public) = self.structural(false, || {
            self.inner.pool.run(|s| {
                let (pub_h, priv_h) =
                    s.generate_key_pair(&mechanism, &pub_template, &priv_template)?;
                if let Err(e) = check_protected(s, priv_h) {
                    let _ = s.destroy_object(priv_h);
                    let _ = s.destroy_object(pub_h);
                    return Err(e);
                }
                let public = read_public(s, &key, priv_h)?;
                Ok((priv_h, public))
            })
        })?;
        self.remember(&key, handle, KeyKind::Pair(public.clone()));
        Ok((key, public))
    }

    /// The public key of a key pair in the token.
    ///
    /// Errors: [`HsmError::KeyNotFound`], [`HsmError::WrongKeyKind`] for an AES key.
    pub fn public_key(&self, key: &KeyRef) -> Result<PublicKey, HsmError> {
        match self.resolve(key)?.kind {
            KeyKind::Pair(pk) => Ok(pk),
            KeyKind::Aes => Err(not_a_pair(key)),
        }
    }

    /// Reads the protection attributes of a private or AES key.
    pub fn key_attributes(&self, key: &KeyRef) -> Result<KeyProtection, HsmError> {
        self.with_key(key, |s, r| {
            let attrs = s.get_attributes(
                r.handle,
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::NeverExtractable,
                    AttributeType::AlwaysSensitive,
                ],
            )?;
            Ok(KeyProtection {
                sensitive: bool_attr(&attrs, AttributeType::Sensitive).unwrap_or(false),
                extractable: bool_attr(&attrs, AttributeType::Extractable).unwrap_or(true),
                never_extractable: bool_attr(&attrs, AttributeType::NeverExtractable)
                    .unwrap_or(false),
                always_sensitive: bool_attr(&attrs, AttributeType::AlwaysSensitive)
                    .unwrap_or(false),
            })
        })
    }

    /// Signs a precomputed digest inside the token, with the semantics of
    /// [`certvault_crypto::sign`]: RS* = PKCS#1 v1.5 over `DigestInfo ‖ digest`
    /// (`CKM_RSA_PKCS`), PS* = `CKM_RSA_PKCS_PSS` with MGF1 over the same hash and a salt as
    /// long as the hash, ES* = `CKM_ECDSA`, raw `r‖s`.
    ///
    /// The digest length and algorithm/key checks are those of `certvault_crypto::sign` (same
    /// [`HsmError::Crypto`] messages). The signature is verified with the public key before it
    /// is returned ([`HsmError::BadSignature`] otherwise), so a faulty token cannot leak a
    /// broken RSA-CRT signature.
    pub fn sign(&self, key: &KeyRef, alg: SignAlg, digest: &[u8]) -> Result<Vec<u8>, HsmError> {
        let resolved = self.resolve(key)?;
        let KeyKind::Pair(public) = &resolved.kind else {
            return Err(not_a_pair(key));
        };
        // `verify` runs exactly the checks `sign` runs (digest length, algorithm vs key) before
        // it looks at the signature; with an empty signature it can only fail those checks.
        certvault_crypto::verify(public, alg, digest, &[])?;
        let pss = |hash_alg, mgf, s_len: u64| {
            Mechanism::RsaPkcsPss(PkcsPssParams {
                hash_alg,
                mgf,
                s_len: s_len.into(),
            })
        };
        let (mechanism, data): (Mechanism<'_>, Vec<u8>) = match alg {
            SignAlg::RS256 => (Mechanism::RsaPkcs, [DIGEST_INFO_SHA256, digest].concat()),
            SignAlg::RS384 => (Mechanism::RsaPkcs, [DIGEST_INFO_SHA384, digest].concat()),
            SignAlg::RS512 => (Mechanism::RsaPkcs, [DIGEST_INFO_SHA512, digest].concat()),
            SignAlg::PS256 => (
                pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32),
                digest.to_vec(),
            ),
            SignAlg::PS384 => (
                pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48),
                digest.to_vec(),
            ),
            SignAlg::PS512 => (
                pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64),
                digest.to_vec(),
            ),
            SignAlg::ES256 | SignAlg::ES384 | SignAlg::ES512 => (Mechanism::Ecdsa, digest.to_vec()),
        };
        let sig = self.with_key(key, |s, r| Ok(s.sign(&mechanism, r.handle, &data)?))?;
        if !certvault_crypto::verify(public, alg, digest, &sig)? {
            return Err(HsmError::BadSignature {
                key: key.to_string(),
            });
        }
        Ok(sig)
    }

    /// Decrypts with an RSA key inside the token: `RSA1_5` = `CKM_RSA_PKCS`, `RSA-OAEP` =
    /// `CKM_RSA_PKCS_OAEP` with SHA-1/MGF1-SHA-1, `RSA-OAEP-256` = SHA-256/MGF1-SHA-256 (no
    /// label), matching [`certvault_crypto::decrypt`].
    ///
    /// Errors: [`HsmError::Crypto`] (`BadParameter`) for an EC key or a ciphertext whose length
    /// is not the modulus length; [`HsmError::Decrypt`] when the token cannot decrypt it;
    /// [`HsmError::Unsupported`] when the token refuses the mechanism. **SoftHSM2 (2.6) does
    /// OAEP with SHA-1 only, so `RSA-OAEP-256` is `Unsupported` there**; hardware HSMs
    /// generally support it.
    pub fn decrypt(
        &self,
        key: &KeyRef,
        alg: EncAlg,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let resolved = self.resolve(key)?;
        let KeyKind::Pair(public) = &resolved.kind else {
            return Err(not_a_pair(key));
        };
        let KeyAlg::Rsa(bits) = public.alg() else {
            return Err(CryptoError::BadParameter(format!(
                "{alg} requires an RSA key, but this key is EC"
            ))
            .into());
        };
        let modulus_len = bits.div_ceil(8) as usize;
        if ciphertext.len() != modulus_len {
            return Err(CryptoError::BadParameter(format!(
                "the ciphertext must be {modulus_len} bytes for this key, got {}",
                ciphertext.len()
            ))
            .into());
        }
        let oaep = |hash, mgf| {
            Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
        };
        let mechanism = match alg {
            EncAlg::Rsa15 => Mechanism::RsaPkcs,
            EncAlg::RsaOaep => oaep(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
            EncAlg::RsaOaep256 => oaep(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        };
        let what = format!("{alg} decryption");
        self.with_key(key, |s, r| {
            s.decrypt(&mechanism, r.handle, ciphertext)
                .map(Zeroizing::new)
                .map_err(|e| decrypt_failure(e, &what))
        })
    }

    /// A [`CertSigner`] that signs certificates and CSRs with this key pair inside the token
    /// (for [`certvault_crypto::self_signed_with`], [`certvault_crypto::csr_with`],
    /// [`certvault_crypto::issue_with`]).
    pub fn signer(&self, key: &KeyRef) -> Result<HsmSigner, HsmError> {
        let public = self.public_key(key)?;
        Ok(HsmSigner {
            hsm: self.clone(),
            key: key.clone(),
            public,
        })
    }

    /// Destroys every object with the key's `CKA_ID` (private and public key, or the AES key).
    /// For purge. Errors: [`HsmError::KeyNotFound`] when there is nothing to destroy.
    pub fn destroy(&self, key: &KeyRef) -> Result<(), HsmError> {
        self.check_token(key)?;
        lock(&self.inner.cache).remove(key.id());
        let destroyed = self.structural(false, || {
            self.inner.pool.run(|s| {
                let objects = self
                    .inner
                    .pool
                    .find(s, &[Attribute::Id(key.id().to_vec())])?;
                for &o in &objects {
                    s.destroy_object(o)?;
                }
                Ok(objects.len())
            })
        })?;
        lock(&self.inner.cache).remove(key.id());
        if destroyed == 0 {
            return Err(not_found(key));
        }
        Ok(())
    }

    /// Generates a non-extractable AES-256 key in the token (for a master key): `CKA_TOKEN`,
    /// `CKA_PRIVATE`, `CKA_SENSITIVE`, `CKA_EXTRACTABLE=false`, `CKA_ENCRYPT`/`CKA_DECRYPT`
    /// only, `CKA_LABEL = label`, a random `CKA_ID`. The protection is read back as for
    /// [`Self::generate`].
    ///
    /// Errors: [`HsmError::AlreadyExists`] when an AES key with this label exists. The check
    /// is atomic within the process, not across processes: create the master key once, at
    /// setup.
    pub fn generate_aes_key(&self, label: &str) -> Result<KeyRef, HsmError> {
        // Always serialised in this process, so the label check and the creation are atomic
        // here (another process can still race).
        self.structural(true, || self.generate_aes_key_locked(label))
    }

    fn generate_aes_key_locked(&self, label: &str) -> Result<KeyRef, HsmError> {
        if self.find_aes_key_locked(label)?.is_some() {
            return Err(HsmError::AlreadyExists {
                label: label.to_string(),
                token: self.inner.label.clone(),
            });
        }
        let id = random_bytes(ID_LEN)?;
        let key = KeyRef::new(self.inner.label.clone(), id.clone())?;
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32u64.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Id(id),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let handle = self.inner.pool.run(|s| {
            let h = s.generate_key(&Mechanism::AesKeyGen, &template)?;
            if let Err(e) = check_protected(s, h) {
                let _ = s.destroy_object(h);
                return Err(e);
            }
            Ok(h)
        })?;
        self.remember(&key, handle, KeyKind::Aes);
        Ok(key)
    }

    /// Finds the AES key with this `CKA_LABEL`. `Ok(None)` when there is none.
    ///
    /// Errors: [`HsmError::Ambiguous`] when several AES keys carry the label;
    /// [`HsmError::BadKeyRef`] when the key has no usable `CKA_ID` (made by another tool).
    pub fn find_aes_key(&self, label: &str) -> Result<Option<KeyRef>, HsmError> {
        self.structural(false, || self.find_aes_key_locked(label))
    }

    fn find_aes_key_locked(&self, label: &str) -> Result<Option<KeyRef>, HsmError> {
        let found = self.inner.pool.run(|s| {
            let handles = self.inner.pool.find(
                s,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Label(label.as_bytes().to_vec()),
                ],
            )?;
            match handles.as_slice() {
                [] => Ok(None),
                [h] => {
                    let attrs = s.get_attributes(*h, &[AttributeType::Id])?;
                    let id = attrs.into_iter().find_map(|a| match a {
                        Attribute::Id(id) => Some(id),
                        _ => None,
                    });
                    Ok(Some((*h, id.unwrap_or_default())))
                }
                many => Err(HsmError::Ambiguous {
                    label: label.to_string(),
                    token: self.inner.label.clone(),
                    count: many.len(),
                }
                .into()),
            }
        })?;
        let Some((handle, id)) = found else {
            return Ok(None);
        };
        let key = KeyRef::new(self.inner.label.clone(), id).map_err(|_| {
            HsmError::BadKeyRef(format!(
                "the AES key labelled '{label}' has no usable CKA_ID (1 to 64 bytes)"
            ))
        })?;
        self.remember(&key, handle, KeyKind::Aes);
        Ok(Some(key))
    }

    /// Encrypts with AES-256-GCM inside the token (`CKM_AES_GCM`, a random 96-bit IV from
    /// aws-lc-rs, a 128-bit tag). `aad` is authenticated, not stored.
    ///
    /// Output: `0x10 ‖ IV (12) ‖ ciphertext ‖ tag (16)`, 29 bytes of overhead. The format byte
    /// differs from [`certvault_crypto::seal`]'s (`0x01`), so the two kinds of blobs cannot be
    /// confused.
    pub fn aes_seal(
        &self,
        key: &KeyRef,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        self.require_aes(key)?;
        let iv: [u8; GCM_IV_LEN] = random_bytes(GCM_IV_LEN)?
            .try_into()
            .map_err(|_| CryptoError::Internal("random number generator failed".to_string()))?;
        let body = self.with_key(key, |s, r| {
            let mut iv = iv;
            let params = GcmParams::new(&mut iv, aad, (GCM_TAG_LEN as u64 * 8).into())?;
            Ok(s.encrypt(&Mechanism::AesGcm(params), r.handle, plaintext)?)
        })?;
        if body.len() != plaintext.len() + GCM_TAG_LEN {
            return Err(HsmError::Pkcs11 {
                function: "C_Encrypt".to_string(),
                code: "unexpected AES-GCM output length".to_string(),
            });
        }
        let mut out = Vec::with_capacity(1 + GCM_IV_LEN + body.len());
        out.push(HSM_SEAL_V1);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decrypts an [`Self::aes_seal`] blob inside the token.
    ///
    /// Errors: [`HsmError::Malformed`] for a wrong format byte or a too-short blob;
    /// [`HsmError::Decrypt`] for a wrong key, wrong `aad` or tampered data.
    pub fn aes_open(
        &self,
        key: &KeyRef,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let Some((&HSM_SEAL_V1, rest)) = sealed.split_first() else {
            return Err(HsmError::Malformed("HSM-sealed data".to_string()));
        };
        if rest.len() < GCM_IV_LEN + GCM_TAG_LEN {
            return Err(HsmError::Malformed("HSM-sealed data".to_string()));
        }
        let (iv, body) = rest.split_at(GCM_IV_LEN);
        let iv: [u8; GCM_IV_LEN] = iv
            .try_into()
            .map_err(|_| HsmError::Malformed("HSM-sealed data".to_string()))?;
        self.require_aes(key)?;
        self.with_key(key, |s, r| {
            let mut iv = iv;
            let params = GcmParams::new(&mut iv, aad, (GCM_TAG_LEN as u64 * 8).into())?;
            s.decrypt(&Mechanism::AesGcm(params), r.handle, body)
                .map(Zeroizing::new)
                .map_err(|e| decrypt_failure(e, "AES-GCM decryption"))
        })
    }

    // -----------------------------------------------------------------------------------------

    /// Runs `f` holding the module's structure lock, if this token needs it or `always`.
    fn structural<T>(&self, always: bool, f: impl FnOnce() -> T) -> T {
        let _guard =
            (always || self.inner.serialize_structure).then(|| lock(&self.inner.structure));
        f()
    }

    fn check_token(&self, key: &KeyRef) -> Result<(), HsmError> {
        if key.token() == self.inner.label {
            Ok(())
        } else {
            Err(HsmError::BadKeyRef(format!(
                "{key} belongs to token '{}', but this HSM uses token '{}'",
                key.token(),
                self.inner.label
            )))
        }
    }

    fn require_aes(&self, key: &KeyRef) -> Result<(), HsmError> {
        match self.resolve(key)?.kind {
            KeyKind::Aes => Ok(()),
            KeyKind::Pair(_) => Err(HsmError::WrongKeyKind {
                key: key.to_string(),
                reason: "it is a key pair, not an AES key".to_string(),
            }),
        }
    }

    fn remember(&self, key: &KeyRef, handle: ObjectHandle, kind: KeyKind) {
        lock(&self.inner.cache).insert(key.id().to_vec(), Resolved { handle, kind });
    }

    /// Finds the key's private or secret key object (cached).
    fn resolve(&self, key: &KeyRef) -> Result<Resolved, HsmError> {
        self.check_token(key)?;
        if let Some(r) = lock(&self.inner.cache).get(key.id()) {
            return Ok(r.clone());
        }
        let pool = &self.inner.pool;
        let resolved = self.structural(false, || pool.run(|s| lookup(pool, s, key)))?;
        lock(&self.inner.cache).insert(key.id().to_vec(), resolved.clone());
        Ok(resolved)
    }

    /// Runs `op` with the key's resolved handle; if the token says the cached handle is no
    /// longer valid, looks the key up again and runs `op` once more.
    fn with_key<T>(
        &self,
        key: &KeyRef,
        mut op: impl FnMut(&Session, &Resolved) -> Result<T, OpError>,
    ) -> Result<T, HsmError> {
        let resolved = self.resolve(key)?;
        match self.inner.pool.run(|s| op(s, &resolved)) {
            Err(HsmError::Pkcs11 { code, .. })
                if code == "CKR_OBJECT_HANDLE_INVALID" || code == "CKR_KEY_HANDLE_INVALID" =>
            {
                lock(&self.inner.cache).remove(key.id());
                let resolved = self.resolve(key)?;
                self.inner.pool.run(|s| op(s, &resolved))
            }
            other => other,
        }
    }
}

/// Maps a failure of `C_DecryptInit`/`C_Decrypt` for `what` (e.g. `RSA-OAEP-256 decryption`):
/// a refused mechanism or parameters at `C_DecryptInit` is [`HsmError::Unsupported`]; any
/// data-related failure of `C_Decrypt` is [`HsmError::Decrypt`]; session, login, handle and
/// device failures stay PKCS#11 errors (the pool and the handle cache recover from some).
fn decrypt_failure(e: cryptoki::error::Error, what: &str) -> OpError {
    use cryptoki::context::Function;
    use cryptoki::error::Error as CkError;
    match &e {
        CkError::Pkcs11(
            rv @ (RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::ArgumentsBad),
            Function::DecryptInit,
        ) => OpError::Hsm(HsmError::Unsupported(format!(
            "{what} (C_DecryptInit answered {})",
            crate::error::ckr_name(*rv)
        ))),
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange
            | RvError::FunctionFailed
            | RvError::GeneralError,
            Function::Decrypt,
        ) => OpError::Hsm(HsmError::Decrypt),
        _ => OpError::Ck(e),
    }
}

fn not_found(key: &KeyRef) -> HsmError {
    HsmError::KeyNotFound {
        key: key.to_string(),
    }
}

fn not_a_pair(key: &KeyRef) -> HsmError {
    HsmError::WrongKeyKind {
        key: key.to_string(),
        reason: "it is an AES key, not a key pair".to_string(),
    }
}

/// Reads back `CKA_SENSITIVE` and `CKA_EXTRACTABLE` of a new key.
fn check_protected(s: &Session, h: ObjectHandle) -> Result<(), OpError> {
    let attrs = s.get_attributes(h, &[AttributeType::Sensitive, AttributeType::Extractable])?;
    let sensitive = bool_attr(&attrs, AttributeType::Sensitive).unwrap_or(false);
    let extractable = bool_attr(&attrs, AttributeType::Extractable).unwrap_or(true);
    if sensitive && !extractable {
        Ok(())
    } else {
        Err(HsmError::NotProtected {
            sensitive,
            extractable,
        }
        .into())
    }
}

/// Finds a key by `CKA_ID`: a private key (then its public key) or an AES secret key.
fn lookup(pool: &Pool, s: &Session, key: &KeyRef) -> Result<Resolved, OpError> {
    let id = key.id().to_vec();
    let private = pool.find(
        s,
        &[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(id.clone()),
        ],
    )?;
    if let Some(&h) = private.first() {
        let public = read_public(s, key, h)?;
        return Ok(Resolved {
            handle: h,
            kind: KeyKind::Pair(public),
        });
    }
    let secret = pool.find(
        s,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Id(id),
        ],
    )?;
    match secret.first() {
        Some(&h) => Ok(Resolved {
            handle: h,
            kind: KeyKind::Aes,
        }),
        None => Err(not_found(key).into()),
    }
}

/// Reads the public key of the pair whose private key is `private`: RSA from the private key's
/// public attributes, EC from the public key object with the same `CKA_ID`.
fn read_public(s: &Session, key: &KeyRef, private: ObjectHandle) -> Result<PublicKey, OpError> {
    let attrs = s.get_attributes(
        private,
        &[
            AttributeType::KeyType,
            AttributeType::Modulus,
            AttributeType::PublicExponent,
            AttributeType::EcParams,
        ],
    )?;
    let mut key_type = None;
    let (mut n, mut e, mut params) = (None, None, None);
    for a in attrs {
        match a {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            Attribute::EcParams(v) => params = Some(v),
            _ => {}
        }
    }
    let incomplete = |what: &str| {
        OpError::Hsm(HsmError::WrongKeyKind {
            key: key.to_string(),
            reason: format!("the token does not report its {what}"),
        })
    };
    match key_type {
        Some(t) if t == KeyType::RSA => {
            let (Some(n), Some(e)) = (n, e) else {
                return Err(incomplete("RSA modulus and exponent"));
            };
            Ok(PublicKey::from_rsa_components(&n, &e).map_err(HsmError::from)?)
        }
        Some(t) if t == KeyType::EC => {
            let params = params.ok_or_else(|| incomplete("EC parameters"))?;
            let curve = curve_from_params(&params)?;
            let public = s.find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Id(key.id().to_vec()),
            ])?;
            let h = *public
                .first()
                .ok_or_else(|| incomplete("public key object (needed for the EC point)"))?;
            let point = s
                .get_attributes(h, &[AttributeType::EcPoint])?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::EcPoint(p) => Some(p),
                    _ => None,
                })
                .ok_or_else(|| incomplete("EC point"))?;
            Ok(PublicKey::from_ec_point(curve, unwrap_ec_point(&point)).map_err(HsmError::from)?)
        }
        _ => Err(OpError::Hsm(HsmError::WrongKeyKind {
            key: key.to_string(),
            reason: "it is neither an RSA nor an EC key".to_string(),
        })),
    }
}

/// Finds the one slot whose token carries the configured label; returns it with the token's
/// manufacturer ID.
fn find_token(ctx: &Pkcs11, cfg: &HsmConfig) -> Result<(Slot, String), HsmError> {
    let slots = ctx.get_slots_with_token().map_err(crate::error::from_ck)?;
    let mut labels = Vec::new();
    let mut matches = Vec::new();
    for slot in slots {
        let info = ctx.get_token_info(slot).map_err(crate::error::from_ck)?;
        if info.label() == cfg.token_label {
            matches.push((slot, info));
        } else {
            labels.push(format!("'{}'", info.label()));
        }
    }
    let unusable = |reason: &str| HsmError::TokenUnusable {
        label: cfg.token_label.clone(),
        reason: reason.to_string(),
    };
    match matches.as_slice() {
        [] => Err(HsmError::TokenNotFound {
            label: cfg.token_label.clone(),
            module: cfg.module.clone(),
            available: if labels.is_empty() {
                " (no initialised tokens present)".to_string()
            } else {
                format!(" (tokens present: {})", labels.join(", "))
            },
        }),
        [(slot, info)] => {
            if !info.token_initialized() {
                Err(unusable("it is not initialised"))
            } else if !info.user_pin_initialized() {
                Err(unusable("its user PIN is not initialised"))
            } else if info.user_pin_locked() {
                Err(HsmError::PinLocked {
                    label: cfg.token_label.clone(),
                })
            } else {
                Ok((*slot, info.manufacturer_id().to_string()))
            }
        }
        many => Err(unusable(&format!(
            "{} tokens carry this label; labels must be unique",
            many.len()
        ))),
    }
}

/// Signs certificates and CSRs with a key pair inside the token; see [`Hsm::signer`].
#[derive(Debug, Clone)]
pub struct HsmSigner {
    hsm: Hsm,
    key: KeyRef,
    public: PublicKey,
}

impl HsmSigner {
    /// The key this signer uses.
    pub fn key(&self) -> &KeyRef {
        &self.key
    }
}

impl CertSigner for HsmSigner {
    fn public_key(&self) -> PublicKey {
        self.public.clone()
    }

    fn sign_message(&self, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (alg, digest) = x509_signing_digest(self.public.alg(), msg)?;
        let sig = self
            .hsm
            .sign(&self.key, alg, &digest)
            .map_err(|e| match e {
                HsmError::Crypto(c) => c,
                other => CryptoError::Internal(format!("HSM signing failed: {other}")),
            })?;
        if alg.is_ec() {
            ecdsa_raw_to_der(&sig)
        } else {
            Ok(sig)
        }
    }
}
