//! Keys of `protocol = "opcua"` devices and their tags, and the node ids
//! tags address ([`NodeAddress`]).
//!
//! # Device files
//! - `endpoint = "opc.tcp://host:4840/path"`.
//! - Security: `security_policy` (`None`, `Basic256Sha256`,
//!   `Aes128_Sha256_RsaOaep`, `Aes256_Sha256_RsaPss`) and `security_mode`
//!   (`None`, `Sign`, `SignAndEncrypt`; defaults to `SignAndEncrypt` with a
//!   policy other than `None`). The client certificate lives in `pki_dir`
//!   (default `<data_dir>/pki/opcua`) and is created on first start; server
//!   certificates are trusted only when they are in `pki_dir/trusted`
//!   (rejected ones land in `pki_dir/rejected`), unless
//!   `trust_server_certs = true`.
//! - Identity: anonymous, `username` + `password` (`${ENV}`), or an X.509
//!   user certificate (`user_cert_file` + `user_key_file`).
//! - A tag's `address` is a node id: `ns=2;s=Machine/Temp`, `ns=3;i=1001`,
//!   `ns=1;g=<uuid>`, `ns=1;b=<base64>`, or with `nsu=<namespace uri>`
//!   instead of `ns=` (resolved on each session: indexes can change when a
//!   server restarts). Without `ns=` the namespace is 0.
//! - `mode = "subscription"` (default) or `"poll"`, per device or tag.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units;

/// `security_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum SecurityPolicy {
    #[default]
    None,
    Basic256Sha256,
    #[serde(rename = "Aes128_Sha256_RsaOaep", alias = "Aes128Sha256RsaOaep")]
    Aes128Sha256RsaOaep,
    #[serde(rename = "Aes256_Sha256_RsaPss", alias = "Aes256Sha256RsaPss")]
    Aes256Sha256RsaPss,
}

impl SecurityPolicy {
    /// The policy URI servers announce.
    pub fn uri(self) -> &'static str {
        match self {
            SecurityPolicy::None => "http://opcfoundation.org/UA/SecurityPolicy#None",
            SecurityPolicy::Basic256Sha256 => "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes128_Sha256_RsaOaep"
            }
            SecurityPolicy::Aes256Sha256RsaPss => {
                "http://opcfoundation.org/UA/SecurityPolicy#Aes256_Sha256_RsaPss"
            }
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
            SecurityPolicy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
        }
    }
}

/// `security_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum SecurityMode {
    None,
    Sign,
    SignAndEncrypt,
}

impl SecurityMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityMode::None => "None",
            SecurityMode::Sign => "Sign",
            SecurityMode::SignAndEncrypt => "SignAndEncrypt",
        }
    }
}

/// How a tag is acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcquisitionMode {
    /// Monitored items in a subscription: the server reports changes.
    #[default]
    Subscription,
    /// Read service calls at the scan rate, many nodes per call.
    Poll,
}

/// Server-side data change filter of a monitored item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadbandType {
    #[default]
    None,
    /// Report when the value moved by more than `deadband_value`.
    Absolute,
    /// Report when it moved by more than `deadband_value` percent of the
    /// node's EURange (AnalogItemType variables only).
    Percent,
}

/// How an array value becomes samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrayMode {
    /// One string sample holding the array as JSON (`[1.5,-2.25,3]`).
    #[default]
    Json,
    /// One sample per element, named `tag[0]`, `tag[1]`, …
    Elements,
}

/// Which clock stamps a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampSource {
    /// The value's SourceTimestamp, else its ServerTimestamp, else the
    /// gateway's clock.
    #[default]
    Source,
    /// The ServerTimestamp, else the gateway's clock.
    Server,
    /// The gateway's clock when the value arrived.
    Gateway,
}

/// Device keys of `protocol = "opcua"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaDevice {
    #[serde(default)]
    pub security_policy: SecurityPolicy,
    /// Defaults to `None` with policy `None`, `SignAndEncrypt` otherwise.
    #[serde(default)]
    pub security_mode: Option<SecurityMode>,
    #[serde(default)]
    pub username: Option<String>,
    /// Use `${ENV}`: `password = "${PLANT_OPCUA_PASSWORD}"`.
    #[serde(default)]
    pub password: Option<String>,
    /// X.509 user identity: certificate (DER or PEM) and private key (PEM).
    #[serde(default)]
    pub user_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub user_key_file: Option<PathBuf>,
    /// Client certificate store; filled with `<data_dir>/pki/opcua` at load.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// Trust every server certificate (logged as a warning at start).
    #[serde(default)]
    pub trust_server_certs: bool,
    #[serde(default = "d_app_name")]
    pub application_name: String,
    /// Defaults to `urn:gateway-rust:<gateway_id>` (filled at load); it is
    /// written into the client certificate created on first start.
    #[serde(default)]
    pub application_uri: Option<String>,
    #[serde(default)]
    pub mode: AcquisitionMode,
    /// Default sampling interval of monitored items (default: the tag's
    /// publishing interval, i.e. its scan rate; 0 = as fast as the server can).
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub sampling_interval: Option<Duration>,
    /// Notifications the server keeps per monitored item between publishes.
    #[serde(default = "d_queue")]
    pub queue_size: u32,
    #[serde(default = "yes")]
    pub discard_oldest: bool,
    /// Nodes per Read request in poll mode.
    #[serde(default = "d_per_read")]
    pub max_nodes_per_read: u32,
    /// Monitored items per CreateMonitoredItems request.
    #[serde(default = "d_per_create")]
    pub max_items_per_request: u32,
    /// Session timeout requested from the server.
    #[serde(default = "d_session_timeout", deserialize_with = "units::duration")]
    pub session_timeout: Duration,
    /// A Read of the server state this often keeps the session (and the
    /// connection check) alive whatever the scan rates.
    #[serde(default = "d_keep_alive", deserialize_with = "units::duration")]
    pub keep_alive_interval: Duration,
    #[serde(default)]
    pub timestamp: TimestampSource,
    #[serde(default)]
    pub array_mode: ArrayMode,
}

fn yes() -> bool {
    true
}
fn d_app_name() -> String {
    "Gateway_Rust".into()
}
fn d_queue() -> u32 {
    10
}
fn d_per_read() -> u32 {
    500
}
fn d_per_create() -> u32 {
    1000
}
fn d_session_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_keep_alive() -> Duration {
    Duration::from_secs(10)
}

impl Default for OpcuaDevice {
    /// The defaults of a device file without OPC UA keys (anonymous,
    /// security None, subscriptions; `pki_dir` and `application_uri` unset).
    fn default() -> OpcuaDevice {
        OpcuaDevice {
            security_policy: SecurityPolicy::None,
            security_mode: None,
            username: None,
            password: None,
            user_cert_file: None,
            user_key_file: None,
            pki_dir: None,
            trust_server_certs: false,
            application_name: d_app_name(),
            application_uri: None,
            mode: AcquisitionMode::Subscription,
            sampling_interval: None,
            queue_size: d_queue(),
            discard_oldest: true,
            max_nodes_per_read: d_per_read(),
            max_items_per_request: d_per_create(),
            session_timeout: d_session_timeout(),
            keep_alive_interval: d_keep_alive(),
            timestamp: TimestampSource::Source,
            array_mode: ArrayMode::Json,
        }
    }
}

impl OpcuaDevice {
    /// The effective security mode.
    pub fn mode_of_security(&self) -> SecurityMode {
        match (self.security_mode, self.security_policy) {
            (Some(m), _) => m,
            (None, SecurityPolicy::None) => SecurityMode::None,
            (None, _) => SecurityMode::SignAndEncrypt,
        }
    }
}

/// Tag keys of `protocol = "opcua"`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpcuaTag {
    #[serde(default)]
    pub mode: Option<AcquisitionMode>,
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub sampling_interval: Option<Duration>,
    #[serde(default)]
    pub queue_size: Option<u32>,
    #[serde(default)]
    pub discard_oldest: Option<bool>,
    /// Server-side data change filter (the common `deadband` key filters
    /// in the gateway, after the server).
    #[serde(default)]
    pub deadband_type: DeadbandType,
    #[serde(default)]
    pub deadband_value: Option<f64>,
    #[serde(default)]
    pub array_mode: Option<ArrayMode>,
}

/// The namespace part of a node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Namespace {
    Index(u16),
    /// `nsu=`: looked up in the server's namespace array per session.
    Uri(String),
}

/// The identifier part of a node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeIdentifier {
    Numeric(u32),
    String(String),
    Guid([u8; 16]),
    Opaque(Vec<u8>),
}

/// A parsed node id (OPC UA Part 6, 5.3.1.10 string form).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    pub namespace: Namespace,
    pub identifier: NodeIdentifier,
}

impl NodeAddress {
    /// `ns=2;s=Machine/Temp`, `ns=3;i=1001`, `ns=1;g=<uuid>`,
    /// `ns=1;b=<base64>`, `nsu=urn:x;s=…`, or `i=2258` (namespace 0).
    pub fn parse(s: &str) -> Result<NodeAddress, String> {
        let t = s.trim();
        let (namespace, rest) = if let Some(r) = t.strip_prefix("nsu=") {
            let (uri, rest) = r
                .split_once(';')
                .ok_or_else(|| format!("{s:?}: expected nsu=<uri>;<id>"))?;
            if uri.is_empty() {
                return Err(format!("{s:?}: empty namespace URI"));
            }
            (Namespace::Uri(uri.to_string()), rest)
        } else if let Some(r) = t.strip_prefix("ns=") {
            let (n, rest) = r
                .split_once(';')
                .ok_or_else(|| format!("{s:?}: expected ns=<index>;<id>"))?;
            let n: u16 = n
                .parse()
                .map_err(|_| format!("{s:?}: namespace index {n:?} is not a number 0..=65535"))?;
            (Namespace::Index(n), rest)
        } else {
            (Namespace::Index(0), t)
        };
        let (kind, id) = rest.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected an identifier i=<number>, s=<string>, g=<guid> or b=<base64>")
        })?;
        let identifier =
            match kind {
                "i" => NodeIdentifier::Numeric(id.parse().map_err(|_| {
                    format!("{s:?}: numeric identifier {id:?} is not a number 0..=4294967295")
                })?),
                "s" => {
                    if id.is_empty() {
                        return Err(format!("{s:?}: empty string identifier"));
                    }
                    NodeIdentifier::String(id.to_string())
                }
                "g" => NodeIdentifier::Guid(
                    *uuid::Uuid::parse_str(id)
                        .map_err(|e| format!("{s:?}: bad GUID {id:?}: {e}"))?
                        .as_bytes(),
                ),
                "b" => {
                    use base64::Engine;
                    let b = base64::engine::general_purpose::STANDARD
                        .decode(id)
                        .map_err(|e| format!("{s:?}: bad base64 identifier {id:?}: {e}"))?;
                    if b.is_empty() {
                        return Err(format!("{s:?}: empty opaque identifier"));
                    }
                    NodeIdentifier::Opaque(b)
                }
                other => {
                    return Err(format!(
                        "{s:?}: unknown identifier type {other:?}; expected i, s, g or b"
                    ))
                }
            };
        Ok(NodeAddress {
            namespace,
            identifier,
        })
    }
}

/// Where an `opc.tcp://` endpoint is (for logs and the client-id checks).
pub fn check_endpoint(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("opc.tcp://")
        .ok_or_else(|| format!("{url:?}: an OPC UA endpoint starts with opc.tcp://"))?;
    let host_port = rest.split('/').next().unwrap_or("");
    if host_port.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    let port = if let Some(r) = host_port.strip_prefix('[') {
        let (_, after) = r
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed '['"))?;
        after.strip_prefix(':')
    } else {
        host_port.rsplit_once(':').map(|(_, p)| p)
    };
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err(format!("{url:?}: bad port {p:?}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        let a = NodeAddress::parse("ns=2;s=Machine/Temp").unwrap();
        assert_eq!(a.namespace, Namespace::Index(2));
        assert_eq!(a.identifier, NodeIdentifier::String("Machine/Temp".into()));
        // `;` and `=` may appear inside a string identifier.
        let a = NodeAddress::parse("ns=2;s=a;b=c").unwrap();
        assert_eq!(a.identifier, NodeIdentifier::String("a;b=c".into()));
        assert_eq!(
            NodeAddress::parse("ns=3;i=1001").unwrap().identifier,
            NodeIdentifier::Numeric(1001)
        );
        assert_eq!(
            NodeAddress::parse("i=2258").unwrap().namespace,
            Namespace::Index(0)
        );
        let g = NodeAddress::parse("ns=1;g=6f1a2b3c-0000-4000-8000-000000000001").unwrap();
        assert!(matches!(g.identifier, NodeIdentifier::Guid(b) if b[0] == 0x6f && b[15] == 1));
        assert_eq!(
            NodeAddress::parse("ns=1;b=AQID").unwrap().identifier,
            NodeIdentifier::Opaque(vec![1, 2, 3])
        );
        let u = NodeAddress::parse("nsu=urn:plant:line1;i=7").unwrap();
        assert_eq!(u.namespace, Namespace::Uri("urn:plant:line1".into()));
        for bad in [
            "ns=70000;i=1",
            "ns=x;i=1",
            "ns=2;i=-1",
            "ns=2;i=4294967296",
            "ns=2;s=",
            "ns=2;g=not-a-guid",
            "ns=2;b=!!",
            "ns=2;x=1",
            "ns=2",
            "Machine/Temp",
            "nsu=;i=1",
        ] {
            assert!(NodeAddress::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn default_matches_an_empty_device_file() {
        let parsed: OpcuaDevice = toml::from_str("").unwrap();
        assert_eq!(parsed, OpcuaDevice::default());
    }

    #[test]
    fn endpoints() {
        assert!(check_endpoint("opc.tcp://127.0.0.1:4840/path").is_ok());
        assert!(check_endpoint("opc.tcp://plc").is_ok());
        assert!(check_endpoint("opc.tcp://[::1]:4840").is_ok());
        assert!(check_endpoint("http://plc:4840").is_err());
        assert!(check_endpoint("opc.tcp://plc:0").is_err());
        assert!(check_endpoint("opc.tcp://plc:x/").is_err());
        assert!(check_endpoint("opc.tcp:///x").is_err());
    }
}
