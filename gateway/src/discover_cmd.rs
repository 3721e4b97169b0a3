//! `gateway discover opcua URL`: browse an OPC UA server and print a device
//! file (ready-to-paste `[[tags]]` with data types and access), or with
//! `--endpoints` the endpoints and security policies it offers.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use config::{OpcuaDevice, SecurityMode, SecurityPolicy};
use drivers::opcua::discover::{self, BrowseOptions, Variable};

use crate::Failure;

#[derive(Subcommand)]
pub enum DiscoverCmd {
    /// Browse an OPC UA server (opc.tcp://host:port/path).
    Opcua(OpcuaArgs),
}

#[derive(Args)]
pub struct OpcuaArgs {
    /// Endpoint URL, e.g. opc.tcp://127.0.0.1:4840/
    url: String,
    /// List the endpoints and security policies instead of browsing.
    #[arg(long)]
    endpoints: bool,
    /// Levels of Objects/Variables below the root to walk.
    #[arg(long, default_value_t = 5)]
    depth: usize,
    /// Stop after browsing this many nodes.
    #[arg(long, default_value_t = 10_000)]
    max_nodes: usize,
    /// Node to start from (default: the Objects folder, i=85).
    #[arg(long)]
    root: Option<String>,
    /// Device name written into the output.
    #[arg(long, default_value = "discovered")]
    name: String,
    /// None, Basic256Sha256, Aes128_Sha256_RsaOaep, Aes256_Sha256_RsaPss.
    #[arg(long, default_value = "None")]
    security_policy: String,
    /// None, Sign, SignAndEncrypt (default: SignAndEncrypt with a policy).
    #[arg(long)]
    security_mode: Option<String>,
    #[arg(long)]
    username: Option<String>,
    /// Environment variable holding the password (never on the command line).
    #[arg(long, requires = "username")]
    password_env: Option<String>,
    /// Client certificate store (created if missing; use the gateway's
    /// `<data_dir>/pki/opcua` to reuse its certificate and trust list).
    #[arg(long, default_value = "pki/opcua")]
    pki_dir: PathBuf,
    /// Trust unknown server certificates (written to <pki-dir>/trusted).
    #[arg(long)]
    trust_server_certs: bool,
    /// Application URI of the client certificate created in --pki-dir
    /// (with the gateway's pki_dir: its `urn:gateway-rust:<gateway_id>`).
    #[arg(long, default_value = "urn:gateway-rust:discover")]
    application_uri: String,
    /// Per-request timeout, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub fn run(cmd: DiscoverCmd) -> Result<(), Failure> {
    let DiscoverCmd::Opcua(a) = cmd;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    rt.block_on(opcua(a)).map_err(Failure::Runtime)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, v: &str) -> anyhow::Result<T> {
    T::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(
        v,
    ))
    .map_err(|e| anyhow!("--{what} {v:?}: {e}"))
}

async fn opcua(a: OpcuaArgs) -> anyhow::Result<()> {
    config::opcua::check_endpoint(&a.url).map_err(|e| anyhow!(e))?;
    if a.endpoints {
        let eps = discover::endpoints(&a.url, a.timeout, &a.pki_dir)
            .await
            .map_err(|e| anyhow!(e))?;
        println!(
            "{:<44} {:<22} {:<15} {:>5}  USER TOKENS",
            "URL", "SECURITY POLICY", "MODE", "LEVEL"
        );
        for e in &eps {
            println!(
                "{:<44} {:<22} {:<15} {:>5}  {}",
                e.url,
                e.security_policy,
                e.security_mode,
                e.security_level,
                e.user_tokens.join(",")
            );
        }
        return Ok(());
    }
    let policy: SecurityPolicy = parse("security-policy", &a.security_policy)?;
    let mode: Option<SecurityMode> = a
        .security_mode
        .as_deref()
        .map(|m| parse("security-mode", m))
        .transpose()?;
    let password = match &a.password_env {
        Some(var) => Some(std::env::var(var).with_context(|| format!("--password-env: ${var} is not set"))?),
        None => None,
    };
    if a.username.is_some() && password.is_none() {
        return Err(anyhow!("--username needs --password-env VAR"));
    }
    let root = a
        .root
        .as_deref()
        .map(config::NodeAddress::parse)
        .transpose()
        .map_err(|e| anyhow!("--root: {e}"))?;
    let device = OpcuaDevice {
        security_policy: policy,
        security_mode: mode,
        username: a.username.clone(),
        password,
        pki_dir: Some(a.pki_dir.clone()),
        trust_server_certs: a.trust_server_certs,
        application_uri: Some(a.application_uri.clone()),
        ..OpcuaDevice::default()
    };
    let vars = discover::browse(&BrowseOptions {
        url: a.url.clone(),
        device: device.clone(),
        timeout: a.timeout,
        root,
        max_depth: a.depth.max(1),
        max_nodes: a.max_nodes.max(1),
    })
    .await
    .map_err(|e| anyhow!(e))?;
    print!("{}", device_file(&a, &device, &vars));
    Ok(())
}

/// A TOML basic string (JSON string escapes are valid TOML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Tag name from a browse path: names joined with `.`, whitespace as `_`.
fn tag_name(v: &Variable) -> String {
    let name: String = v
        .path
        .join(".")
        .chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    // At most 120 bytes (tag names are limited to 128), on a char boundary,
    // leaving room for a `_N` suffix.
    let mut end = name.len().min(120);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let name = name[..end].trim().to_string();
    if name.is_empty() {
        v.node_id.clone()
    } else {
        name
    }
}

/// Text for a `#` comment: one line.
fn comment(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn device_file(a: &OpcuaArgs, d: &OpcuaDevice, vars: &[Variable]) -> String {
    let mut out = String::new();
    let usable = vars.iter().filter(|v| v.data_type.is_some()).count();
    let _ = writeln!(
        out,
        "# Device file written by `gateway discover opcua {}`: {usable} variables\n\
         # (depth {}). Review it: name the device, keep the tags you need.",
        a.url, a.depth
    );
    let _ = writeln!(out, "name = {}", q(&a.name));
    let _ = writeln!(out, "protocol = \"opcua\"");
    let _ = writeln!(out, "endpoint = {}", q(&a.url));
    if d.security_policy != SecurityPolicy::None {
        let _ = writeln!(out, "security_policy = {}", q(d.security_policy.as_str()));
        let _ = writeln!(out, "security_mode = {}", q(d.mode_of_security().as_str()));
    }
    if let Some(u) = &d.username {
        let _ = writeln!(out, "username = {}", q(u));
        let var = a.password_env.as_deref().unwrap_or("OPCUA_PASSWORD");
        let _ = writeln!(out, "password = \"${{{var}}}\"");
    }
    let mut seen = std::collections::HashSet::new();
    for v in vars {
        let Some(dt) = v.data_type else {
            let _ = writeln!(
                out,
                "\n# {} ({}): data type {} has no gateway equivalent",
                comment(&v.path.join("/")),
                comment(&v.node_id),
                comment(&v.data_type_name)
            );
            continue;
        };
        // Tag addresses are at most 255 characters (seed tags.address), and
        // a string id with edge whitespace would not survive parsing.
        if v.node_id.chars().count() > 255
            || config::NodeAddress::parse(&v.node_id).is_err()
            || v.node_id.trim() != v.node_id
        {
            let _ = writeln!(
                out,
                "\n# {}: node id {} cannot be a tag address (too long or edge whitespace)",
                comment(&v.path.join("/")),
                comment(&v.node_id)
            );
            continue;
        }
        let base = tag_name(v);
        let mut name = base.clone();
        let mut n = 2;
        while !seen.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        let _ = writeln!(out, "\n[[tags]]");
        let _ = writeln!(out, "name = {}", q(&name));
        let _ = writeln!(out, "address = {}", q(&v.node_id));
        let _ = writeln!(out, "data_type = {}", q(&format!("{dt:?}")));
        if v.writable {
            let _ = writeln!(out, "access = \"ReadWrite\"");
        }
        if v.display_name != v.path.last().cloned().unwrap_or_default() && !v.display_name.is_empty() {
            let _ = writeln!(out, "description = {}", q(&v.display_name));
        }
        if v.array {
            let _ = writeln!(
                out,
                "# an array: one JSON string sample (array_mode = \"elements\" for one sample per element)"
            );
        }
    }
    out
}
