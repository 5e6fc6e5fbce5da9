//! E-mail to a vault's contacts over SMTP (lettre; rustls on aws-lc-rs).

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use zeroize::Zeroizing;

use certvault_store::EventRecord;

use super::{Answer, describe, webhook_payload};
use crate::state::AppState;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP (only for a relay on the same machine or in tests).
    None,
    /// STARTTLS, required (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

impl std::str::FromStr for SmtpTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "plain" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "tls" | "smtps" => Ok(Self::Tls),
            other => Err(format!(
                "SMTP TLS mode must be none, starttls or tls, not '{other}'"
            )),
        }
    }
}

/// SMTP settings. The password never appears in `Debug`.
#[derive(Clone)]
pub struct SmtpSettings {
    /// Server host name.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Connection protection.
    pub tls: SmtpTls,
    /// User name, when the server wants authentication.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Zeroizing<String>>,
    /// The sender address.
    pub from: String,
    /// Extra trusted roots (PEM) for the server's certificate, in addition to the built-in
    /// webpki roots: for a relay with a private CA.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("from", &self.from)
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| p.len()))
            .finish()
    }
}

pub(super) struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    pub(super) fn new(s: &SmtpSettings) -> Result<Self, crate::ServerError> {
        let cfg = |m: String| crate::ServerError::Config(m);
        let from: Mailbox = s
            .from
            .parse()
            .map_err(|e| cfg(format!("SMTP sender '{}': {e}", s.from)))?;
        let tls = match s.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(tls_parameters(s)?),
            SmtpTls::Tls => Tls::Wrapper(tls_parameters(s)?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str())
            .port(s.port)
            .tls(tls)
            .timeout(Some(std::time::Duration::from_secs(20)));
        if let Some(user) = &s.username {
            let pw = s.password.as_ref().map(|p| p.as_str()).unwrap_or("");
            b = b.credentials(Credentials::new(user.clone(), pw.to_owned()));
        }
        Ok(Self {
            transport: b.build(),
            from,
        })
    }

    /// Mails `ev` to the vault's contacts. The second value says "skip, never retry" (no
    /// contacts).
    pub(super) async fn send_event(&self, state: &AppState, ev: &EventRecord) -> (Answer, bool) {
        let fail = |e: String, skip: bool| {
            (
                Answer {
                    status: None,
                    body: String::new(),
                    error: Some(e),
                },
                skip,
            )
        };
        let contacts = match state.store.contacts(ev.vault_id).await {
            Ok(c) => c,
            Err(e) => return fail(e.to_string(), false),
        };
        let list: Vec<serde_json::Value> = contacts
            .and_then(|c| serde_json::from_str(&c).ok())
            .unwrap_or_default();
        let mut to: Vec<Mailbox> = Vec::new();
        for c in &list {
            if let Some(addr) = c.get("email").and_then(|e| e.as_str())
                && let Ok(m) = addr.parse::<Mailbox>()
            {
                to.push(m);
            }
        }
        if to.is_empty() {
            return fail(
                "the vault has no contacts with an e-mail address".into(),
                true,
            );
        }
        let subject = format!(
            "[certvault] {}: {} ({})",
            ev.kind,
            ev.cert_name.as_deref().unwrap_or("-"),
            ev.vault
        );
        let line = describe(ev);
        let payload = webhook_payload(state, ev, 1);
        let details = serde_json::to_string_pretty(&payload).unwrap_or_default();
        let text = format!("{line}\n\n{details}\n");
        let html = format!(
            "<html><body><p>{}</p><pre>{}</pre></body></html>",
            html_escape(&line),
            html_escape(&details)
        );
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{}@certvault>", ev.uid)));
        for m in to {
            b = b.to(m);
        }
        let msg = match b.multipart(MultiPart::alternative_plain_html(text, html)) {
            Ok(m) => m,
            Err(e) => return fail(format!("the message could not be built: {e}"), true),
        };
        match self.transport.send(msg).await {
            Ok(r) => (
                Answer {
                    status: Some(u16::from(r.code())),
                    body: r.message().collect::<Vec<_>>().join(" "),
                    error: None,
                },
                false,
            ),
            Err(e) => {
                let code = e.status().map(u16::from);
                (
                    Answer {
                        status: code,
                        body: String::new(),
                        error: Some(if e.is_transient() {
                            "the SMTP server refused the message for now".into()
                        } else {
                            format!("sending the e-mail failed: {e}")
                        }),
                    },
                    false,
                )
            }
        }
    }
}

/// TLS parameters for the SMTP connection: the webpki roots plus the extra roots of
/// `ca_pem`. Certificate and host-name verification always stay on.
fn tls_parameters(s: &SmtpSettings) -> Result<TlsParameters, crate::ServerError> {
    let cfg = |m: String| crate::ServerError::Config(m);
    let mut b =
        TlsParameters::builder(s.host.clone()).certificate_store(CertificateStore::WebpkiRoots);
    if let Some(pem) = &s.ca_pem {
        use rustls::pki_types::pem::PemObject;
        let n = rustls::pki_types::CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cfg(format!("SMTP CA file: {e}")))?
            .len();
        if n == 0 {
            return Err(cfg("SMTP CA file: no PEM certificate in it".into()));
        }
        let cert = Certificate::from_pem(pem).map_err(|e| cfg(format!("SMTP CA file: {e}")))?;
        b = b.add_root_certificate(cert);
    }
    b.build_rustls().map_err(|e| cfg(format!("SMTP TLS: {e}")))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
