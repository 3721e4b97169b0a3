//! Which tag is acquired how: subscription groups (one OPC UA subscription
//! per distinct publishing interval) and poll groups (one Read cycle per
//! distinct scan rate), built once per device from its config.

use std::time::Duration;

use config::{
    AcquisitionMode, ArrayMode, DeadbandType, DeviceConfig, Namespace, NodeAddress, NodeIdentifier,
    OpcuaDevice, TagOptions,
};
use opcua::types::{ByteString, Guid, Identifier, NodeId, UAString};

/// One enabled, readable tag.
#[derive(Debug, Clone)]
pub struct Item {
    /// Index into `device.tags`.
    pub tag: usize,
    pub address: NodeAddress,
    pub array_mode: ArrayMode,
    pub sampling_interval: Duration,
    pub queue_size: u32,
    pub discard_oldest: bool,
    pub deadband: (DeadbandType, f64),
}

/// Tags sharing one subscription (same publishing interval) or one poll
/// timer (same scan rate).
#[derive(Debug, Clone)]
pub struct Group {
    pub interval: Duration,
    pub items: Vec<Item>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub subscriptions: Vec<Group>,
    pub polls: Vec<Group>,
}

impl Plan {
    pub fn new(device: &DeviceConfig, opts: &OpcuaDevice) -> Result<Plan, String> {
        let mut plan = Plan::default();
        for (i, t) in device.tags.iter().enumerate() {
            // Write-only tags are never read.
            if !t.enabled || t.access == config::Access::Write {
                continue;
            }
            let TagOptions::Opcua(o) = &t.driver else {
                return Err(format!("tag {:?} is not an OPC UA tag", t.name));
            };
            let address = NodeAddress::parse(&t.address).map_err(|e| format!("tag {:?}: {e}", t.name))?;
            let interval = t.effective_scan(device);
            let item = Item {
                tag: i,
                address,
                array_mode: o.array_mode.unwrap_or(opts.array_mode),
                sampling_interval: o.sampling_interval.or(opts.sampling_interval).unwrap_or(interval),
                queue_size: o.queue_size.unwrap_or(opts.queue_size),
                discard_oldest: o.discard_oldest.unwrap_or(opts.discard_oldest),
                deadband: (o.deadband_type, o.deadband_value.unwrap_or(0.0)),
            };
            let groups = match o.mode.unwrap_or(opts.mode) {
                AcquisitionMode::Subscription => &mut plan.subscriptions,
                AcquisitionMode::Poll => &mut plan.polls,
            };
            match groups.iter_mut().find(|g| g.interval == interval) {
                Some(g) => g.items.push(item),
                None => groups.push(Group {
                    interval,
                    items: vec![item],
                }),
            }
        }
        plan.subscriptions.sort_by_key(|g| g.interval);
        plan.polls.sort_by_key(|g| g.interval);
        Ok(plan)
    }

    /// Namespace URIs (`nsu=`) to resolve on each session.
    pub fn namespace_uris(&self) -> Vec<String> {
        let mut uris: Vec<String> = self
            .subscriptions
            .iter()
            .chain(&self.polls)
            .flat_map(|g| &g.items)
            .filter_map(|i| match &i.address.namespace {
                Namespace::Uri(u) => Some(u.clone()),
                Namespace::Index(_) => None,
            })
            .collect();
        uris.sort();
        uris.dedup();
        uris
    }

    pub fn item_count(&self) -> usize {
        self.subscriptions
            .iter()
            .chain(&self.polls)
            .map(|g| g.items.len())
            .sum()
    }
}

/// The node id of `a`, with `nsu=` URIs looked up in `uris` (the server's
/// namespace array as resolved for this session); `None` when the server
/// does not know the URI.
pub fn node_id(a: &NodeAddress, resolve: impl Fn(&str) -> Option<u16>) -> Option<NodeId> {
    let ns = match &a.namespace {
        Namespace::Index(n) => *n,
        Namespace::Uri(u) => resolve(u)?,
    };
    let id = match &a.identifier {
        NodeIdentifier::Numeric(n) => Identifier::Numeric(*n),
        NodeIdentifier::String(s) => Identifier::String(UAString::from(s.as_str())),
        NodeIdentifier::Guid(b) => Identifier::Guid(Guid::from(uuid::Uuid::from_bytes(*b))),
        NodeIdentifier::Opaque(b) => Identifier::ByteString(ByteString::from(b.clone())),
    };
    Some(NodeId::new(ns, id))
}
