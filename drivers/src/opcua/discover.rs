//! `gateway discover opcua`: what a server offers, for writing device files.
//!
//! - [`endpoints`]: GetEndpoints — URL, security policy and mode, user
//!   token types, security level, certificate thumbprint.
//! - [`browse`]: a depth-limited walk of hierarchical references from a
//!   root (default the Objects folder, skipping the Server object), then
//!   one batch of Reads for the DataType, ValueRank and UserAccessLevel of
//!   each variable found. Variables whose data type has no gateway
//!   equivalent are returned with `data_type: None` (the CLI prints them
//!   as comments).

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use config::{DataType, OpcuaDevice};
use opcua::client::{IdentityToken, Session};
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDirection, ByteString, NodeClass, NodeId, ReadValueId,
    ReferenceTypeId, StatusCode, TimestampsToReturn, Variant,
};

use super::client;

/// One endpoint of a server.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub url: String,
    /// `None`, `Basic256Sha256`, … (the part after `#` of the policy URI).
    pub security_policy: String,
    pub security_mode: String,
    pub security_level: u8,
    /// `Anonymous`, `UserName`, `Certificate`, `IssuedToken`.
    pub user_tokens: Vec<String>,
    pub server_certificate_bytes: usize,
}

/// Lists the endpoints of `url` (GetEndpoints over an unsecured channel).
pub async fn endpoints(
    url: &str,
    timeout: Duration,
    pki_dir: &std::path::Path,
) -> Result<Vec<Endpoint>, String> {
    let o = OpcuaDevice {
        pki_dir: Some(pki_dir.to_path_buf()),
        application_uri: Some("urn:gateway-rust:discover".into()),
        ..OpcuaDevice::default()
    };
    let c = client::build("discover", url, timeout, Duration::ZERO, &o)?;
    let eps = client::endpoints(&c, url, timeout)
        .await
        .map_err(|e| e.to_string())?;
    Ok(eps
        .into_iter()
        .map(|e| Endpoint {
            url: e.endpoint_url.as_ref().to_string(),
            security_policy: e
                .security_policy_uri
                .as_ref()
                .rsplit('#')
                .next()
                .unwrap_or("")
                .to_string(),
            security_mode: e.security_mode.to_string(),
            security_level: e.security_level,
            user_tokens: e
                .user_identity_tokens
                .unwrap_or_default()
                .iter()
                .map(|t| format!("{:?}", t.token_type))
                .collect(),
            server_certificate_bytes: e.server_certificate.value.as_ref().map_or(0, Vec::len),
        })
        .collect())
}

/// One variable found by [`browse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    /// `ns=2;s=Machine/Temp` (the form tag addresses use).
    pub node_id: String,
    /// Browse names from the root (without namespace prefixes).
    pub path: Vec<String>,
    pub display_name: String,
    pub data_type: Option<DataType>,
    /// The server's name for the data type (`Double`, `i=887` …).
    pub data_type_name: String,
    pub array: bool,
    pub writable: bool,
}

/// What to browse.
#[derive(Debug, Clone)]
pub struct BrowseOptions {
    pub url: String,
    pub device: OpcuaDevice,
    pub timeout: Duration,
    /// Default `i=85` (Objects).
    pub root: Option<config::NodeAddress>,
    pub max_depth: usize,
    pub max_nodes: usize,
}

/// The address form of a node id (`ns=` omitted for namespace 0).
pub fn address(n: &NodeId) -> String {
    use opcua::types::Identifier;
    let id = match &n.identifier {
        Identifier::Numeric(v) => format!("i={v}"),
        Identifier::String(s) => format!("s={}", s.as_ref()),
        Identifier::Guid(g) => format!("g={}", uuid::Uuid::from(g.clone()).hyphenated()),
        Identifier::ByteString(b) => format!("b={}", b.as_base64()),
    };
    if n.namespace == 0 {
        id
    } else {
        format!("ns={};{id}", n.namespace)
    }
}

/// The gateway type of an OPC UA built-in data type node (`ns=0;i=1..15`).
pub fn data_type(n: &NodeId) -> Option<DataType> {
    use opcua::types::Identifier;
    if n.namespace != 0 {
        return None;
    }
    let Identifier::Numeric(i) = n.identifier else {
        return None;
    };
    Some(match i {
        1 => DataType::Boolean,
        2 => DataType::Int8,
        3 => DataType::UInt8,
        4 => DataType::Int16,
        5 => DataType::UInt16,
        6 => DataType::Int32,
        7 => DataType::UInt32,
        8 => DataType::Int64,
        9 => DataType::UInt64,
        10 => DataType::Float,
        11 => DataType::Double,
        12 => DataType::String,
        13 => DataType::DateTime,
        15 => DataType::ByteArray,
        // LocalizedText reads as its text.
        21 => DataType::String,
        _ => return None,
    })
}

fn builtin_name(n: &NodeId) -> String {
    use opcua::types::Identifier;
    let names = [
        "",
        "Boolean",
        "SByte",
        "Byte",
        "Int16",
        "UInt16",
        "Int32",
        "UInt32",
        "Int64",
        "UInt64",
        "Float",
        "Double",
        "String",
        "DateTime",
        "Guid",
        "ByteString",
        "XmlElement",
        "NodeId",
        "ExpandedNodeId",
        "StatusCode",
        "QualifiedName",
        "LocalizedText",
        "Structure",
        "DataValue",
        "BaseDataType",
        "DiagnosticInfo",
    ];
    match (&n.identifier, n.namespace) {
        (Identifier::Numeric(i), 0) if (*i as usize) < names.len() && *i > 0 => {
            names[*i as usize].to_string()
        }
        _ => address(n),
    }
}

/// Browses the server of `o` and returns its variables, in browse order.
pub async fn browse(o: &BrowseOptions) -> Result<Vec<Variable>, String> {
    let c = client::build("discover", &o.url, o.timeout, Duration::ZERO, &o.device)?;
    let identity: IdentityToken = client::identity(&o.device)?;
    let conn = client::connect(&c, &o.url, o.timeout, &o.device, identity)
        .await
        .map_err(|e| e.to_string())?;
    let r = walk(&conn.session, o).await;
    conn.close(o.timeout).await;
    r
}

async fn walk(session: &Session, o: &BrowseOptions) -> Result<Vec<Variable>, String> {
    let objects = NodeId::new(0, 85u32);
    let server = NodeId::new(0, 2253u32);
    let root = match &o.root {
        Some(a) => super::plan::node_id(a, |_| None).ok_or("a --root with nsu= is not supported; use ns=")?,
        None => objects.clone(),
    };
    let mut found: Vec<(NodeId, Vec<String>, String)> = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::from([root.clone()]);
    let mut queue: VecDeque<(NodeId, Vec<String>, usize)> = VecDeque::from([(root, Vec::new(), 0)]);
    let mut visited = 0usize;
    while let Some((node, path, depth)) = queue.pop_front() {
        if visited >= o.max_nodes {
            break;
        }
        visited += 1;
        let refs = browse_all(session, &node, o.timeout).await?;
        for r in refs {
            let id = r.node_id.node_id;
            if id == server || !seen.insert(id.clone()) {
                continue;
            }
            let mut p = path.clone();
            p.push(r.browse_name.name.as_ref().to_string());
            match r.node_class {
                NodeClass::Variable => {
                    found.push((id.clone(), p.clone(), r.display_name.text.as_ref().to_string()));
                    // Variables can have children (properties, components).
                    if depth + 1 < o.max_depth {
                        queue.push_back((id, p, depth + 1));
                    }
                }
                NodeClass::Object if depth + 1 < o.max_depth => queue.push_back((id, p, depth + 1)),
                _ => {}
            }
        }
    }
    // DataType, ValueRank and UserAccessLevel of each variable.
    let mut out = Vec::with_capacity(found.len());
    // 100 variables × 3 attributes per Read: within common MaxNodesPerRead limits.
    for chunk in found.chunks(100) {
        let ids: Vec<ReadValueId> = chunk
            .iter()
            .flat_map(|(n, _, _)| {
                [
                    AttributeId::DataType,
                    AttributeId::ValueRank,
                    AttributeId::UserAccessLevel,
                ]
                .map(|a| super::read_value_id(n.clone(), a))
            })
            .collect();
        let values = tokio::time::timeout(o.timeout, session.read(&ids, TimestampsToReturn::Neither, 0.0))
            .await
            .map_err(|_| "Read of variable attributes timed out".to_string())?
            .map_err(|e| format!("Read of variable attributes failed: {e}"))?;
        if values.len() != ids.len() {
            return Err(format!(
                "Read answered {} values for {} attributes",
                values.len(),
                ids.len()
            ));
        }
        for ((n, path, display), v) in chunk.iter().zip(values.chunks(3)) {
            let dt = match &v[0].value {
                Some(Variant::NodeId(d)) => Some((**d).clone()),
                _ => None,
            };
            let rank = match &v[1].value {
                Some(Variant::Int32(r)) => *r,
                _ => -1,
            };
            let access = match &v[2].value {
                Some(Variant::Byte(a)) => *a,
                _ => 1,
            };
            out.push(Variable {
                node_id: address(n),
                path: path.clone(),
                display_name: display.clone(),
                data_type: dt.as_ref().and_then(data_type),
                data_type_name: dt.as_ref().map_or("?".into(), builtin_name),
                // -1 scalar, -2 any, -3 scalar or 1-D, 0 one or more dims, >0 that many.
                array: rank >= 0,
                writable: access & 0x02 != 0,
            });
        }
    }
    Ok(out)
}

/// Forward hierarchical references of `node` (following continuation points).
async fn browse_all(
    session: &Session,
    node: &NodeId,
    timeout: Duration,
) -> Result<Vec<opcua::types::ReferenceDescription>, String> {
    let desc = BrowseDescription {
        node_id: node.clone(),
        browse_direction: BrowseDirection::Forward,
        reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
        include_subtypes: true,
        node_class_mask: (NodeClass::Object as u32) | (NodeClass::Variable as u32),
        result_mask: 0x3f,
    };
    let mut results = tokio::time::timeout(timeout, session.browse(&[desc], 1000, None))
        .await
        .map_err(|_| format!("Browse of {} timed out", address(node)))?
        .map_err(|e| format!("Browse of {} failed: {e}", address(node)))?;
    let mut refs = Vec::new();
    let mut rounds = 0;
    while let Some(r) = results.pop() {
        if r.status_code.is_bad() {
            // A node the server will not browse is skipped, not fatal.
            if r.status_code != StatusCode::BadNodeIdUnknown {
                tracing::debug!(node = address(node), status = %r.status_code, "browse refused");
            }
            break;
        }
        refs.extend(r.references.unwrap_or_default());
        let cp: ByteString = r.continuation_point;
        if cp.is_null() || cp.value.as_ref().is_none_or(Vec::is_empty) || rounds > 1000 {
            break;
        }
        rounds += 1;
        results = tokio::time::timeout(timeout, session.browse_next(false, &[cp]))
            .await
            .map_err(|_| format!("BrowseNext of {} timed out", address(node)))?
            .map_err(|e| format!("BrowseNext of {} failed: {e}", address(node)))?;
    }
    Ok(refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_config_parser() {
        use opcua::types::{Guid, Identifier};
        let g = Guid::from(uuid::Uuid::parse_str("6f1a2b3c-0000-4000-8000-000000000001").unwrap());
        for n in [
            NodeId::new(2, "Machine/Temp"),
            NodeId::new(3, 1001u32),
            NodeId::new(0, 2258u32),
            NodeId::new(1, Identifier::Guid(g)),
            NodeId::new(1, Identifier::ByteString(ByteString::from(vec![1u8, 2, 3]))),
        ] {
            let a = address(&n);
            let parsed = config::NodeAddress::parse(&a).unwrap();
            assert_eq!(super::super::plan::node_id(&parsed, |_| None), Some(n), "{a}");
        }
    }
}
