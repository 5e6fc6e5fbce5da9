//! The certificate policy: the wire model (every member optional, as clients send it), merging
//! for PATCH, and resolution into a complete [`Policy`] with the defaults the Key Vault service
//! fills in.

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Key types valid for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyType {
    /// Software RSA key.
    #[serde(rename = "RSA")]
    Rsa,
    /// RSA key inside an HSM.
    #[serde(rename = "RSA-HSM")]
    RsaHsm,
    /// Software EC key.
    #[serde(rename = "EC")]
    Ec,
    /// EC key inside an HSM.
    #[serde(rename = "EC-HSM")]
    EcHsm,
}

impl KeyType {
    /// True for the EC key types.
    pub fn is_ec(self) -> bool {
        matches!(self, Self::Ec | Self::EcHsm)
    }

    /// True for the HSM key types.
    pub fn is_hsm(self) -> bool {
        matches!(self, Self::RsaHsm | Self::EcHsm)
    }

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::RsaHsm => "RSA-HSM",
            Self::Ec => "EC",
            Self::EcHsm => "EC-HSM",
        }
    }
}

/// Elliptic curves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Curve {
    /// NIST P-256.
    #[serde(rename = "P-256")]
    P256,
    /// NIST P-384.
    #[serde(rename = "P-384")]
    P384,
    /// NIST P-521.
    #[serde(rename = "P-521")]
    P521,
    /// secp256k1 (accepted on the wire, refused for certificates).
    #[serde(rename = "P-256K")]
    P256K,
}

impl Curve {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
            Self::P256K => "P-256K",
        }
    }

    /// The field size in bits.
    pub fn bits(self) -> u32 {
        match self {
            Self::P256 | Self::P256K => 256,
            Self::P384 => 384,
            Self::P521 => 521,
        }
    }
}

/// The managed secret's content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ContentType {
    /// PKCS#12 (PFX), base64 on the wire.
    #[serde(rename = "application/x-pkcs12")]
    #[default]
    Pkcs12,
    /// PEM text: PKCS#8 key first, then the chain.
    #[serde(rename = "application/x-pem-file")]
    Pem,
}

impl ContentType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pkcs12 => "application/x-pkcs12",
            Self::Pem => "application/x-pem-file",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "application/x-pkcs12" => Some(Self::Pkcs12),
            "application/x-pem-file" => Some(Self::Pem),
            _ => None,
        }
    }
}

/// X.509 key usage bits, with their Key Vault names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum KeyUsage {
    /// digitalSignature
    DigitalSignature,
    /// nonRepudiation (contentCommitment)
    NonRepudiation,
    /// keyEncipherment
    KeyEncipherment,
    /// dataEncipherment
    DataEncipherment,
    /// keyAgreement
    KeyAgreement,
    /// keyCertSign
    KeyCertSign,
    /// cRLSign
    #[serde(rename = "cRLSign")]
    CrlSign,
    /// encipherOnly
    EncipherOnly,
    /// decipherOnly
    DecipherOnly,
}

/// Operations on a certificate's addressable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyOp {
    /// sign
    Sign,
    /// verify
    Verify,
    /// encrypt
    Encrypt,
    /// decrypt
    Decrypt,
    /// wrapKey
    WrapKey,
    /// unwrapKey
    UnwrapKey,
}

impl KeyOp {
    /// The wire spelling used in `key_ops`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::WrapKey => "wrapKey",
            Self::UnwrapKey => "unwrapKey",
        }
    }
}

/// The key operations a key usage list allows, by the seed's table. EC keys sign and verify only.
pub fn key_ops_for(usage: &[KeyUsage], is_ec: bool) -> Vec<KeyOp> {
    let mut ops = std::collections::BTreeSet::new();
    for u in usage {
        let add: &[KeyOp] = match u {
            KeyUsage::DataEncipherment => &[KeyOp::Encrypt, KeyOp::Decrypt],
            KeyUsage::DecipherOnly => &[KeyOp::Decrypt],
            KeyUsage::DigitalSignature
            | KeyUsage::KeyCertSign
            | KeyUsage::NonRepudiation
            | KeyUsage::CrlSign => &[KeyOp::Sign, KeyOp::Verify],
            KeyUsage::EncipherOnly => &[KeyOp::Encrypt],
            KeyUsage::KeyEncipherment => &[KeyOp::WrapKey, KeyOp::UnwrapKey],
            KeyUsage::KeyAgreement => &[],
        };
        ops.extend(add.iter().copied());
    }
    if is_ec {
        ops.retain(|o| matches!(o, KeyOp::Sign | KeyOp::Verify));
    }
    ops.into_iter().collect()
}

/// Lifetime action kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Renew the certificate automatically.
    AutoRenew,
    /// Tell the vault's contacts.
    EmailContacts,
}

// ------------------------------------------------------------------------------------------
// Wire model (all optional)

/// `key_props` as sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyPropsIn {
    /// Whether the private key may be exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exportable: Option<bool>,
    /// Key type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kty: Option<KeyType>,
    /// RSA modulus size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_size: Option<u32>,
    /// Reuse the key on renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_key: Option<bool>,
    /// EC curve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<Curve>,
}

/// `secret_props` as sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretPropsIn {
    /// Content type of the managed secret.
    #[serde(
        rename = "contentType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<ContentType>,
}

/// Subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sans {
    /// DNS names (wildcards allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<Vec<String>>,
    /// E-mail addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emails: Option<Vec<String>>,
    /// User principal names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upns: Option<Vec<String>>,
    /// URIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uris: Option<Vec<String>>,
    /// IP addresses.
    #[serde(
        rename = "ipAddresses",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ip_addresses: Option<Vec<String>>,
}

impl Sans {
    /// True when no SAN of any kind is present.
    pub fn is_empty(&self) -> bool {
        [
            &self.dns_names,
            &self.emails,
            &self.upns,
            &self.uris,
            &self.ip_addresses,
        ]
        .iter()
        .all(|v| v.as_ref().is_none_or(Vec::is_empty))
    }
}

/// Basic constraints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicConstraints {
    /// Whether the certificate is a CA.
    #[serde(default)]
    pub ca: bool,
}

/// `x509_props` as sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct X509PropsIn {
    /// Subject distinguished name, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Extended key usage OIDs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ekus: Option<Vec<String>>,
    /// Subject alternative names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sans: Option<Sans>,
    /// Key usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<Vec<KeyUsage>>,
    /// Validity in months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_months: Option<u32>,
    /// Basic constraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_constraints: Option<BasicConstraints>,
}

/// A lifetime action trigger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Percentage of the lifetime (1 to 99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_percentage: Option<u32>,
    /// Days before expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_before_expiry: Option<u32>,
}

/// A lifetime action's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The kind of action.
    pub action_type: ActionType,
}

/// A lifetime action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifetimeAction {
    /// When it fires.
    pub trigger: Trigger,
    /// What it does.
    pub action: Action,
}

/// Issuer parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerParams {
    /// `Self`, `Unknown`, or the name of an issuer object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Certificate type for a CA provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cty: Option<String>,
    /// Certificate transparency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_transparency: Option<bool>,
}

/// Policy attributes as sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyAttributesIn {
    /// Enabled flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// A certificate policy as a client sends it: every member optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyIn {
    /// Key properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_props: Option<KeyPropsIn>,
    /// Secret properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_props: Option<SecretPropsIn>,
    /// X.509 properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_props: Option<X509PropsIn>,
    /// Lifetime actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_actions: Option<Vec<LifetimeAction>>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<IssuerParams>,
    /// Policy attributes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<PolicyAttributesIn>,
    /// Internal member of 2026-04-01, documented as failing: refused.
    #[serde(
        rename = "platformManaged",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub platform_managed: Option<serde_json::Value>,
}

fn merge_opt<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
    if src.is_some() {
        dst.clone_from(src);
    }
}

impl PolicyIn {
    /// Merges `patch` into `self` (PATCH semantics): members that are sent replace the stored
    /// ones, the rest stay.
    pub fn merge(&mut self, patch: &Self) {
        if let Some(p) = &patch.key_props {
            let k = self.key_props.get_or_insert_with(KeyPropsIn::default);
            merge_opt(&mut k.exportable, &p.exportable);
            merge_opt(&mut k.kty, &p.kty);
            merge_opt(&mut k.key_size, &p.key_size);
            merge_opt(&mut k.reuse_key, &p.reuse_key);
            merge_opt(&mut k.crv, &p.crv);
            // Switching key family drops the member of the other family.
            if let Some(kty) = p.kty {
                if kty.is_ec() && p.key_size.is_none() {
                    k.key_size = None;
                }
                if !kty.is_ec() && p.crv.is_none() {
                    k.crv = None;
                }
            }
        }
        if let Some(p) = &patch.secret_props {
            let s = self.secret_props.get_or_insert_with(SecretPropsIn::default);
            merge_opt(&mut s.content_type, &p.content_type);
        }
        if let Some(p) = &patch.x509_props {
            let x = self.x509_props.get_or_insert_with(X509PropsIn::default);
            merge_opt(&mut x.subject, &p.subject);
            merge_opt(&mut x.ekus, &p.ekus);
            merge_opt(&mut x.sans, &p.sans);
            merge_opt(&mut x.key_usage, &p.key_usage);
            merge_opt(&mut x.validity_months, &p.validity_months);
            merge_opt(&mut x.basic_constraints, &p.basic_constraints);
        }
        merge_opt(&mut self.lifetime_actions, &patch.lifetime_actions);
        if let Some(p) = &patch.issuer {
            let i = self.issuer.get_or_insert_with(IssuerParams::default);
            merge_opt(&mut i.name, &p.name);
            merge_opt(&mut i.cty, &p.cty);
            merge_opt(&mut i.cert_transparency, &p.cert_transparency);
        }
        if let Some(p) = &patch.attributes {
            let a = self
                .attributes
                .get_or_insert_with(PolicyAttributesIn::default);
            merge_opt(&mut a.enabled, &p.enabled);
        }
        merge_opt(&mut self.platform_managed, &patch.platform_managed);
    }
}

// ------------------------------------------------------------------------------------------
// Resolved policy

/// How a certificate came to be, which decides its default lifetime action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Created through `create` (issuer Self, Unknown or a provider).
    Created,
    /// Imported.
    Imported,
}

/// The issuer names with built-in meaning.
pub const ISSUER_SELF: &str = "Self";
/// Issuer name for CSR + merge.
pub const ISSUER_UNKNOWN: &str = "Unknown";

/// A complete, validated policy. Serialises to the wire shape (without `id` and attribute
/// timestamps, which the server adds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Key properties (all members filled in).
    pub key_props: KeyPropsIn,
    /// Secret properties.
    pub secret_props: SecretPropsIn,
    /// X.509 properties.
    pub x509_props: X509PropsIn,
    /// Lifetime actions.
    pub lifetime_actions: Vec<LifetimeAction>,
    /// Issuer.
    pub issuer: IssuerParams,
    /// Policy attributes.
    pub attributes: PolicyAttributesIn,
}

/// The maximum validity accepted, in months.
pub const MAX_VALIDITY_MONTHS: u32 = 1200;

impl Policy {
    /// Resolves a policy as sent into a complete one, filling in the service's defaults and
    /// validating every member. `require_issuer` is set for `create`.
    pub fn resolve(
        input: &PolicyIn,
        origin: Origin,
        require_name: bool,
    ) -> Result<Self, CoreError> {
        if input.platform_managed.is_some() {
            return Err(CoreError::bad(
                "platformManaged is an internal policy member and is not supported.",
            ));
        }
        // key props
        let kin = input.key_props.clone().unwrap_or_default();
        let kty = kin.kty.unwrap_or(KeyType::Rsa);
        let mut key_props = KeyPropsIn {
            exportable: Some(kin.exportable.unwrap_or(!kty.is_hsm())),
            kty: Some(kty),
            key_size: None,
            reuse_key: Some(kin.reuse_key.unwrap_or(false)),
            crv: None,
        };
        if kty.is_ec() {
            let crv = match (kin.crv, kin.key_size) {
                (Some(c), None) => c,
                (Some(c), Some(s)) if s == c.bits() => c,
                (Some(c), Some(s)) => {
                    return Err(CoreError::bad(format!(
                        "key_size {s} does not match curve {}.",
                        c.as_str()
                    )));
                }
                (None, None) => Curve::P256,
                (None, Some(256)) => Curve::P256,
                (None, Some(384)) => Curve::P384,
                (None, Some(521)) => Curve::P521,
                (None, Some(s)) => {
                    return Err(CoreError::bad(format!(
                        "key_size {s} is not valid for an EC key."
                    )));
                }
            };
            if crv == Curve::P256K {
                return Err(CoreError::bad(
                    "Curve P-256K is not supported for certificates; use P-256, P-384 or P-521.",
                ));
            }
            key_props.crv = Some(crv);
        } else {
            if kin.crv.is_some() {
                return Err(CoreError::bad("crv is only valid for EC keys."));
            }
            let size = kin.key_size.unwrap_or(2048);
            if ![2048, 3072, 4096].contains(&size) {
                return Err(CoreError::bad(format!(
                    "RSA key_size {size} is not supported: use 2048, 3072 or 4096."
                )));
            }
            key_props.key_size = Some(size);
        }
        if kty.is_hsm() && key_props.exportable == Some(true) {
            return Err(CoreError::bad(format!(
                "Key type {} cannot be exportable: HSM keys never leave the HSM.",
                kty.as_str()
            )));
        }

        // secret props
        let secret_props = SecretPropsIn {
            content_type: Some(
                input
                    .secret_props
                    .as_ref()
                    .and_then(|s| s.content_type)
                    .unwrap_or_default(),
            ),
        };

        // x509 props
        let xin = input.x509_props.clone().unwrap_or_default();
        let subject = xin.subject.clone().filter(|s| !s.trim().is_empty());
        let sans = xin.sans.clone().unwrap_or_default();
        if subject.is_none() && sans.is_empty() {
            return Err(CoreError::bad(
                "The policy needs a subject or at least one subject alternative name.",
            ));
        }
        let validity = xin.validity_months.unwrap_or(12);
        if validity == 0 || validity > MAX_VALIDITY_MONTHS {
            return Err(CoreError::bad(format!(
                "validity_months {validity} is out of range (1 to {MAX_VALIDITY_MONTHS})."
            )));
        }
        let ekus = match xin.ekus {
            Some(e) => e,
            None => vec![
                "1.3.6.1.5.5.7.3.1".to_owned(),
                "1.3.6.1.5.5.7.3.2".to_owned(),
            ],
        };
        for oid in &ekus {
            if !is_oid(oid) {
                return Err(CoreError::bad(format!(
                    "'{}' is not an OID.",
                    crate::names::truncate(oid, 80)
                )));
            }
        }
        let key_usage = match xin.key_usage {
            Some(k) if !k.is_empty() => dedup(k),
            _ => vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment],
        };
        validate_sans(&sans)?;
        let x509_props = X509PropsIn {
            subject: Some(subject.unwrap_or_default()),
            ekus: Some(ekus),
            sans: Some(Sans {
                dns_names: Some(sans.dns_names.unwrap_or_default()),
                emails: Some(sans.emails.unwrap_or_default()),
                upns: Some(sans.upns.unwrap_or_default()),
                uris: Some(sans.uris.unwrap_or_default()),
                ip_addresses: Some(sans.ip_addresses.unwrap_or_default()),
            }),
            key_usage: Some(key_usage),
            validity_months: Some(validity),
            basic_constraints: Some(xin.basic_constraints.unwrap_or_default()),
        };

        // issuer
        let iin = input.issuer.clone().unwrap_or_default();
        let issuer_name = match iin.name.as_deref().map(str::trim) {
            Some(n) if !n.is_empty() => canonical_issuer(n),
            _ if require_name => {
                return Err(CoreError::bad("The policy's issuer name is required."));
            }
            _ => ISSUER_UNKNOWN.to_owned(),
        };
        if issuer_name != ISSUER_SELF && issuer_name != ISSUER_UNKNOWN {
            crate::ObjectName::parse(&issuer_name)?;
        }
        let issuer = IssuerParams {
            name: Some(issuer_name.clone()),
            cty: iin.cty,
            cert_transparency: iin.cert_transparency,
        };

        // lifetime actions
        let lifetime_actions = match &input.lifetime_actions {
            Some(list) => {
                for la in list {
                    validate_action(la, validity)?;
                }
                list.clone()
            }
            None => vec![LifetimeAction {
                trigger: Trigger {
                    lifetime_percentage: Some(80),
                    days_before_expiry: None,
                },
                action: Action {
                    action_type: if origin == Origin::Imported || issuer_name == ISSUER_UNKNOWN {
                        ActionType::EmailContacts
                    } else {
                        ActionType::AutoRenew
                    },
                },
            }],
        };
        if lifetime_actions.len() > 2 {
            return Err(CoreError::bad("At most two lifetime actions are allowed."));
        }

        Ok(Self {
            key_props,
            secret_props,
            x509_props,
            lifetime_actions,
            issuer,
            attributes: PolicyAttributesIn {
                enabled: Some(input.attributes.and_then(|a| a.enabled).unwrap_or(true)),
            },
        })
    }

    /// The policy as a [`PolicyIn`], for merging a patch into it.
    pub fn to_input(&self) -> PolicyIn {
        PolicyIn {
            key_props: Some(self.key_props.clone()),
            secret_props: Some(self.secret_props.clone()),
            x509_props: Some(self.x509_props.clone()),
            lifetime_actions: Some(self.lifetime_actions.clone()),
            issuer: Some(self.issuer.clone()),
            attributes: Some(self.attributes),
            platform_managed: None,
        }
    }

    /// The key type.
    pub fn kty(&self) -> KeyType {
        self.key_props.kty.unwrap_or(KeyType::Rsa)
    }

    /// RSA size or curve.
    pub fn key_size(&self) -> u32 {
        self.key_props.key_size.unwrap_or(2048)
    }

    /// The curve of an EC key.
    pub fn curve(&self) -> Curve {
        self.key_props.crv.unwrap_or(Curve::P256)
    }

    /// Whether the private key may leave certvault.
    pub fn exportable(&self) -> bool {
        self.key_props.exportable.unwrap_or(true)
    }

    /// Whether renewals keep the key.
    pub fn reuse_key(&self) -> bool {
        self.key_props.reuse_key.unwrap_or(false)
    }

    /// The managed secret's content type.
    pub fn content_type(&self) -> ContentType {
        self.secret_props.content_type.unwrap_or_default()
    }

    /// The issuer name.
    pub fn issuer_name(&self) -> &str {
        self.issuer.name.as_deref().unwrap_or(ISSUER_UNKNOWN)
    }

    /// Subject DN as given.
    pub fn subject(&self) -> &str {
        self.x509_props.subject.as_deref().unwrap_or("")
    }

    /// Subject alternative names.
    pub fn sans(&self) -> Sans {
        self.x509_props.sans.clone().unwrap_or_default()
    }

    /// Extended key usages.
    pub fn ekus(&self) -> Vec<String> {
        self.x509_props.ekus.clone().unwrap_or_default()
    }

    /// Key usage.
    pub fn key_usage(&self) -> Vec<KeyUsage> {
        self.x509_props.key_usage.clone().unwrap_or_default()
    }

    /// Validity in months.
    pub fn validity_months(&self) -> u32 {
        self.x509_props.validity_months.unwrap_or(12)
    }

    /// Whether the certificate is a CA.
    pub fn is_ca(&self) -> bool {
        self.x509_props.basic_constraints.is_some_and(|b| b.ca)
    }

    /// The key operations allowed on the addressable key.
    pub fn key_ops(&self) -> Vec<KeyOp> {
        key_ops_for(&self.key_usage(), self.kty().is_ec())
    }
}

/// `Self` and `Unknown` are matched case-insensitively and stored in their canonical spelling.
fn canonical_issuer(n: &str) -> String {
    if n.eq_ignore_ascii_case(ISSUER_SELF) {
        ISSUER_SELF.to_owned()
    } else if n.eq_ignore_ascii_case(ISSUER_UNKNOWN) {
        ISSUER_UNKNOWN.to_owned()
    } else {
        n.to_owned()
    }
}

fn dedup(mut v: Vec<KeyUsage>) -> Vec<KeyUsage> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|k| seen.insert(*k));
    v
}

fn is_oid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() >= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn validate_action(la: &LifetimeAction, validity_months: u32) -> Result<(), CoreError> {
    match (
        la.trigger.lifetime_percentage,
        la.trigger.days_before_expiry,
    ) {
        (Some(p), None) => {
            if !(1..=99).contains(&p) {
                return Err(CoreError::bad(format!(
                    "lifetime_percentage {p} is out of range (1 to 99)."
                )));
            }
        }
        (None, Some(d)) => {
            let max = validity_months.saturating_mul(27);
            if d == 0 || d > max {
                return Err(CoreError::bad(format!(
                    "days_before_expiry {d} is out of range (1 to {max} for {validity_months} months)."
                )));
            }
        }
        _ => {
            return Err(CoreError::bad(
                "A lifetime action trigger needs exactly one of lifetime_percentage and days_before_expiry.",
            ));
        }
    }
    Ok(())
}

fn validate_sans(s: &Sans) -> Result<(), CoreError> {
    for d in s.dns_names.iter().flatten() {
        if !is_dns_name(d) {
            return Err(CoreError::bad(format!(
                "'{}' is not a valid DNS name.",
                crate::names::truncate(d, 80)
            )));
        }
    }
    for e in s.emails.iter().flatten() {
        if !e.contains('@') || e.len() > 254 || e.chars().any(char::is_whitespace) {
            return Err(CoreError::bad(format!(
                "'{}' is not a valid e-mail address.",
                crate::names::truncate(e, 80)
            )));
        }
    }
    for u in s.upns.iter().flatten() {
        if u.is_empty() || u.chars().any(char::is_whitespace) {
            return Err(CoreError::bad("A UPN must not be empty or contain spaces."));
        }
    }
    for u in s.uris.iter().flatten() {
        let ok = u.split_once(':').is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                && !rest.is_empty()
        }) && !u.chars().any(char::is_whitespace);
        if !ok {
            return Err(CoreError::bad(format!(
                "'{}' is not a valid URI.",
                crate::names::truncate(u, 80)
            )));
        }
    }
    for ip in s.ip_addresses.iter().flatten() {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(CoreError::bad(format!(
                "'{}' is not a valid IP address.",
                crate::names::truncate(ip, 80)
            )));
        }
    }
    Ok(())
}

/// A DNS name, optionally with a leading `*.` label.
pub fn is_dns_name(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    let body = d.strip_prefix("*.").unwrap_or(d);
    if body.is_empty() || d.len() > 253 {
        return false;
    }
    body.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(j: &str) -> PolicyIn {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn defaults_fill_in() {
        let p = Policy::resolve(
            &parse(r#"{"x509_props":{"subject":"cn=MyCert"},"issuer":{"name":"self"}}"#),
            Origin::Created,
            true,
        )
        .unwrap();
        assert_eq!(p.kty(), KeyType::Rsa);
        assert_eq!(p.key_size(), 2048);
        assert!(p.exportable());
        assert!(!p.reuse_key());
        assert_eq!(p.content_type(), ContentType::Pkcs12);
        assert_eq!(p.subject(), "cn=MyCert");
        assert_eq!(p.issuer_name(), "Self");
        assert_eq!(p.validity_months(), 12);
        assert_eq!(
            p.key_usage(),
            vec![KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment]
        );
        assert_eq!(p.ekus().len(), 2);
        assert_eq!(
            p.lifetime_actions[0].action.action_type,
            ActionType::AutoRenew
        );
        assert_eq!(p.lifetime_actions[0].trigger.lifetime_percentage, Some(80));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["key_props"]["kty"], "RSA");
        assert_eq!(json["secret_props"]["contentType"], "application/x-pkcs12");
        assert_eq!(
            json["lifetime_actions"][0]["action"]["action_type"],
            "AutoRenew"
        );
        assert!(json["x509_props"]["sans"]["ipAddresses"].is_array());
    }

    #[test]
    fn unknown_and_import_default_to_email() {
        let p = Policy::resolve(
            &parse(r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Unknown"}}"#),
            Origin::Created,
            true,
        )
        .unwrap();
        assert_eq!(
            p.lifetime_actions[0].action.action_type,
            ActionType::EmailContacts
        );
        let p = Policy::resolve(
            &parse(r#"{"x509_props":{"subject":"CN=a"}}"#),
            Origin::Imported,
            false,
        )
        .unwrap();
        assert_eq!(p.issuer_name(), "Unknown");
        assert_eq!(
            p.lifetime_actions[0].action.action_type,
            ActionType::EmailContacts
        );
    }

    #[test]
    fn rejects_bad_members() {
        for j in [
            r#"{"issuer":{"name":"Self"}}"#,
            r#"{"x509_props":{"subject":"CN=a"}}"#,
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Self"},"key_props":{"kty":"RSA","key_size":1024}}"#,
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Self"},"key_props":{"kty":"EC","crv":"P-256K"}}"#,
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Self"},"key_props":{"kty":"EC-HSM","exportable":true}}"#,
            r#"{"x509_props":{"subject":"CN=a","validity_months":0},"issuer":{"name":"Self"}}"#,
            r#"{"x509_props":{"subject":"CN=a","ekus":["x.y"]},"issuer":{"name":"Self"}}"#,
            r#"{"x509_props":{"subject":"CN=a","sans":{"dns_names":["bad name"]}},"issuer":{"name":"Self"}}"#,
            r#"{"x509_props":{"subject":"CN=a","sans":{"ipAddresses":["1.2.3"]}},"issuer":{"name":"Self"}}"#,
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Self"},"lifetime_actions":[{"trigger":{"lifetime_percentage":100},"action":{"action_type":"AutoRenew"}}]}"#,
            r#"{"x509_props":{"subject":"CN=a","validity_months":1},"issuer":{"name":"Self"},"lifetime_actions":[{"trigger":{"days_before_expiry":28},"action":{"action_type":"AutoRenew"}}]}"#,
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Self"},"lifetime_actions":[{"trigger":{"days_before_expiry":2,"lifetime_percentage":2},"action":{"action_type":"AutoRenew"}}]}"#,
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"bad_issuer"}}"#,
            r#"{"x509_props":{"subject":"CN=a"},"issuer":{"name":"Self"},"platformManaged":{}}"#,
        ] {
            assert!(
                Policy::resolve(&parse(j), Origin::Created, true).is_err(),
                "{j}"
            );
        }
        // case-sensitive enums are refused at parse time
        assert!(serde_json::from_str::<PolicyIn>(r#"{"key_props":{"kty":"rsa"}}"#).is_err());
        assert!(
            serde_json::from_str::<PolicyIn>(
                r#"{"lifetime_actions":[{"trigger":{},"action":{"action_type":"autoRenew"}}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn ec_and_merge() {
        let mut p = Policy::resolve(
            &parse(r#"{"key_props":{"kty":"EC","crv":"P-384"},"x509_props":{"sans":{"dns_names":["*.a.test"]}},"issuer":{"name":"Self"}}"#),
            Origin::Created,
            true,
        )
        .unwrap();
        assert_eq!(p.curve(), Curve::P384);
        assert_eq!(p.key_props.key_size, None);
        assert_eq!(p.key_ops(), vec![KeyOp::Sign, KeyOp::Verify]);
        let mut input = p.to_input();
        input.merge(&parse(
            r#"{"x509_props":{"validity_months":24},"key_props":{"kty":"RSA"}}"#,
        ));
        p = Policy::resolve(&input, Origin::Created, true).unwrap();
        assert_eq!(p.validity_months(), 24);
        assert_eq!(p.kty(), KeyType::Rsa);
        assert_eq!(p.key_size(), 2048);
        assert_eq!(p.sans().dns_names, Some(vec!["*.a.test".to_owned()]));
    }

    #[test]
    fn key_ops_table() {
        use KeyUsage::*;
        assert_eq!(
            key_ops_for(&[DataEncipherment], false),
            vec![KeyOp::Encrypt, KeyOp::Decrypt]
        );
        assert_eq!(key_ops_for(&[DecipherOnly], false), vec![KeyOp::Decrypt]);
        assert_eq!(key_ops_for(&[EncipherOnly], false), vec![KeyOp::Encrypt]);
        assert_eq!(
            key_ops_for(&[KeyEncipherment], false),
            vec![KeyOp::WrapKey, KeyOp::UnwrapKey]
        );
        for u in [DigitalSignature, KeyCertSign, NonRepudiation, CrlSign] {
            assert_eq!(key_ops_for(&[u], false), vec![KeyOp::Sign, KeyOp::Verify]);
        }
        assert_eq!(
            key_ops_for(&[KeyEncipherment, DigitalSignature], true),
            vec![KeyOp::Sign, KeyOp::Verify]
        );
    }
}
