//! The audit trail: operator actions that change the gateway's state are
//! recorded as events on the frame bus, so they reach `audit_logs` through
//! the PostgreSQL store's cursor (and survive a database outage in the WAL)
//! like every other frame.
//!
//! - A tag write is recorded by its `COMMAND_RESULT` event (see
//!   [`crate::commands`]), which carries the actor's attributes.
//! - Alert actions (acknowledge, suppress, unsuppress) are `AUDIT` events
//!   the alert engine commits together with their effect ([`crate::alerts`]).
//! - Any other action (a configuration reload, …) is an `AUDIT` event:
//!   attributes `action`, `resource_type`, `resource`, `actor` (plus
//!   `client_ip`, `user_agent` for HTTP), `status` "ok" or "error",
//!   `message` the error.

use std::collections::HashMap;
use std::net::IpAddr;

use frame_bus::FrameBus;
use proto::{EventFrame, EventKind, FrameType, Message};

/// Who asked for an action.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// `http`, `sighup`, … (also the `origin` of a command).
    pub origin: String,
    pub client_ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl Actor {
    pub fn new(origin: &str) -> Actor {
        Actor {
            origin: origin.to_string(),
            ..Actor::default()
        }
    }

    /// Adds `actor`, `client_ip` and `user_agent` to an event's attributes.
    pub fn annotate(&self, attributes: &mut HashMap<String, String>) {
        attributes.insert("actor".into(), self.origin.clone());
        if let Some(ip) = self.client_ip {
            attributes.insert("client_ip".into(), ip.to_string());
        }
        if let Some(ua) = &self.user_agent {
            attributes.insert("user_agent".into(), ua.clone());
        }
    }
}

/// What was done to what.
pub struct Action<'a> {
    /// e.g. `config.reload`.
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource: &'a str,
    /// `Err(message)` when the action failed.
    pub outcome: Result<(), String>,
    /// Extra attributes (stored in the row's `details`).
    pub details: Vec<(String, String)>,
}

/// The `AUDIT` event recording `a` by `actor`.
pub fn event(actor: &Actor, a: Action<'_>) -> EventFrame {
    let mut attributes: HashMap<String, String> = a.details.into_iter().collect();
    attributes.insert("action".into(), a.action.into());
    attributes.insert("resource_type".into(), a.resource_type.into());
    attributes.insert("resource".into(), a.resource.into());
    actor.annotate(&mut attributes);
    let (status, message) = match &a.outcome {
        Ok(()) => ("ok", String::new()),
        Err(m) => ("error", m.clone()),
    };
    EventFrame {
        event_id: uuid::Uuid::new_v4().to_string(),
        kind: EventKind::Audit as i32,
        status: status.into(),
        message,
        event_ts_ns: crate::now_ns(),
        attributes,
        ..EventFrame::default()
    }
}

/// Publishes an `AUDIT` event. A bus that refuses it (disk full) is logged:
/// the action itself already happened and is not undone.
pub async fn record(bus: &FrameBus, actor: &Actor, a: Action<'_>) {
    let action = a.action;
    let e = event(actor, a);
    if let Err(e) = bus.publish(FrameType::Event, e.encode_to_vec()).await {
        tracing::warn!(action, error = %e, "recording an audit event on the bus failed");
    }
}
