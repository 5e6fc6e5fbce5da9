//! Directories, accounts and the client.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use instant_acme::{Account, BodyWrapper, HttpClient, NewAccount};
use zeroize::Zeroizing;

use crate::error::AcmeError;
use crate::http::{Http, RetryConfig, TrustRoots, acme_call};
use crate::order::Timing;

/// Well-known ACME directories. The URLs were taken from the CAs' documentation and widely used
/// clients (acme.sh, lego); CAs that require External Account Binding say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DirectoryPreset {
    /// Let's Encrypt production.
    LetsEncrypt,
    /// Let's Encrypt staging (untrusted certificates, generous limits).
    LetsEncryptStaging,
    /// ZeroSSL (EAB).
    ZeroSsl,
    /// Google Trust Services production (EAB).
    GoogleTrustServices,
    /// Google Trust Services staging (EAB).
    GoogleTrustServicesStaging,
    /// SSL.com, RSA issuing chain (EAB).
    SslComRsa,
    /// SSL.com, ECC issuing chain (EAB).
    SslComEcc,
    /// DigiCert CertCentral (EAB; CertCentral also shows the directory URL with each credential).
    DigiCert,
    /// GlobalSign Atlas (EAB).
    GlobalSign,
}

impl DirectoryPreset {
    /// Every preset.
    pub const ALL: [Self; 9] = [
        Self::LetsEncrypt,
        Self::LetsEncryptStaging,
        Self::ZeroSsl,
        Self::GoogleTrustServices,
        Self::GoogleTrustServicesStaging,
        Self::SslComRsa,
        Self::SslComEcc,
        Self::DigiCert,
        Self::GlobalSign,
    ];

    /// The directory URL.
    pub const fn url(self) -> &'static str {
        match self {
            Self::LetsEncrypt => "https://acme-v02.api.letsencrypt.org/directory",
            Self::LetsEncryptStaging => "https://acme-staging-v02.api.letsencrypt.org/directory",
            Self::ZeroSsl => "https://acme.zerossl.com/v2/DV90",
            Self::GoogleTrustServices => "https://dv.acme-v02.api.pki.goog/directory",
            Self::GoogleTrustServicesStaging => "https://dv.acme-v02.test-api.pki.goog/directory",
            Self::SslComRsa => "https://acme.ssl.com/sslcom-dv-rsa",
            Self::SslComEcc => "https://acme.ssl.com/sslcom-dv-ecc",
            Self::DigiCert => "https://acme.digicert.com/v2/acme/directory/",
            Self::GlobalSign => "https://emea.acme.atlas.globalsign.com/directory",
        }
    }

    /// A stable name for configuration files and the API (`letsencrypt`, `zerossl`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Self::LetsEncrypt => "letsencrypt",
            Self::LetsEncryptStaging => "letsencrypt-staging",
            Self::ZeroSsl => "zerossl",
            Self::GoogleTrustServices => "google",
            Self::GoogleTrustServicesStaging => "google-staging",
            Self::SslComRsa => "sslcom-rsa",
            Self::SslComEcc => "sslcom-ecc",
            Self::DigiCert => "digicert",
            Self::GlobalSign => "globalsign",
        }
    }

    /// The preset called `name` (see [`DirectoryPreset::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Whether the CA requires External Account Binding.
    pub const fn requires_eab(self) -> bool {
        !matches!(self, Self::LetsEncrypt | Self::LetsEncryptStaging)
    }
}

/// Checks a directory URL: `https://`, or `http://` on a loopback host (tests).
pub fn validate_directory_url(url: &str) -> Result<(), AcmeError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| AcmeError::Invalid(format!("directory URL {url:?}: {e}")))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") => Ok(()),
        _ => Err(AcmeError::Invalid(format!(
            "directory URL {url:?} must be https:// (http:// only on a loopback host)"
        ))),
    }
}

/// External Account Binding credentials issued by the CA.
#[derive(Clone)]
pub struct ExternalAccountBinding {
    kid: String,
    hmac_key: Zeroizing<Vec<u8>>,
}

impl ExternalAccountBinding {
    /// From the key id and the HMAC key as the CA shows it (base64url, padding optional;
    /// standard base64 is accepted too).
    pub fn new(kid: impl Into<String>, hmac_key_b64url: &str) -> Result<Self, AcmeError> {
        let kid = kid.into();
        let s = hmac_key_b64url.trim().trim_end_matches('=');
        let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
            .map_err(|_| {
                AcmeError::Invalid(format!("the EAB HMAC key for {kid:?} is not base64url"))
            })?;
        if kid.is_empty() || key.is_empty() {
            return Err(AcmeError::Invalid(
                "EAB key id and HMAC key must not be empty".into(),
            ));
        }
        Ok(Self {
            kid,
            hmac_key: Zeroizing::new(key),
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

impl fmt::Debug for ExternalAccountBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalAccountBinding")
            .field("kid", &self.kid)
            .field("hmac_key", &"[redacted]")
            .finish()
    }
}

/// What a new account is registered with.
#[derive(Clone, Debug)]
pub struct AccountConfig {
    /// The ACME directory URL (see [`DirectoryPreset::url`]).
    pub directory_url: String,
    /// Contact URLs, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// The user agreed to the CA's terms of service (see [`DirectoryInfo::terms_of_service`]).
    pub terms_of_service_agreed: bool,
    /// External Account Binding, for CAs that require it.
    pub eab: Option<ExternalAccountBinding>,
    /// Roots trusted for the CA's HTTPS.
    pub roots: TrustRoots,
}

impl AccountConfig {
    /// A config for `directory_url` with system roots, no contact, terms not agreed, no EAB.
    pub fn new(directory_url: impl Into<String>) -> Self {
        Self {
            directory_url: directory_url.into(),
            contact: Vec::new(),
            terms_of_service_agreed: false,
            eab: None,
            roots: TrustRoots::System,
        }
    }
}

/// The account's secret: account URL, private key and directory URL. Store it encrypted
/// ([`AccountCredentials::to_json`] / [`AccountCredentials::from_json`]); `Debug` shows only
/// the account URL.
pub struct AccountCredentials {
    json: Zeroizing<String>,
    account_url: String,
    directory_url: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredCredentials {
    version: u32,
    directory_url: String,
    account_url: String,
    instant_acme: instant_acme::AccountCredentials,
}

impl AccountCredentials {
    fn from_instant(
        directory_url: &str,
        account_url: &str,
        creds: instant_acme::AccountCredentials,
    ) -> Result<Self, AcmeError> {
        let stored = StoredCredentials {
            version: 1,
            directory_url: directory_url.to_owned(),
            account_url: account_url.to_owned(),
            instant_acme: creds,
        };
        let json = Zeroizing::new(
            serde_json::to_string(&stored)
                .map_err(|e| AcmeError::Credentials(format!("cannot serialise: {e}")))?,
        );
        Ok(Self {
            json,
            account_url: account_url.to_owned(),
            directory_url: directory_url.to_owned(),
        })
    }

    /// The credentials as JSON (secret: contains the account's private key).
    pub fn to_json(&self) -> Zeroizing<String> {
        self.json.clone()
    }

    /// Reads credentials written by [`AccountCredentials::to_json`].
    pub fn from_json(json: &str) -> Result<Self, AcmeError> {
        let stored: StoredCredentials = serde_json::from_str(json).map_err(|e| {
            // serde's message may quote input; say only where it failed.
            AcmeError::Credentials(format!(
                "not certvault ACME credentials (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        Ok(Self {
            json: Zeroizing::new(json.to_owned()),
            account_url: stored.account_url,
            directory_url: stored.directory_url,
        })
    }

    /// The account URL (the account's identity at the CA; not secret).
    pub fn account_url(&self) -> &str {
        &self.account_url
    }

    /// The directory URL.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    fn instant(&self) -> Result<instant_acme::AccountCredentials, AcmeError> {
        let stored: StoredCredentials = serde_json::from_str(&self.json)
            .map_err(|_| AcmeError::Credentials("unreadable".into()))?;
        Ok(stored.instant_acme)
    }
}

impl fmt::Debug for AccountCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountCredentials")
            .field("account_url", &self.account_url)
            .field("directory_url", &self.directory_url)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// What the directory says about the CA (RFC 8555 §7.1.1 `meta`, plus feature detection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectoryInfo {
    /// The terms-of-service URL to show the user before they agree.
    pub terms_of_service: Option<String>,
    /// The CA's website.
    pub website: Option<String>,
    /// CAA identities.
    pub caa_identities: Vec<String>,
    /// The CA requires External Account Binding.
    pub external_account_required: bool,
    /// The ARI endpoint (RFC 9773), when the CA offers renewal information.
    pub renewal_info: Option<String>,
    /// Certificate profiles offered (name, description), when the CA offers profiles.
    pub profiles: Vec<(String, String)>,
}

/// An ACME account at one CA, ready to order. Cheap to clone; safe to share between tasks.
#[derive(Clone)]
pub struct AcmeClient {
    pub(crate) account: Account,
    pub(crate) http: Arc<Http>,
    pub(crate) directory_url: String,
    pub(crate) directory: DirectoryInfo,
    pub(crate) retry: RetryConfig,
    pub(crate) timing: Timing,
}

impl fmt::Debug for AcmeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeClient")
            .field("account_url", &self.account.id())
            .field("directory_url", &self.directory_url)
            .finish_non_exhaustive()
    }
}

/// Forwards to the shared client (instant-acme wants a `Box<dyn HttpClient>`).
struct SharedHttp(Arc<Http>);

impl HttpClient for SharedHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<instant_acme::BytesResponse, instant_acme::Error>> + Send>,
    > {
        self.0.request(req)
    }
}

impl AcmeClient {
    /// Registers a new account (a fresh P-256 key) and returns the client and the credentials
    /// to store. With EAB when `config.eab` is set; a CA that requires EAB refuses without it
    /// (`externalAccountRequired`).
    pub async fn create_account(
        config: &AccountConfig,
        retry: RetryConfig,
    ) -> Result<(Self, AccountCredentials), AcmeError> {
        validate_directory_url(&config.directory_url)?;
        let http = Arc::new(Http::new(&config.roots)?);
        let directory = fetch_directory(&http, &config.directory_url, &retry).await?;
        if directory.external_account_required && config.eab.is_none() {
            return Err(AcmeError::Invalid(
                "the CA requires External Account Binding (key id and HMAC key)".into(),
            ));
        }
        let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
        let new_account = NewAccount {
            contact: &contact,
            terms_of_service_agreed: config.terms_of_service_agreed,
            only_return_existing: false,
        };
        let eab = config
            .eab
            .as_ref()
            .map(|e| instant_acme::ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
        let (r, _) = acme_call!(
            &retry,
            "newAccount",
            true,
            false,
            Account::builder_with_http(Box::new(SharedHttp(http.clone()))).create(
                &new_account,
                config.directory_url.clone(),
                eab.as_ref(),
            )
        );
        let (account, creds) = r?;
        let credentials =
            AccountCredentials::from_instant(&config.directory_url, account.id(), creds)?;
        tracing::info!(account = account.id(), directory = %config.directory_url, "ACME account registered");
        Ok((
            Self {
                account,
                http,
                directory_url: config.directory_url.clone(),
                directory,
                retry,
                timing: Timing::default(),
            },
            credentials,
        ))
    }

    /// The client for a stored account (no request to the CA but the directory).
    pub async fn from_credentials(
        credentials: &AccountCredentials,
        roots: &TrustRoots,
        retry: RetryConfig,
    ) -> Result<Self, AcmeError> {
        validate_directory_url(&credentials.directory_url)?;
        let http = Arc::new(Http::new(roots)?);
        let directory = fetch_directory(&http, &credentials.directory_url, &retry).await?;
        let _ = credentials.instant()?;
        let (r, _) = acme_call!(&retry, "loadAccount", true, false, async {
            let creds = credentials
                .instant()
                .map_err(|_| instant_acme::Error::Str("unreadable account credentials"))?;
            Account::builder_with_http(Box::new(SharedHttp(http.clone())))
                .from_credentials(creds)
                .await
        });
        let account = r?;
        Ok(Self {
            account,
            http,
            directory_url: credentials.directory_url.clone(),
            directory,
            retry,
            timing: Timing::default(),
        })
    }

    /// Replaces the polling timing (how fast and how long authorizations and orders are
    /// polled).
    #[must_use]
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The account URL.
    pub fn account_url(&self) -> &str {
        self.account.id()
    }

    /// The directory URL.
    pub fn directory_url(&self) -> &str {
        &self.directory_url
    }

    /// What the directory advertises.
    pub fn directory(&self) -> &DirectoryInfo {
        &self.directory
    }

    /// GET a URL without JWS (directory, renewalInfo). Returns (status, Retry-After, body).
    pub(crate) async fn plain_get(
        &self,
        url: &str,
    ) -> Result<(u16, Option<std::time::Duration>, Bytes), AcmeError> {
        plain_get(&self.http, url, &self.retry).await
    }
}

async fn plain_get(
    http: &Http,
    url: &str,
    retry: &RetryConfig,
) -> Result<(u16, Option<std::time::Duration>, Bytes), AcmeError> {
    let (r, capture) = acme_call!(retry, "GET", true, true, async {
        let req = Request::builder()
            .method(http::Method::GET)
            .uri(url)
            .header(http::header::USER_AGENT, "certvault-acme")
            .body(BodyWrapper::default())
            .map_err(instant_acme::Error::Http)?;
        let rsp = http.request(req).await?;
        let status = rsp.parts.status.as_u16();
        if status >= 500 {
            return Err(instant_acme::Error::Str("server error"));
        }
        Ok(status)
    });
    let status = r?;
    let (retry_after, body) =
        crate::http::with_captured(&capture, |g| (g.retry_after, g.body.take()))
            .unwrap_or((None, None));
    Ok((status, retry_after, body.unwrap_or_default()))
}

async fn fetch_directory(
    http: &Http,
    url: &str,
    retry: &RetryConfig,
) -> Result<DirectoryInfo, AcmeError> {
    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Meta {
        terms_of_service: Option<String>,
        website: Option<String>,
        caa_identities: Vec<String>,
        external_account_required: bool,
        profiles: std::collections::BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Dir {
        #[serde(default)]
        meta: Meta,
        renewal_info: Option<String>,
    }
    let (status, _, body) = plain_get(http, url, retry).await?;
    if status != 200 {
        return Err(AcmeError::Protocol(format!(
            "directory {url} answered HTTP {status}"
        )));
    }
    let d: Dir = serde_json::from_slice(&body)
        .map_err(|e| AcmeError::Protocol(format!("directory {url} is not ACME JSON: {e}")))?;
    Ok(DirectoryInfo {
        terms_of_service: d.meta.terms_of_service,
        website: d.meta.website,
        caa_identities: d.meta.caa_identities,
        external_account_required: d.meta.external_account_required,
        renewal_info: d.renewal_info,
        profiles: d.meta.profiles.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets() {
        for p in DirectoryPreset::ALL {
            validate_directory_url(p.url()).unwrap();
            assert_eq!(DirectoryPreset::from_name(p.name()), Some(p));
        }
        assert!(!DirectoryPreset::LetsEncrypt.requires_eab());
        assert!(DirectoryPreset::GoogleTrustServices.requires_eab());
        assert!(validate_directory_url("http://acme.example.com/dir").is_err());
        validate_directory_url("http://127.0.0.1:1234/dir").unwrap();
    }

    #[test]
    fn eab_key_is_redacted_and_decoded() {
        let eab = ExternalAccountBinding::new("kid-1", "c2VjcmV0LWhtYWMta2V5").unwrap();
        assert_eq!(&*eab.hmac_key, b"secret-hmac-key");
        let dbg = format!("{eab:?}");
        assert!(
            !dbg.contains("c2VjcmV0") && dbg.contains("[redacted]"),
            "{dbg}"
        );
        let err = ExternalAccountBinding::new("kid-1", "!!!not-base64!!!").unwrap_err();
        assert!(!err.to_string().contains("!!!not-base64!!!"));
    }
}
