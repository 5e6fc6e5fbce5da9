//! The `acme` issuer provider's settings: parsed and validated from the issuer API, stored as
//! a public part (in the issuer's body, echoed back) and a secret part (EAB HMAC key, TSIG
//! secret: sealed with the vault key, never echoed).

use certvault_acme::{DirectoryPreset, ExternalAccountBinding, TrustRoots};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{ApiError, ApiResult};
use crate::state::VaultCtx;

/// The provider name (compared case-insensitively).
pub const PROVIDER: &str = "acme";

/// Whether an issuer's provider is ACME.
pub fn is_acme(provider: &str) -> bool {
    provider.eq_ignore_ascii_case(PROVIDER)
}

/// DNS-01 settings as sent.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DnsIn {
    mode: Option<String>,
    zone: Option<String>,
    server: Option<String>,
    tsig_key_name: Option<String>,
    tsig_algorithm: Option<String>,
    tsig_secret: Option<String>,
    window_seconds: Option<u64>,
    nameservers: Option<Vec<String>>,
}

/// The `acme` member of an issuer as sent (PUT: everything; PATCH: what changes).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AcmeIn {
    /// A preset name (`letsencrypt`, `zerossl`, …) or a directory URL.
    directory: Option<String>,
    directory_url: Option<String>,
    email: Option<String>,
    terms_agreed: Option<bool>,
    eab_kid: Option<String>,
    eab_hmac_key: Option<String>,
    preferred_chain: Option<String>,
    profile: Option<String>,
    ca_pem: Option<String>,
    dns: Option<DnsIn>,
    /// DNS-01 settings for names under a suffix (replacing the list when given).
    dns_suffixes: Option<Vec<SuffixIn>>,
}

/// DNS-01 settings for the names under one suffix, as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuffixIn {
    suffix: String,
    dns: DnsIn,
}

/// DNS-01 settings for the names under one suffix (the longest matching suffix wins; names
/// under none use `dns`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SuffixDns {
    /// The DNS suffix, e.g. `example.com` (matches `example.com` and `*.example.com` names).
    pub suffix: String,
    /// Its settings.
    pub dns: DnsPublic,
}

/// The TSIG secret of one suffix entry.
#[derive(Serialize, Deserialize, Default, Zeroize, ZeroizeOnDrop)]
pub struct SuffixSecret {
    /// The suffix.
    pub suffix: String,
    /// Its TSIG secret.
    pub tsig_secret: String,
}

/// DNS-01 settings without secrets.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsPublic {
    /// `rfc2136` or `notify`.
    pub mode: String,
    /// rfc2136: the zone updated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// rfc2136: the primary server, `host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// rfc2136: the TSIG key name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsig_key_name: Option<String>,
    /// rfc2136: the TSIG algorithm (hmac-sha256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tsig_algorithm: Option<String>,
    /// rfc2136: whether a TSIG secret is stored (the secret itself is never shown).
    #[serde(default)]
    pub tsig_secret_set: bool,
    /// notify: how long to wait for the record, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    /// notify: the authoritative servers to ask (`host:port`), instead of the zone's NS
    /// records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
}

/// The settings without secrets (stored in the issuer body and echoed back).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct AcmePublic {
    /// The directory URL.
    pub directory_url: String,
    /// The preset it came from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Contact e-mail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The user agreed to the CA's terms of service.
    #[serde(default)]
    pub terms_agreed: bool,
    /// External Account Binding key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eab_kid: Option<String>,
    /// Whether an EAB HMAC key is stored (never shown).
    #[serde(default)]
    pub eab_hmac_key_set: bool,
    /// Preferred chain: text in the issuer name of the chain's top certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_chain: Option<String>,
    /// Certificate profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Extra CA certificates (PEM) trusted for the ACME server's HTTPS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// DNS-01.
    pub dns: DnsPublic,
    /// DNS-01 per domain suffix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_suffixes: Vec<SuffixDns>,
}

/// The secret settings (sealed in the issuer row).
#[derive(Serialize, Deserialize, Default, Zeroize, ZeroizeOnDrop)]
pub struct AcmeSecrets {
    /// EAB HMAC key (base64url as the CA shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eab_hmac_key: Option<String>,
    /// TSIG secret (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsig_secret: Option<String>,
    /// TSIG secrets of the suffix entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suffix_secrets: Vec<SuffixSecret>,
}

impl std::fmt::Debug for AcmeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcmeSecrets([redacted])")
    }
}

/// A whole ACME issuer configuration, secrets opened.
#[derive(Debug)]
pub struct AcmeIssuer {
    /// The public settings.
    pub public: AcmePublic,
    /// The secrets.
    pub secrets: AcmeSecrets,
}

fn secrets_aad(vault_id: i64, issuer_key: &str) -> Vec<u8> {
    format!("certvault/acme-issuer-secrets/v1/{vault_id}/{issuer_key}").into_bytes()
}

fn opt_text(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn check_len(what: &str, v: &Option<String>, max: usize) -> ApiResult<()> {
    if v.as_ref().is_some_and(|s| s.len() > max) {
        return Err(ApiError::bad(format!("acme.{what} is too long.")));
    }
    Ok(())
}

/// Merges `input` (and the Key Vault `credentials`: `account_id` = EAB key id, `pwd` = EAB
/// HMAC key) over the stored settings and validates the result. `stored` is `None` for a PUT.
/// Nothing is written: the caller stores the result.
pub fn merge(
    stored: Option<(AcmePublic, AcmeSecrets)>,
    input: Option<&Value>,
    cred_account_id: Option<&str>,
    cred_pwd: Option<&str>,
) -> ApiResult<(AcmePublic, AcmeSecrets)> {
    let input: AcmeIn = match input {
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
            ApiError::bad(format!(
                "The acme settings are not valid: {}",
                certvault_core::names::truncate(&e.to_string().replace(['\n', '\r'], " "), 200)
            ))
        })?,
        None => AcmeIn::default(),
    };
    let (mut p, mut s) = stored.unwrap_or_default();
    // Directory: a preset name or a URL, in `directory`; or a URL in `directory_url`.
    let dir = opt_text(input.directory).or(opt_text(input.directory_url));
    if let Some(d) = dir {
        match DirectoryPreset::from_name(&d) {
            Some(preset) => {
                p.directory_url = preset.url().to_owned();
                p.preset = Some(preset.name().to_owned());
            }
            None => {
                certvault_acme::validate_directory_url(&d).map_err(|_| {
                    ApiError::bad(format!(
                        "acme.directory must be a preset name ({}) or an https:// directory URL.",
                        DirectoryPreset::ALL
                            .iter()
                            .map(|p| p.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?;
                p.directory_url = d;
                p.preset = None;
            }
        }
    }
    if p.directory_url.is_empty() {
        return Err(ApiError::bad(
            "An acme issuer needs acme.directory (a preset name or a directory URL).",
        ));
    }
    if let Some(e) = input.email {
        let e = e.trim().to_owned();
        if e.is_empty() {
            p.email = None;
        } else if !e.contains('@') || e.len() > 254 || e.chars().any(char::is_whitespace) {
            return Err(ApiError::bad("acme.email is not an e-mail address."));
        } else {
            p.email = Some(e);
        }
    }
    if let Some(t) = input.terms_agreed {
        p.terms_agreed = t;
    }
    if let Some(k) = input.eab_kid.or(cred_account_id.map(str::to_owned)) {
        p.eab_kid = opt_text(Some(k));
    }
    if let Some(h) = input.eab_hmac_key.or(cred_pwd.map(str::to_owned)) {
        s.eab_hmac_key = opt_text(Some(h));
    }
    if let Some(c) = input.preferred_chain {
        p.preferred_chain = opt_text(Some(c));
    }
    if let Some(c) = input.profile {
        p.profile = opt_text(Some(c));
    }
    if let Some(c) = input.ca_pem {
        p.ca_pem = opt_text(Some(c));
    }
    check_len("preferred_chain", &p.preferred_chain, 256)?;
    check_len("profile", &p.profile, 64)?;
    check_len("eab_kid", &p.eab_kid, 512)?;
    check_len("ca_pem", &p.ca_pem, 64 * 1024)?;
    if let Some(d) = input.dns {
        merge_dns(&mut p.dns, &mut s.tsig_secret, d);
    }
    if let Some(list) = input.dns_suffixes {
        if list.len() > 50 {
            return Err(ApiError::bad(
                "At most 50 acme.dns_suffixes entries are allowed.",
            ));
        }
        let mut entries = Vec::new();
        let mut secrets = Vec::new();
        for e in list {
            let suffix = e.suffix.trim().trim_end_matches('.').to_ascii_lowercase();
            if suffix.is_empty()
                || suffix.len() > 253
                || entries.iter().any(|x: &SuffixDns| x.suffix == suffix)
            {
                return Err(ApiError::bad(
                    "Each acme.dns_suffixes entry needs a distinct DNS suffix.",
                ));
            }
            // An entry sent again for the same suffix keeps its stored secret unless a new
            // one is given.
            let old = p.dns_suffixes.iter().find(|x| x.suffix == suffix);
            let mut dns = old.map(|o| o.dns.clone()).unwrap_or_default();
            let mut secret = s
                .suffix_secrets
                .iter()
                .find(|x| x.suffix == suffix)
                .map(|x| x.tsig_secret.clone());
            merge_dns(&mut dns, &mut secret, e.dns);
            validate_dns(&mut dns, secret.as_deref()).map_err(|e| {
                ApiError::bad(format!("acme.dns_suffixes[{suffix}]: {}", e.message))
            })?;
            if let Some(t) = secret {
                secrets.push(SuffixSecret {
                    suffix: suffix.clone(),
                    tsig_secret: t,
                });
            }
            entries.push(SuffixDns { suffix, dns });
        }
        p.dns_suffixes = entries;
        s.suffix_secrets = secrets;
    }
    validate(&mut p, &s)?;
    Ok((p, s))
}

fn merge_dns(p: &mut DnsPublic, secret: &mut Option<String>, d: DnsIn) {
    if let Some(m) = d.mode {
        let m = m.trim().to_ascii_lowercase();
        if m != p.mode {
            // Another mode: its settings start from nothing.
            *p = DnsPublic::default();
            *secret = None;
        }
        p.mode = m;
    }
    if let Some(z) = d.zone {
        p.zone = opt_text(Some(z.trim_end_matches('.').to_ascii_lowercase()));
    }
    if let Some(v) = d.server {
        p.server = opt_text(Some(v));
    }
    if let Some(v) = d.tsig_key_name {
        p.tsig_key_name = opt_text(Some(v));
    }
    if let Some(v) = d.tsig_algorithm {
        p.tsig_algorithm = opt_text(Some(v.to_ascii_lowercase()));
    }
    if let Some(v) = d.tsig_secret {
        *secret = opt_text(Some(v));
    }
    if let Some(w) = d.window_seconds {
        p.window_seconds = Some(w);
    }
    if let Some(ns) = d.nameservers {
        let ns: Vec<String> = ns.into_iter().map(|s| s.trim().to_owned()).collect();
        p.nameservers = (!ns.is_empty()).then_some(ns);
    }
}

fn validate(p: &mut AcmePublic, s: &AcmeSecrets) -> ApiResult<()> {
    match (&p.eab_kid, &s.eab_hmac_key) {
        (Some(kid), Some(key)) => {
            ExternalAccountBinding::new(kid.clone(), key).map_err(|_| {
                ApiError::bad("acme.eab_hmac_key must be the base64url HMAC key the CA issued.")
            })?;
        }
        (None, None) => {}
        _ => {
            return Err(ApiError::bad(
                "External Account Binding needs both acme.eab_kid and acme.eab_hmac_key.",
            ));
        }
    }
    p.eab_hmac_key_set = s.eab_hmac_key.is_some();
    if let Some(pem) = &p.ca_pem {
        let ok = certvault_crypto::parse_pem(pem.as_bytes())
            .map(|b| !b.certs.is_empty())
            .unwrap_or(false);
        if !ok {
            return Err(ApiError::bad(
                "acme.ca_pem must hold PEM certificates (the roots trusted for the ACME server's HTTPS).",
            ));
        }
    }
    validate_dns(&mut p.dns, s.tsig_secret.as_deref())?;
    Ok(())
}

fn validate_dns(d: &mut DnsPublic, tsig_secret: Option<&str>) -> ApiResult<()> {
    match d.mode.as_str() {
        "rfc2136" => {
            let zone = d
                .zone
                .clone()
                .ok_or_else(|| ApiError::bad("DNS mode rfc2136 needs acme.dns.zone."))?;
            let server = d.server.clone().ok_or_else(|| {
                ApiError::bad(
                    "DNS mode rfc2136 needs acme.dns.server (host:port of the zone's primary).",
                )
            })?;
            let alg = d
                .tsig_algorithm
                .get_or_insert_with(|| "hmac-sha256".to_owned());
            if alg != "hmac-sha256" {
                return Err(ApiError::bad(
                    "acme.dns.tsig_algorithm must be hmac-sha256.",
                ));
            }
            let (Some(name), Some(secret)) = (&d.tsig_key_name, &tsig_secret) else {
                return Err(ApiError::bad(
                    "DNS mode rfc2136 needs acme.dns.tsig_key_name and acme.dns.tsig_secret.",
                ));
            };
            let key = certvault_dns::TsigKey::hmac_sha256(name.clone(), secret).map_err(|_| {
                ApiError::bad("acme.dns.tsig_secret must be a base64 HMAC-SHA256 key.")
            })?;
            if !server.contains(':') {
                return Err(ApiError::bad("acme.dns.server must be host:port."));
            }
            certvault_dns::Rfc2136::new(&zone, &server, key)
                .map_err(|_| ApiError::bad("acme.dns.zone is not a DNS name."))?;
            d.window_seconds = None;
            d.nameservers = None;
        }
        "notify" => {
            if let Some(ns) = &d.nameservers {
                if ns.len() > 10
                    || ns.iter().any(|s| {
                        s.rsplit_once(':')
                            .is_none_or(|(h, port)| h.is_empty() || port.parse::<u16>().is_err())
                    })
                {
                    return Err(ApiError::bad(
                        "acme.dns.nameservers must be up to 10 host:port entries.",
                    ));
                }
                if d.zone.is_none() {
                    return Err(ApiError::bad(
                        "acme.dns.nameservers needs acme.dns.zone (the zone they serve).",
                    ));
                }
            }
            d.server = None;
            d.tsig_key_name = None;
            d.tsig_algorithm = None;
            if let Some(w) = d.window_seconds
                && !(10..=86_400).contains(&w)
            {
                return Err(ApiError::bad(
                    "acme.dns.window_seconds must be from 10 to 86400.",
                ));
            }
        }
        "" => {
            return Err(ApiError::bad(
                "An acme issuer needs acme.dns.mode: rfc2136 or notify.",
            ));
        }
        _ => return Err(ApiError::bad("acme.dns.mode must be rfc2136 or notify.")),
    }
    d.tsig_secret_set = tsig_secret.is_some();
    Ok(())
}

/// Seals the secrets for the issuer row.
pub fn seal(vault: &VaultCtx, issuer_key: &str, s: &AcmeSecrets) -> ApiResult<Vec<u8>> {
    let json = zeroize::Zeroizing::new(serde_json::to_vec(s).map_err(|e| ApiError::internal(&e))?);
    certvault_crypto::seal(&vault.key, &secrets_aad(vault.vault.id, issuer_key), &json)
        .map_err(|e| ApiError::internal(&e))
}

/// Reads the stored settings of an ACME issuer (body JSON and sealed secrets).
pub fn load(
    vault: &VaultCtx,
    issuer_key: &str,
    body: &str,
    sealed: Option<&[u8]>,
) -> ApiResult<AcmeIssuer> {
    let body: Value = serde_json::from_str(body).map_err(|e| ApiError::internal(&e))?;
    let public: AcmePublic = body
        .get("acme")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(|| ApiError::bad("The acme issuer has no acme settings."))?;
    let secrets = match sealed {
        Some(b) => {
            let plain =
                certvault_crypto::open(&vault.key, &secrets_aad(vault.vault.id, issuer_key), b)
                    .map_err(|e| ApiError::internal(&e))?;
            serde_json::from_slice(&plain).map_err(|_| {
                ApiError::internal(&"the sealed ACME issuer secrets are not readable")
            })?
        }
        None => AcmeSecrets::default(),
    };
    Ok(AcmeIssuer { public, secrets })
}

impl AcmeIssuer {
    /// The roots trusted for the CA's HTTPS.
    pub fn roots(&self) -> TrustRoots {
        match &self.public.ca_pem {
            Some(pem) => TrustRoots::SystemPlus(pem.clone()),
            None => TrustRoots::System,
        }
    }

    /// What an account depends on: a change gives a new account.
    pub fn fingerprint(&self) -> String {
        let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [
            self.public.directory_url.as_str(),
            self.public.eab_kid.as_deref().unwrap_or(""),
            self.public.ca_pem.as_deref().unwrap_or(""),
        ] {
            h.update(&(part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finish().as_ref())
    }

    /// Every DNS setting with its suffix (`None`: the default) and TSIG secret.
    pub fn dns_settings(&self) -> Vec<(Option<&str>, &DnsPublic, Option<&str>)> {
        let mut out = vec![(None, &self.public.dns, self.secrets.tsig_secret.as_deref())];
        for e in &self.public.dns_suffixes {
            let secret = self
                .secrets
                .suffix_secrets
                .iter()
                .find(|x| x.suffix == e.suffix)
                .map(|x| x.tsig_secret.as_str());
            out.push((Some(e.suffix.as_str()), &e.dns, secret));
        }
        out
    }
}

/// The RFC 2136 publisher of rfc2136 settings (`None` for another mode).
pub fn rfc2136_of(
    dns: &DnsPublic,
    secret: Option<&str>,
) -> Result<Option<certvault_dns::Rfc2136>, String> {
    if dns.mode != "rfc2136" {
        return Ok(None);
    }
    let (Some(zone), Some(server), Some(name), Some(secret)) =
        (&dns.zone, &dns.server, &dns.tsig_key_name, secret)
    else {
        return Err("the rfc2136 settings are incomplete".into());
    };
    let key = certvault_dns::TsigKey::hmac_sha256(name.clone(), secret)
        .map_err(|_| "the TSIG secret is unusable".to_owned())?;
    certvault_dns::Rfc2136::new(zone, server, key)
        .map(Some)
        .map_err(|e| e.to_string())
}
