//! JWT bearer tokens from an identity provider (optional).
//!
//! A token with two dots is verified as a JWS (compact serialization) against the provider's
//! JSON Web Key Set: the header's `alg` must be one of the configured asymmetric algorithms
//! (RS*, PS*, ES256, ES384; never `none` or HS*), the key is chosen by `kid` from the JWKS (a
//! key embedded in the token — `jwk`, `jku`, `x5u`, `x5c` — is never used), and the key's type,
//! curve and `alg` must fit the header's `alg`. Then `iss` must equal the configured issuer,
//! `aud` (a string or an array) must contain one of the configured audiences, `exp` must lie in
//! the future and `nbf`, when present, in the past (both with the configured clock skew, and
//! both against the server's [`Clock`](certvault_core::clock::Clock)).
//!
//! The principal is named by one claim (`sub` by default): its value is the principal's name,
//! or, when a mapping table is configured, the table maps it to one (and values missing from
//! the table are refused). The principal must exist and be enabled; an administrator is
//! refused unless `allow_admin` is set.
//!
//! The JWKS comes from a file or an `https://` URL (plain `http://` only on a loopback host,
//! for a development identity provider). It is loaded at start, and loaded again when a token
//! names a `kid` the set does not hold, or when the set is older than an hour — in both cases at
//! most once per `jwks_refresh_seconds`. A failed refresh keeps the keys already known.
//!
//! Nothing here logs or returns the token or any part of it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use certvault_store::{PrincipalRecord, Store};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ServerError;

/// The asymmetric algorithms certvault accepts, by their JWS names.
pub const SUPPORTED_ALGORITHMS: [&str; 8] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
];

/// A token longer than this is refused before it is parsed.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Keys kept from one JWKS document.
const MAX_KEYS: usize = 100;
/// A key set older than this is loaded again (rate-limited like a refresh on an unknown `kid`).
const MAX_AGE: Duration = Duration::from_secs(3600);

/// Where the JSON Web Key Set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local file (read again on refresh, so it can be rotated in place).
    File(PathBuf),
    /// An `https://` URL (or `http://` on a loopback host), with an optional PEM file of extra
    /// CA certificates to trust for it besides the system's.
    Url {
        /// The URL.
        url: String,
        /// Extra CA certificates (PEM).
        ca_file: Option<PathBuf>,
    },
}

/// Settings of JWT authentication.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    /// The required `iss`.
    pub issuer: String,
    /// Accepted `aud` values; empty means the challenge resource `https://<base-domain>[:port]`.
    pub audiences: Vec<String>,
    /// The signing keys.
    pub jwks: JwksSource,
    /// Accepted `alg` values (a subset of [`SUPPORTED_ALGORITHMS`]); empty means all of them.
    pub algorithms: Vec<String>,
    /// Tolerance for `exp` and `nbf`, in seconds.
    pub clock_skew: i64,
    /// The claim that names the principal (`sub`, `oid`, `appid`, `preferred_username`, …).
    pub principal_claim: String,
    /// Claim value → principal name. When not empty, only the values it lists are accepted.
    pub principal_map: HashMap<String, String>,
    /// Least time between two loads of the JWKS, in seconds.
    pub jwks_refresh_seconds: u64,
    /// Whether a JWT may authenticate an administrator.
    pub allow_admin: bool,
}

impl JwtSettings {
    /// Settings with the defaults: audience = the challenge resource, every supported
    /// algorithm, 60 s of clock skew, principal claim `sub`, JWKS refresh at most every 60 s,
    /// administrators refused.
    pub fn new(issuer: impl Into<String>, jwks: JwksSource) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: Vec::new(),
            jwks,
            algorithms: Vec::new(),
            clock_skew: 60,
            principal_claim: "sub".into(),
            principal_map: HashMap::new(),
            jwks_refresh_seconds: 60,
            allow_admin: false,
        }
    }
}

/// Why a JWT was refused. [`JwtError::message`] is what the client sees (after `AKV10022`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not a compact JWS, bad base64 or JSON, or an unsupported header (`crit`).
    Malformed,
    /// The header's `alg` is not accepted (`none`, HS*, or not configured).
    Algorithm,
    /// No key of the JWKS fits the header's `kid` and `alg`.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `iss` is missing or wrong.
    Issuer,
    /// `aud` is missing or names none of the accepted audiences.
    Audience,
    /// `exp` is missing, malformed or past.
    Expired,
    /// `nbf` lies in the future.
    NotYetValid,
    /// The principal claim is missing, not a string, or not in the mapping table.
    PrincipalClaim,
    /// No principal has that name.
    UnknownPrincipal,
    /// The principal is disabled.
    DisabledPrincipal,
    /// The principal is an administrator and JWTs may not authenticate administrators.
    AdminRefused,
}

impl JwtError {
    /// A fixed message naming the reason, never the token.
    pub fn message(self) -> &'static str {
        match self {
            Self::Malformed => "AKV10022: Invalid bearer token: the JWT is malformed.",
            Self::Algorithm => {
                "AKV10022: Invalid bearer token: the JWT's signature algorithm is not accepted."
            }
            Self::UnknownKey => {
                "AKV10022: Invalid bearer token: no signing key of the identity provider fits the JWT."
            }
            Self::Signature => "AKV10022: Invalid bearer token: the JWT's signature is not valid.",
            Self::Issuer => "AKV10022: Invalid bearer token: the JWT's issuer is not accepted.",
            Self::Audience => "AKV10022: Invalid bearer token: the JWT's audience is not accepted.",
            Self::Expired => "AKV10022: Invalid bearer token: the JWT has expired.",
            Self::NotYetValid => "AKV10022: Invalid bearer token: the JWT is not valid yet.",
            Self::PrincipalClaim => {
                "AKV10022: Invalid bearer token: the JWT does not name a known principal."
            }
            Self::UnknownPrincipal => {
                "AKV10022: Invalid bearer token: the JWT does not name a known principal."
            }
            Self::DisabledPrincipal => {
                "AKV10022: Invalid bearer token: the JWT's principal is disabled."
            }
            Self::AdminRefused => {
                "AKV10022: Invalid bearer token: a JWT may not authenticate an administrator."
            }
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// True when `token` has the shape of a JWS compact serialization (three parts) rather than
/// a certvault token.
pub fn looks_like_jwt(token: &str) -> bool {
    !token.starts_with("cvt_") && token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The kind of a JWKS key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        match self {
            Self::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            Self::P256 => alg == Algorithm::ES256,
            Self::P384 => alg == Algorithm::ES384,
        }
    }
}

struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

impl Key {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

#[derive(Default)]
struct KeySet {
    keys: Vec<Key>,
    loaded: Option<Instant>,
}

/// Verifies JWTs and resolves them to principals.
pub struct JwtAuth {
    settings: JwtSettings,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<KeySet>>,
    /// When the JWKS was last loaded or tried; held while loading.
    last_load: tokio::sync::Mutex<Option<Instant>>,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuth")
            .field("issuer", &self.settings.issuer)
            .field("audiences", &self.audiences)
            .field("jwks", &self.settings.jwks)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        _ => return None,
    })
}

fn config(msg: impl Into<String>) -> ServerError {
    ServerError::Config(msg.into())
}

/// True for `localhost`, `*.localhost` and loopback addresses.
fn loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.to_ascii_lowercase().ends_with(".localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of an `http(s)://host[:port]/…` URL.
fn url_host(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    if let Some(end) = hostport.strip_prefix('[').and_then(|h| h.find(']')) {
        return &hostport[..end + 2];
    }
    hostport.split(':').next().unwrap_or(hostport)
}

impl JwtAuth {
    /// Checks the settings; `resource` is the challenge resource (the default audience). The
    /// keys are loaded by [`JwtAuth::load`].
    pub fn new(settings: JwtSettings, resource: &str) -> Result<Self, ServerError> {
        if settings.issuer.trim().is_empty() {
            return Err(config("the JWT issuer must not be empty"));
        }
        let names: Vec<String> = if settings.algorithms.is_empty() {
            SUPPORTED_ALGORITHMS
                .iter()
                .map(|s| (*s).to_owned())
                .collect()
        } else {
            settings.algorithms.clone()
        };
        let mut algorithms = Vec::new();
        for n in &names {
            let a = algorithm(n.trim()).ok_or_else(|| {
                config(format!(
                    "JWT algorithm '{}' is not supported (supported: {}; never none or HS*)",
                    certvault_core::names::truncate(n, 20),
                    SUPPORTED_ALGORITHMS.join(", ")
                ))
            })?;
            if !algorithms.contains(&a) {
                algorithms.push(a);
            }
        }
        let audiences: Vec<String> = if settings.audiences.is_empty() {
            vec![resource.to_owned()]
        } else {
            settings.audiences.clone()
        };
        if audiences.iter().any(|a| a.trim().is_empty()) {
            return Err(config("a JWT audience must not be empty"));
        }
        if !(0..=3600).contains(&settings.clock_skew) {
            return Err(config("the JWT clock skew must be from 0 to 3600 seconds"));
        }
        if settings.principal_claim.trim().is_empty() {
            return Err(config("the JWT principal claim must not be empty"));
        }
        if settings.jwks_refresh_seconds == 0 {
            return Err(config(
                "the JWKS refresh interval must be at least 1 second",
            ));
        }
        let http = match &settings.jwks {
            JwksSource::File(_) => None,
            JwksSource::Url { url, ca_file } => {
                let lower = url.to_ascii_lowercase();
                let allowed = match (
                    lower.strip_prefix("https://"),
                    lower.strip_prefix("http://"),
                ) {
                    (Some(rest), _) => !url_host(rest).is_empty(),
                    (None, Some(rest)) => loopback_host(url_host(rest)),
                    (None, None) => false,
                };
                if !allowed {
                    return Err(config(
                        "the JWKS URL must be https:// (plain http:// only on a loopback host)",
                    ));
                }
                let mut b = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .connect_timeout(Duration::from_secs(5))
                    .redirect(reqwest::redirect::Policy::none());
                if let Some(ca) = ca_file {
                    let pem = std::fs::read(ca)
                        .map_err(|e| config(format!("JWKS CA file {}: {e}", ca.display())))?;
                    let certs = reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| config(format!("JWKS CA file {}: {e}", ca.display())))?;
                    if certs.is_empty() {
                        return Err(config(format!(
                            "JWKS CA file {} holds no certificate",
                            ca.display()
                        )));
                    }
                    b = b.tls_certs_merge(certs);
                }
                Some(
                    b.build()
                        .map_err(|e| config(format!("JWKS HTTP client: {e}")))?,
                )
            }
        };
        Ok(Self {
            settings,
            audiences,
            algorithms,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_load: tokio::sync::Mutex::new(None),
            http,
        })
    }

    /// The accepted audiences.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Loads the JWKS now (at start). A file that cannot be read or parsed is an error; a URL
    /// that cannot be fetched only logs a warning (the identity provider may come up later).
    pub async fn load(&self) -> Result<usize, ServerError> {
        let mut last = self.last_load.lock().await;
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                let n = keys.len();
                self.install(keys);
                Ok(n)
            }
            Err(e) => match &self.settings.jwks {
                JwksSource::File(_) => Err(config(e)),
                JwksSource::Url { .. } => {
                    tracing::warn!(error = %e, "could not load the JWKS; will try again when a JWT arrives");
                    Ok(0)
                }
            },
        }
    }

    fn install(&self, keys: Vec<Key>) {
        if let Ok(mut k) = self.keys.write() {
            *k = Arc::new(KeySet {
                keys,
                loaded: Some(Instant::now()),
            });
        }
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|_| Arc::new(KeySet::default()))
    }

    /// Loads the JWKS again unless that was done or tried less than the refresh interval ago.
    async fn refresh(&self) {
        let mut last = self.last_load.lock().await;
        let min = Duration::from_secs(self.settings.jwks_refresh_seconds);
        if last.is_some_and(|t| t.elapsed() < min) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "loaded the JWKS");
                self.install(keys);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the JWKS; keeping the keys known")
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let bytes = match &self.settings.jwks {
            JwksSource::File(path) => {
                let p = path.clone();
                tokio::task::spawn_blocking(move || {
                    let meta =
                        std::fs::metadata(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    if meta.len() > MAX_JWKS_BYTES as u64 {
                        return Err(format!("{}: larger than 1 MiB", p.display()));
                    }
                    std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
                })
                .await
                .map_err(|e| e.to_string())??
            }
            JwksSource::Url { url, .. } => {
                let http = self.http.as_ref().ok_or("no HTTP client")?;
                let mut resp = http
                    .get(url)
                    .header("accept", "application/json")
                    .send()
                    .await
                    .map_err(|e| format!("GET {url}: {e}"))?;
                if !resp.status().is_success() {
                    return Err(format!("GET {url}: HTTP {}", resp.status().as_u16()));
                }
                let mut body = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
                    body.extend_from_slice(&chunk);
                    if body.len() > MAX_JWKS_BYTES {
                        return Err(format!("GET {url}: larger than 1 MiB"));
                    }
                }
                body
            }
        };
        parse_jwks(&bytes)
    }

    /// The keys that may have signed a token with this `kid` and `alg`, loading the JWKS again
    /// (rate-limited) when none fits or the set is old.
    async fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
        let pick = |set: &KeySet| -> Vec<DecodingKey> {
            set.keys
                .iter()
                .filter(|k| k.fits(alg))
                .filter(|k| match kid {
                    Some(want) => k.kid.as_deref() == Some(want),
                    None => true,
                })
                .take(8)
                .map(|k| k.key.clone())
                .collect()
        };
        let set = self.current();
        let stale = set.loaded.is_none_or(|t| t.elapsed() > MAX_AGE);
        let found = pick(&set);
        if !found.is_empty() && !stale {
            return found;
        }
        self.refresh().await;
        let again = pick(&self.current());
        if again.is_empty() { found } else { again }
    }

    /// Verifies a JWT at time `now` and returns the name of the principal it stands for (not
    /// yet looked up) and the time from which it is no longer accepted.
    pub async fn verify(&self, token: &str, now: i64) -> Result<(String, i64), JwtError> {
        if token.len() > MAX_TOKEN_LEN || !looks_like_jwt(token) {
            return Err(JwtError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `alg: none` and other names outside the JWS list fail to parse.
            ErrorKind::Json(_) | ErrorKind::InvalidAlgorithmName => {
                if header_alg_is_unknown(token) {
                    JwtError::Algorithm
                } else {
                    JwtError::Malformed
                }
            }
            _ => JwtError::Malformed,
        })?;
        if header.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        if !self.algorithms.contains(&header.alg) {
            return Err(JwtError::Algorithm);
        }
        let keys = self.candidates(header.kid.as_deref(), header.alg).await;
        if keys.is_empty() {
            return Err(JwtError::UnknownKey);
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        // Time is checked below against the server's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = true;
        validation.set_audience(&self.audiences);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut claims: Option<Map<String, Value>> = None;
        for key in &keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_) => {}
                    ErrorKind::InvalidIssuer => return Err(JwtError::Issuer),
                    ErrorKind::InvalidAudience => return Err(JwtError::Audience),
                    ErrorKind::MissingRequiredClaim(c) => {
                        return Err(match c.as_str() {
                            "iss" => JwtError::Issuer,
                            "aud" => JwtError::Audience,
                            _ => JwtError::Expired,
                        });
                    }
                    ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                        return Err(JwtError::Algorithm);
                    }
                    _ => return Err(JwtError::Malformed),
                },
            }
        }
        let claims = claims.ok_or(JwtError::Signature)?;
        let skew = self.settings.clock_skew;
        let exp = claims
            .get("exp")
            .and_then(numeric_date)
            .ok_or(JwtError::Expired)?;
        if now >= exp.saturating_add(skew) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = numeric_date(nbf).ok_or(JwtError::Malformed)?;
            if now.saturating_add(skew) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        let value = claims
            .get(&self.settings.principal_claim)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty() && v.len() <= 256)
            .ok_or(JwtError::PrincipalClaim)?;
        let name = if self.settings.principal_map.is_empty() {
            value.to_owned()
        } else {
            self.settings
                .principal_map
                .get(value)
                .cloned()
                .ok_or(JwtError::PrincipalClaim)?
        };
        Ok((name, exp.saturating_add(skew)))
    }

    /// Verifies a JWT and looks up its principal, which must exist, be enabled and (unless
    /// allowed) not be an administrator. Returns the principal and the time from which the
    /// token is no longer accepted. `Err(Ok(_))` is a refusal, `Err(Err(_))` a store failure.
    pub async fn resolve(
        &self,
        store: &Store,
        token: &str,
        now: i64,
    ) -> Result<(PrincipalRecord, i64), Result<JwtError, certvault_store::StoreError>> {
        let (name, until) = self.verify(token, now).await.map_err(Ok)?;
        let principal = store
            .principal(&name.to_ascii_lowercase())
            .await
            .map_err(Err)?
            .ok_or(Ok(JwtError::UnknownPrincipal))?;
        if principal.disabled {
            return Err(Ok(JwtError::DisabledPrincipal));
        }
        if principal.admin && !self.settings.allow_admin {
            return Err(Ok(JwtError::AdminRefused));
        }
        Ok((principal, until))
    }
}

/// True when the header parses as JSON but its `alg` is not a name the library knows (e.g.
/// `none`), so the refusal can say "algorithm" rather than "malformed".
fn header_alg_is_unknown(token: &str) -> bool {
    let Some(h) = token.split('.').next() else {
        return false;
    };
    let Ok(raw) = URL_SAFE_NO_PAD.decode(h.trim_end_matches('=')) else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
        return false;
    };
    v.get("alg").is_some()
}

/// A NumericDate: seconds since the epoch, an integer or a number with a fraction.
fn numeric_date(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f.abs() < 1e15).then(|| f.floor() as i64)
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct JwkDoc {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64(s: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(s.as_deref()?.trim_end_matches('='))
        .ok()
}

/// Parses a JWKS, keeping the RSA and EC (P-256, P-384) signature keys and skipping the others
/// (`oct` keys in particular are never used).
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, String> {
    let doc: JwksDoc = serde_json::from_slice(bytes)
        .map_err(|e| format!("the JWKS is not a JSON object with \"keys\": {e}"))?;
    let mut keys = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        let Ok(jwk) = serde_json::from_value::<JwkDoc>(raw) else {
            tracing::debug!(index = i, "JWKS key skipped: not a JWK");
            continue;
        };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(a) => match algorithm(a) {
                Some(a) => Some(a),
                None => {
                    tracing::debug!(index = i, "JWKS key skipped: its alg is not supported");
                    continue;
                }
            },
        };
        let (kind, key) = match jwk.kty.as_str() {
            "RSA" => {
                let (Some(n), Some(e)) = (b64(&jwk.n), b64(&jwk.e)) else {
                    continue;
                };
                let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
                if n.len() < 256 || e.is_empty() {
                    tracing::debug!(index = i, "JWKS key skipped: RSA key under 2048 bits");
                    continue;
                }
                (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            "EC" => {
                let (kind, len) = match jwk.crv.as_deref() {
                    Some("P-256") => (KeyKind::P256, 32),
                    Some("P-384") => (KeyKind::P384, 48),
                    _ => continue,
                };
                let (Some(x), Some(y)) = (b64(&jwk.x), b64(&jwk.y)) else {
                    continue;
                };
                if x.len() != len || y.len() != len {
                    continue;
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (kind, DecodingKey::from_ec_der(&point))
            }
            _ => continue,
        };
        keys.push(Key {
            kid: jwk.kid,
            alg,
            kind,
            key,
        });
        if keys.len() >= MAX_KEYS {
            break;
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use certvault_crypto::{Jwk, KeyAlg, PrivateKey, SignAlg};
    use serde_json::json;

    const ISS: &str = "https://idp.example.test/";
    const RESOURCE: &str = "https://certvault.test:8443";

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn sign(key: &PrivateKey, alg: SignAlg, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", enc(header), enc(claims));
        let sig = certvault_crypto::sign(key, alg, &alg.digest(input.as_bytes())).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn jwk(key: &PrivateKey, kid: &str) -> Value {
        match key.public_key().jwk() {
            Jwk::Rsa { n, e } => json!({"kty": "RSA", "kid": kid, "use": "sig",
                "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)}),
            Jwk::Ec { crv, x, y } => json!({"kty": "EC", "kid": kid, "crv": crv.as_str(),
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y)}),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        jwks_path: PathBuf,
        rsa: PrivateKey,
        ec: PrivateKey,
        auth: JwtAuth,
        store: Store,
        now: i64,
    }

    async fn fixture(tweak: impl FnOnce(&mut JwtSettings)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let rsa = PrivateKey::generate(KeyAlg::Rsa(2048)).unwrap();
        let ec = PrivateKey::generate(KeyAlg::Ec(certvault_crypto::Curve::P256)).unwrap();
        let jwks_path = dir.path().join("jwks.json");
        let doc = json!({"keys": [jwk(&rsa, "rsa-1"), jwk(&ec, "ec-1"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}]});
        std::fs::write(&jwks_path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let mut s = JwtSettings::new(ISS, JwksSource::File(jwks_path.clone()));
        s.jwks_refresh_seconds = 1;
        tweak(&mut s);
        let auth = JwtAuth::new(s, RESOURCE).unwrap();
        assert_eq!(auth.load().await.unwrap(), 2, "the oct key is skipped");
        let store =
            Store::Sqlite(certvault_store::SqliteStore::open(&dir.path().join("db")).unwrap());
        store
            .create_principal("app-1", false, None, 1)
            .await
            .unwrap();
        let off = store
            .create_principal("app-off", false, None, 1)
            .await
            .unwrap();
        store
            .update_principal(&off.name.to_ascii_lowercase(), Some(true), None, None, 2)
            .await
            .unwrap();
        store.create_principal("boss", true, None, 1).await.unwrap();
        Fixture {
            _dir: dir,
            jwks_path,
            rsa,
            ec,
            auth,
            store,
            now: 1_900_000_000,
        }
    }

    impl Fixture {
        fn claims(&self) -> Value {
            json!({"iss": ISS, "aud": RESOURCE, "sub": "app-1", "exp": self.now + 600,
                   "nbf": self.now - 10, "iat": self.now - 10})
        }

        fn rs256(&self, claims: &Value) -> String {
            sign(
                &self.rsa,
                SignAlg::RS256,
                &json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-1"}),
                claims,
            )
        }

        async fn check(&self, token: &str) -> Result<String, JwtError> {
            self.auth
                .resolve(&self.store, token, self.now)
                .await
                .map(|(p, _)| p.name)
                .map_err(|e| e.unwrap())
        }
    }

    #[tokio::test]
    async fn good_tokens_rsa_pss_and_ec() {
        let f = fixture(|_| {}).await;
        assert_eq!(f.check(&f.rs256(&f.claims())).await.unwrap(), "app-1");
        let (_, until) = f.auth.verify(&f.rs256(&f.claims()), f.now).await.unwrap();
        assert_eq!(until, f.now + 600 + 60);
        for (alg, name) in [(SignAlg::PS256, "PS256"), (SignAlg::RS512, "RS512")] {
            let t = sign(
                &f.rsa,
                alg,
                &json!({"alg": name, "kid": "rsa-1"}),
                &f.claims(),
            );
            assert_eq!(f.check(&t).await.unwrap(), "app-1", "{name}");
        }
        let t = sign(
            &f.ec,
            SignAlg::ES256,
            &json!({"alg": "ES256", "kid": "ec-1"}),
            &f.claims(),
        );
        assert_eq!(f.check(&t).await.unwrap(), "app-1");
        // no kid: every key that fits the algorithm is tried
        let t = sign(&f.ec, SignAlg::ES256, &json!({"alg": "ES256"}), &f.claims());
        assert_eq!(f.check(&t).await.unwrap(), "app-1");
        // aud as an array, principal names compare case-insensitively
        let mut c = f.claims();
        c["aud"] = json!(["other", RESOURCE]);
        c["sub"] = json!("APP-1");
        assert_eq!(f.check(&f.rs256(&c)).await.unwrap(), "app-1");
    }

    #[tokio::test]
    async fn wrong_issuer_audience_and_times() {
        let f = fixture(|_| {}).await;
        let mut c = f.claims();
        c["iss"] = json!("https://evil.example.test/");
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::Issuer));
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::Issuer));

        let mut c = f.claims();
        c["aud"] = json!("https://vault.azure.net");
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::Audience));
        c["aud"] = json!(["a", "b"]);
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::Audience));
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::Audience));

        let mut c = f.claims();
        c["exp"] = json!(f.now - 61);
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::Expired));
        c["exp"] = json!(f.now - 59); // within the skew
        assert!(f.check(&f.rs256(&c)).await.is_ok());
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::Expired));

        let mut c = f.claims();
        c["nbf"] = json!(f.now + 61);
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::NotYetValid));
        c["nbf"] = json!(f.now + 59);
        assert!(f.check(&f.rs256(&c)).await.is_ok());
    }

    #[tokio::test]
    async fn bad_signature_unknown_kid_and_algorithms() {
        let f = fixture(|_| {}).await;
        // signature of another key under the known kid
        let other = PrivateKey::generate(KeyAlg::Rsa(2048)).unwrap();
        let t = sign(
            &other,
            SignAlg::RS256,
            &json!({"alg": "RS256", "kid": "rsa-1"}),
            &f.claims(),
        );
        assert_eq!(f.check(&t).await, Err(JwtError::Signature));
        // a changed payload
        let good = f.rs256(&f.claims());
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = f.claims();
        c["sub"] = json!("boss");
        let forged = format!("{}.{}.{}", parts[0], enc(&c), parts[2]);
        assert_eq!(f.check(&forged).await, Err(JwtError::Signature));
        // unknown kid
        let t = sign(
            &f.rsa,
            SignAlg::RS256,
            &json!({"alg": "RS256", "kid": "nope"}),
            &f.claims(),
        );
        assert_eq!(f.check(&t).await, Err(JwtError::UnknownKey));
        // alg none, with and without a signature
        let unsigned = format!("{}.{}.", enc(&json!({"alg": "none"})), enc(&f.claims()));
        assert_eq!(f.check(&unsigned).await, Err(JwtError::Algorithm));
        let with_sig = format!("{unsigned}{}", parts[2]);
        assert_eq!(f.check(&with_sig).await, Err(JwtError::Algorithm));
        // HS256 "signed" with the RSA public key (algorithm confusion), and with the oct key
        let spki = f.rsa.public_key().spki_der().to_vec();
        for (kid, secret) in [("rsa-1", spki), ("hmac", b"secret".to_vec())] {
            let input = format!(
                "{}.{}",
                enc(&json!({"alg": "HS256", "kid": kid})),
                enc(&f.claims())
            );
            let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
            let mac = aws_lc_rs::hmac::sign(&k, input.as_bytes());
            let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
            assert_eq!(f.check(&t).await, Err(JwtError::Algorithm), "{kid}");
        }
        // an RS token verified against an EC kid does not fit
        let t = sign(
            &f.rsa,
            SignAlg::RS256,
            &json!({"alg": "RS256", "kid": "ec-1"}),
            &f.claims(),
        );
        assert_eq!(f.check(&t).await, Err(JwtError::UnknownKey));
        // crit headers and garbage
        let t = sign(
            &f.rsa,
            SignAlg::RS256,
            &json!({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}),
            &f.claims(),
        );
        assert_eq!(f.check(&t).await, Err(JwtError::Malformed));
        assert_eq!(f.check("a.b.c").await, Err(JwtError::Malformed));
        assert_eq!(f.check("cvt_a.b.c").await, Err(JwtError::Malformed));
    }

    #[tokio::test]
    async fn configured_algorithms_limit_what_is_accepted() {
        let f = fixture(|s| s.algorithms = vec!["ES256".into()]).await;
        assert_eq!(
            f.check(&f.rs256(&f.claims())).await,
            Err(JwtError::Algorithm)
        );
        for bad in ["HS256", "none", "EdDSA", "ES512"] {
            let mut s = JwtSettings::new(ISS, JwksSource::File(f.jwks_path.clone()));
            s.algorithms = vec![bad.into()];
            assert!(JwtAuth::new(s, RESOURCE).is_err(), "{bad}");
        }
        let s = JwtSettings::new(
            ISS,
            JwksSource::Url {
                url: "http://idp.example.test/jwks".into(),
                ca_file: None,
            },
        );
        assert!(
            JwtAuth::new(s, RESOURCE).is_err(),
            "plain http only on loopback"
        );
        let s = JwtSettings::new(
            ISS,
            JwksSource::Url {
                url: "http://127.0.0.1:1/jwks".into(),
                ca_file: None,
            },
        );
        assert!(JwtAuth::new(s, RESOURCE).is_ok());
    }

    #[tokio::test]
    async fn principals_unknown_disabled_admin_and_mapping() {
        let f = fixture(|_| {}).await;
        let mut c = f.claims();
        c["sub"] = json!("nobody");
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::UnknownPrincipal));
        c["sub"] = json!("app-off");
        assert_eq!(
            f.check(&f.rs256(&c)).await,
            Err(JwtError::DisabledPrincipal)
        );
        c["sub"] = json!("boss");
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::AdminRefused));
        c["sub"] = json!(42);
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::PrincipalClaim));

        // another claim, through a mapping table (values missing from it are refused)
        let f = fixture(|s| {
            s.principal_claim = "oid".into();
            s.principal_map.insert(
                "6f1c0000-0000-4000-8000-000000000001".into(),
                "app-1".into(),
            );
            s.allow_admin = true;
        })
        .await;
        let mut c = f.claims();
        c["oid"] = json!("6f1c0000-0000-4000-8000-000000000001");
        assert_eq!(f.check(&f.rs256(&c)).await.unwrap(), "app-1");
        c["oid"] = json!("app-1");
        assert_eq!(f.check(&f.rs256(&c)).await, Err(JwtError::PrincipalClaim));
    }

    #[tokio::test]
    async fn unknown_kid_reloads_the_jwks_at_most_once_per_interval() {
        let f = fixture(|s| s.jwks_refresh_seconds = 1).await;
        let new = PrivateKey::generate(KeyAlg::Ec(certvault_crypto::Curve::P384)).unwrap();
        let t = sign(
            &new,
            SignAlg::ES384,
            &json!({"alg": "ES384", "kid": "ec-2"}),
            &f.claims(),
        );
        // rotate the file: the new key appears; within the interval it is not seen yet
        let doc = json!({"keys": [jwk(&f.rsa, "rsa-1"), jwk(&new, "ec-2")]});
        std::fs::write(&f.jwks_path, serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(f.check(&t).await, Err(JwtError::UnknownKey));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(f.check(&t).await.unwrap(), "app-1");
        // a broken file keeps the keys already known
        std::fs::write(&f.jwks_path, b"not json").unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let unknown = sign(
            &new,
            SignAlg::ES384,
            &json!({"alg": "ES384", "kid": "ec-3"}),
            &f.claims(),
        );
        assert_eq!(f.check(&unknown).await, Err(JwtError::UnknownKey));
        assert_eq!(f.check(&t).await.unwrap(), "app-1");
    }

    #[test]
    fn shapes() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("cvt_abc"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert_eq!(url_host("idp.example:8443/x"), "idp.example");
        assert_eq!(url_host("[::1]:80/x"), "[::1]");
        assert!(loopback_host("[::1]"));
        assert!(loopback_host("127.0.0.1"));
        assert!(loopback_host("LOCALHOST"));
        assert!(!loopback_host("example.com"));
        assert_eq!(numeric_date(&json!(1.9)), Some(1));
        assert_eq!(numeric_date(&json!("1")), None);
    }
}
