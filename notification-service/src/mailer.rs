//! How emails leave the service: the [`Mailer`] interface, a simulated mailer (the default),
//! SMTP via lettre (plain, STARTTLS or implicit TLS, with rustls), and a recording double for
//! tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::Tls;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::config::{tls_is_guaranteed, tls_mode, MailerSettings};

/// One email to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// The notification it belongs to; stable across retries.
    pub notification_id: Uuid,
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

impl Email {
    /// The Message-ID of this email. Derived from the notification id, so every attempt of one
    /// notification carries the same id: if we crash after the SMTP server accepted a message
    /// but before our database recorded it as sent, the retry is a duplicate that mail systems
    /// downstream can recognise. That window between the server's acceptance and our commit
    /// is inherent to at-least-once delivery; the stable id is how it is made harmless.
    pub fn message_id(&self) -> String {
        format!("<{}@notification-service>", self.notification_id)
    }
}

/// Why a send failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MailError {
    /// Worth retrying later (connection trouble, 4xx SMTP reply, timeout).
    #[error("transient mail failure: {0}")]
    Transient(String),
    /// Retrying will not help (invalid address, 5xx SMTP reply).
    #[error("permanent mail failure: {0}")]
    Permanent(String),
}

/// A boxed send future, so mailers can sit behind `Arc<dyn Mailer>`.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), MailError>> + Send + 'a>>;

/// Sends emails. Implementations must be safe to call concurrently.
pub trait Mailer: Send + Sync + 'static {
    /// Sends one email; `Ok` means the transport accepted it.
    fn send<'a>(&'a self, email: &'a Email) -> SendFuture<'a>;
}

/// Builds the mailer the settings ask for.
pub fn from_settings(settings: &MailerSettings, from: Mailbox) -> Arc<dyn Mailer> {
    match settings {
        MailerSettings::Simulated { delay } => Arc::new(SimulatedMailer::new(*delay)),
        MailerSettings::Smtp {
            host,
            port,
            tls,
            credentials,
            timeout,
        } => {
            if credentials.is_some() && !tls_is_guaranteed(tls) {
                // Only reachable with SMTP_ALLOW_PLAINTEXT_AUTH (see `Config::validate`).
                tracing::warn!(
                    tls = tls_mode(tls),
                    "SMTP credentials may be sent unencrypted (SMTP_ALLOW_PLAINTEXT_AUTH is set)"
                );
            }
            Arc::new(SmtpMailer::new(
                host,
                *port,
                tls.clone(),
                credentials
                    .as_ref()
                    .map(|(u, p)| Credentials::new(u.clone(), p.expose_secret().to_owned())),
                *timeout,
                from,
            ))
        }
    }
}

/// Logs each email (to, subject, body) at info and reports it sent.
#[derive(Debug, Clone, Default)]
pub struct SimulatedMailer {
    delay: Duration,
}

impl SimulatedMailer {
    /// A simulated mailer that takes `delay` per email, as a slow transport would.
    pub fn new(delay: Duration) -> Self {
        SimulatedMailer { delay }
    }
}

impl Mailer for SimulatedMailer {
    fn send<'a>(&'a self, email: &'a Email) -> SendFuture<'a> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            // The default level shows that it went out, not the customer's address or what it
            // said; DEBUG has both, for a developer watching the demo.
            tracing::info!(
                notification_id = %email.notification_id,
                to = %mask_address(&email.to),
                subject = %email.subject,
                "email sent (simulated)"
            );
            tracing::debug!(
                notification_id = %email.notification_id,
                to = %email.to,
                body = ?email.body,
                "simulated email content"
            );
            Ok(())
        })
    }
}

/// An email address fit for a log line at the default level: the first character of the
/// local part and the domain (`a***@example.com`), enough to tell customers apart while
/// debugging, not enough to mail them.
pub fn mask_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// Sends over SMTP with lettre: plain (as Mailpit speaks it in the demo), STARTTLS or
/// implicit TLS, as its [`Tls`] says.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    tls: Tls,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer")
            .field("from", &self.from)
            .field("tls", &tls_mode(&self.tls))
            .finish_non_exhaustive()
    }
}

impl SmtpMailer {
    /// A mailer for `host:port`, encrypted as `tls` says (its parameters hold the name the
    /// certificate must carry and the roots to trust); each send opens a connection (no
    /// pool). Credentials are sent as given: refusing them without TLS is the caller's job
    /// (see [`crate::config::Config::validate`]); with [`Tls::Required`] or
    /// [`Tls::Wrapper`] lettre sends nothing before the handshake succeeds.
    pub fn new(
        host: &str,
        port: u16,
        tls: Tls,
        credentials: Option<Credentials>,
        timeout: Duration,
        from: Mailbox,
    ) -> Self {
        // "Dangerous" only because the builder starts without TLS; `tls` sets it.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls.clone())
            .timeout(Some(timeout));
        if let Some(credentials) = credentials {
            builder = builder.credentials(credentials);
        }
        SmtpMailer {
            transport: builder.build(),
            tls,
            from,
        }
    }

    fn message(&self, email: &Email) -> Result<Message, MailError> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|e| MailError::Permanent(format!("invalid recipient: {e}")))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&email.subject)
            .message_id(Some(email.message_id()))
            .header(ContentType::TEXT_PLAIN)
            .body(email.body.clone())
            .map_err(|e| MailError::Permanent(format!("cannot build the message: {e}")))
    }
}

impl Mailer for SmtpMailer {
    fn send<'a>(&'a self, email: &'a Email) -> SendFuture<'a> {
        Box::pin(async move {
            let message = self.message(email)?;
            match self.transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(MailError::Permanent(e.to_string())),
                Err(e) => Err(MailError::Transient(e.to_string())),
            }
        })
    }
}

/// A test double: records every email it is asked to send, and can be told to fail.
#[derive(Debug, Clone, Default)]
pub struct RecordingMailer {
    inner: Arc<Mutex<Recording>>,
}

#[derive(Debug, Default)]
struct Recording {
    sent: Vec<Email>,
    fail_next: u32,
    fail_permanently: bool,
}

impl RecordingMailer {
    /// A mailer that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `n` sends fail (transiently, or permanently).
    pub fn fail_next(&self, n: u32, permanently: bool) {
        let mut r = self.lock();
        r.fail_next = n;
        r.fail_permanently = permanently;
    }

    /// Every email accepted so far, in order.
    pub fn sent(&self) -> Vec<Email> {
        self.lock().sent.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        // A panic while holding this lock cannot leave the Vec half-written; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mailer for RecordingMailer {
    fn send<'a>(&'a self, email: &'a Email) -> SendFuture<'a> {
        let mut r = self.lock();
        let result = if r.fail_next > 0 {
            r.fail_next -= 1;
            if r.fail_permanently {
                Err(MailError::Permanent("recording mailer told to fail".into()))
            } else {
                Err(MailError::Transient("recording mailer told to fail".into()))
            }
        } else {
            r.sent.push(email.clone());
            Ok(())
        };
        drop(r);
        Box::pin(std::future::ready(result))
    }
}

#[cfg(test)]
mod tests {
    use super::mask_address;

    #[test]
    fn logged_addresses_keep_one_character_and_the_domain() {
        assert_eq!(mask_address("ada.lovelace@example.com"), "a***@example.com");
        assert_eq!(mask_address("@example.com"), "***@example.com");
        assert_eq!(mask_address("not an address"), "***");
        assert_eq!(mask_address("é@exämple.org"), "é***@exämple.org");
    }
}
