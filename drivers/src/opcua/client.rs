//! One OPC UA connection: the async-opcua `Client` of a device (PKI, trust
//! policy, identity) and [`connect`], which opens one session and runs its
//! event loop in a task until the connection is lost.
//!
//! The library's own reconnect is switched off (`session_retry_limit(0)`,
//! `recreate_subscriptions(false)`): when it re-creates subscriptions after
//! a server restart it ignores failures item by item, which is how other
//! gateways end up connected but silent. Here a lost connection ends the
//! session; the driver opens a new one with its retry policy and creates
//! every subscription and monitored item again from the config, checking
//! each result.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::{OpcuaDevice, SecurityMode};
use futures::StreamExt;
use opcua::client::{
    Client, ClientBuilder, ClientEndpoint, IdentityToken, Session, SessionActivity, SessionPollResult,
    SubscriptionActivity,
};
use opcua::types::{EndpointDescription, MessageSecurityMode, StatusCode};
use tokio::sync::mpsc;

/// Why a session could not be opened.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub code: StatusCode,
    pub message: String,
}

impl ConnectError {
    fn new(code: StatusCode, message: impl Into<String>) -> ConnectError {
        ConnectError {
            code,
            message: message.into(),
        }
    }

    /// A failure retrying will not fix by itself (certificates, identity,
    /// security settings): the device is `Error`, not `Offline`.
    pub fn is_configuration(&self) -> bool {
        is_configuration(self.code)
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Messages name their status code already, except a few built here.
        if self.message.contains(&self.code.to_string()) {
            f.write_str(&self.message)
        } else {
            write!(f, "{} ({})", self.message, self.code)
        }
    }
}

/// Status codes of failures in the device's security or identity setup.
pub fn is_configuration(code: StatusCode) -> bool {
    let name = code.sub_code().name();
    [
        "Certificate",
        "Security",
        "IdentityToken",
        "UserAccessDenied",
        "EndpointUrlInvalid",
        "NoValidCertificates",
        "ApplicationSignatureInvalid",
        "UserSignatureInvalid",
        "Configuration",
    ]
    .iter()
    .any(|k| name.contains(k))
}

pub fn message_security_mode(m: SecurityMode) -> MessageSecurityMode {
    match m {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// Client creation reads or creates the certificate in the shared PKI
/// directory: serialized, so devices starting together create one
/// certificate, not one each overwriting the other.
static PKI_LOCK: Mutex<()> = Mutex::new(());

/// The client of device `name`. Creates the client certificate and key in
/// `pki_dir` on first start (self-signed, with the application URI).
/// `timeout` bounds every request.
///
/// A publish request waits at the server until a notification or a
/// keep-alive is due: it is given three times the longer of the slowest
/// subscription's publishing interval and `keep_alive_interval`, plus
/// `timeout` (at least 60 s), so a long scan rate never times out its own
/// publish requests.
pub fn build(
    name: &str,
    url: &str,
    timeout: Duration,
    max_publishing_interval: Duration,
    o: &OpcuaDevice,
) -> Result<Client, String> {
    // The library keeps two Publish requests outstanding per subscription;
    // on a quiet one each waits for the server's keep-alive, which comes
    // every max(keep_alive_interval, publishing interval).
    let publish_timeout = max_publishing_interval
        .max(o.keep_alive_interval)
        .saturating_mul(3)
        .saturating_add(timeout)
        .max(Duration::from_secs(60));
    let pki = o
        .pki_dir
        .clone()
        .ok_or_else(|| "no pki_dir (the config loader sets <data_dir>/pki/opcua)".to_string())?;
    let uri = o
        .application_uri
        .clone()
        .unwrap_or_else(|| "urn:gateway-rust".to_string());
    let session_timeout = u32::try_from(o.session_timeout.as_millis()).unwrap_or(u32::MAX);
    let _guard = PKI_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::create_dir_all(&pki).map_err(|e| format!("cannot create pki_dir {}: {e}", pki.display()))?;
    ClientBuilder::new()
        .application_name(o.application_name.clone())
        .application_uri(uri)
        // Sessions are built from the server's endpoints (`connect`); the
        // entry only names the URL (and keeps the library from warning
        // about a client without endpoints).
        .endpoint(name, ClientEndpoint::new(url))
        .default_endpoint(name)
        .product_uri("urn:gateway-rust")
        .pki_dir(pki)
        .create_sample_keypair(true)
        .trust_server_certs(o.trust_server_certs)
        .verify_server_certs(true)
        // One attempt per session: the driver owns reconnects (module doc).
        .session_retry_limit(0)
        .recreate_subscriptions(false)
        .keep_alive_interval(o.keep_alive_interval)
        // Two keep-alive reads in a row without an answer close a
        // half-open connection (the library's default never does).
        .max_failed_keep_alive_count(2)
        .request_timeout(timeout)
        .publish_timeout(publish_timeout)
        // The library's defaults (5 chunks, 327 675 bytes) refuse a
        // Publish response of a few thousand notifications from servers
        // that do not cap them; 64 MiB in 64 KiB chunks at most.
        // (1024 chunks of the 65 535-byte default chunk size, so the two
        // limits agree: servers warn when they do not).
        .max_message_size(65_535 * 1024)
        .max_chunk_count(1024)
        // Arrays (a notification list, an array value), strings and byte
        // strings within that budget; the defaults (1000 elements, 64 KiB)
        // would drop the connection on every larger response, again on
        // every reconnect.
        .max_array_length(1 << 22)
        .max_string_length(16 << 20)
        .max_byte_string_length(16 << 20)
        .session_name(format!("gateway-rust:{name}"))
        .session_timeout(session_timeout)
        .client()
        .map_err(|e| e.join("; "))
}

/// The identity of `o`.
pub fn identity(o: &OpcuaDevice) -> Result<IdentityToken, String> {
    match (&o.username, &o.password, &o.user_cert_file, &o.user_key_file) {
        (Some(u), Some(p), _, _) => Ok(IdentityToken::new_user_name(u.clone(), p.clone())),
        (_, _, Some(c), Some(k)) => IdentityToken::new_x509_path(c, k).map_err(|e| {
            format!(
                "cannot read the user certificate {} / key {}: {e}",
                c.display(),
                k.display()
            )
        }),
        _ => Ok(IdentityToken::Anonymous),
    }
}

/// An open session whose event loop runs in its own task.
pub struct Connection {
    pub session: Arc<Session>,
    /// Receives the status code once the connection is lost.
    pub lost: mpsc::UnboundedReceiver<StatusCode>,
    task: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Closes the session (deleting its subscriptions) and stops the event
    /// loop; bounded by `timeout`.
    pub async fn close(self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.session.disconnect()).await;
        self.task.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The endpoints `url` offers (GetEndpoints), bounded by `timeout`.
pub async fn endpoints(
    client: &Client,
    url: &str,
    timeout: Duration,
) -> Result<Vec<EndpointDescription>, ConnectError> {
    match tokio::time::timeout(timeout, client.get_server_endpoints_from_url(url)).await {
        Err(_) => Err(ConnectError::new(
            StatusCode::BadTimeout,
            format!("no answer to GetEndpoints from {url} within {timeout:?}"),
        )),
        Ok(Err(e)) => Err(ConnectError::new(
            e.status(),
            format!("GetEndpoints on {url} failed: {e}"),
        )),
        Ok(Ok(eps)) => Ok(eps),
    }
}

/// Opens one session on the endpoint of `url` that matches the security
/// policy and mode of `o`: GetEndpoints, OpenSecureChannel, CreateSession,
/// ActivateSession, each bounded by `timeout`. One attempt.
pub async fn connect(
    client: &Client,
    url: &str,
    timeout: Duration,
    o: &OpcuaDevice,
    identity: IdentityToken,
) -> Result<Connection, ConnectError> {
    let eps = endpoints(client, url, timeout).await?;
    let policy = o.security_policy.uri();
    let mode = message_security_mode(o.mode_of_security());
    let Some(mut endpoint) = eps
        .iter()
        .find(|e| e.security_policy_uri.as_ref() == policy && e.security_mode == mode)
        .cloned()
    else {
        let offered: Vec<String> = eps
            .iter()
            .map(|e| {
                format!(
                    "{}/{}",
                    e.security_policy_uri.as_ref().rsplit('#').next().unwrap_or(""),
                    e.security_mode
                )
            })
            .collect();
        return Err(ConnectError::new(
            StatusCode::BadSecurityPolicyRejected,
            format!(
                "{url} offers no endpoint with security_policy {} and security_mode {}; it offers {}",
                o.security_policy.as_str(),
                o.mode_of_security().as_str(),
                offered.join(", ")
            ),
        ));
    };
    // The configured URL, not the one the server advertises: behind NAT or
    // a port mapping the advertised host, port or path is not reachable.
    endpoint.endpoint_url = url.into();
    let (session, event_loop) = client
        .session_builder()
        .connect_to_endpoint_directly(endpoint)
        .and_then(|b| {
            b.user_identity_token(identity)
                .build(client.certificate_store().clone())
        })
        .map_err(|e| ConnectError::new(e.status(), format!("cannot set up a session with {url}: {e}")))?;
    let mut stream = Box::pin(event_loop.enter());
    // Channel, CreateSession and ActivateSession: a few requests.
    let budget = timeout.saturating_mul(4);
    let opened = tokio::time::timeout(budget, async {
        loop {
            match stream.next().await {
                Some(Ok(SessionPollResult::Reconnected(_))) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(code)) => return Err(code),
                None => return Err(StatusCode::BadConnectionClosed),
            }
        }
    })
    .await;
    match opened {
        Err(_) => {
            return Err(ConnectError::new(
                StatusCode::BadTimeout,
                format!("no session with {url} within {budget:?}"),
            ))
        }
        Ok(Err(code)) => {
            let pki = o
                .pki_dir
                .as_deref()
                .unwrap_or(std::path::Path::new("<pki_dir>"))
                .display();
            let hint = if o.trust_server_certs {
                String::new()
            } else if code == StatusCode::BadCertificateUntrusted {
                format!(
                    " (the server certificate is not trusted: it was saved in {pki}/rejected; move it to {pki}/trusted to trust it)"
                )
            } else if code == StatusCode::BadSecurityChecksFailed {
                format!(
                    " (if the server certificate is in {pki}/rejected, move it to {pki}/trusted; otherwise the server may refuse the gateway's certificate {pki}/own/cert.der: add it to the server's trust list)"
                )
            } else {
                String::new()
            };
            return Err(ConnectError::new(
                code,
                format!("session with {url} refused: {code}{hint}"),
            ));
        }
        Ok(Ok(())) => {}
    }
    let (tx, lost) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        // Drives the session (publish requests, keep-alives) until the
        // connection is lost; the stream is dropped then, so the library
        // makes no reconnect attempt of its own.
        // When the library closes the session itself (failed keep-alives,
        // a fatal publish error) the transport ends with Good: report the
        // cause instead.
        let mut cause = StatusCode::BadConnectionClosed;
        while let Some(r) = stream.next().await {
            match r {
                Ok(SessionPollResult::ConnectionLost(code)) | Err(code) => {
                    let _ = tx.send(if code.is_bad() { code } else { cause });
                    return;
                }
                Ok(SessionPollResult::SessionActivity(SessionActivity::KeepAliveFailed(c)))
                | Ok(SessionPollResult::Subscription(SubscriptionActivity::FatalFailure(c))) => cause = c,
                Ok(_) => {}
            }
        }
        let _ = tx.send(cause);
    });
    Ok(Connection { session, lost, task })
}
