//! `protocol = "modbus-tcp" | "modbus-rtu" | "modbus-rtu-over-tcp"`.
//!
//! One task per device polls the device's [`plan`]: each scan group has
//! its own timer whose next deadline is the previous deadline plus the
//! period (no drift); a poll that overruns skips the ticks it missed and
//! reports them. Each poll of a group publishes one `DataFrame` with a
//! sample for every tag of the group (deadband permitting).
//!
//! # Errors
//! - A Modbus exception on a request makes that request's samples BAD with
//!   `error_code` = the exception code; other requests go on. Exception 6
//!   (server device busy) is retried `busy_retries` times first.
//! - A timeout or connection failure makes the request's samples BAD
//!   (`error_code` [`TIMEOUT`] or [`CONNECTION`]) and fails the rest of the
//!   poll fast with the same code: the device is not there. The device's
//!   next poll waits for its retry policy (`retry_interval`, doubled per
//!   consecutive failure up to `max_retry_interval`); after `max_retries`
//!   such polls in a row the device is Offline, and Online again on the
//!   first poll it answers. Both changes are `DEVICE_STATUS_CHANGED` events.
//! - A reply that does not match the request (short, long, wrong function)
//!   gives [`MALFORMED`]; nothing from the wire can panic the driver.
//! - Every failed request is counted (`gateway_device_errors_total`). An
//!   exception or a malformed reply is also logged at warn level, once per
//!   burst per request (`burst_log`): a device that answers every
//!   poll with an error stays Online, so no status change would say so.
//!
//! Writes ([`crate::write`]) are served between polls: FC5 for a coil,
//! FC6 for one holding register, FC16 for several; writing one bit of a
//! register is refused (it would need a read-modify-write race).

pub mod codec;
pub mod link;
pub mod plan;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use config::{Access, DeviceConfig, DriverOptions, ModbusDevice, Protocol, Table, TagOptions};
use proto::Sample;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_modbus::prelude::{Request, Response};

use crate::burst_log::{BurstLog, LOG_EVERY};
use crate::pipeline::Pipeline;
use crate::sample::{self, now_ns, Deadband, Raw};
use crate::status::{status_event, Health};
use crate::write::{WriteQueue, WriteRequest, WriteResult, WriteStatus};
use crate::{DriverError, DriverHost, ErrorKind, PollError, PollReport};
use link::{CallError, Link, Transport};
use plan::{ReadRequest, ScanGroup};

/// `error_code` of a sample whose read timed out.
pub const TIMEOUT: i32 = -1;
/// `error_code` of a sample whose device could not be reached.
pub const CONNECTION: i32 = -2;
/// `error_code` of a sample whose reply was malformed or undecodable.
pub const MALFORMED: i32 = -3;
/// Modbus exception 6: the device asks to retry later.
const SERVER_BUSY: u8 = 6;
/// Exceptions 10 (gateway path unavailable) and 11 (gateway target device
/// failed to respond): the device behind a gateway is not there.
const GATEWAY_TARGET_ABSENT: [u8; 2] = [10, 11];

fn code(e: &CallError) -> i32 {
    match e {
        CallError::Exception(c) => i32::from(*c),
        CallError::Timeout => TIMEOUT,
        CallError::Connection(_) => CONNECTION,
        CallError::Protocol(_) => MALFORMED,
    }
}

fn poll_error(e: &CallError) -> PollError {
    let kind = match e {
        // The gateway answered for a device that did not: a connectivity problem.
        CallError::Exception(c) if GATEWAY_TARGET_ABSENT.contains(c) => ErrorKind::Connection,
        CallError::Exception(_) => ErrorKind::Exception,
        CallError::Timeout => ErrorKind::Timeout,
        CallError::Connection(_) => ErrorKind::Connection,
        CallError::Protocol(_) => ErrorKind::Protocol,
    };
    PollError { kind, code: code(e) }
}

/// The line a device is on.
pub fn transport(device: &DeviceConfig, opts: &ModbusDevice) -> Result<Transport, String> {
    Ok(match device.protocol {
        Protocol::ModbusTcp => Transport::Tcp(device.endpoint.clone()),
        Protocol::ModbusRtuOverTcp => Transport::RtuOverTcp(device.endpoint.clone()),
        Protocol::ModbusRtu => Transport::Rtu(opts.serial().ok_or("modbus-rtu device without `port`")?),
        Protocol::Simulator | Protocol::Mqtt | Protocol::Opcua => return Err("not a Modbus device".into()),
    })
}

/// The values a read request returned.
enum Data {
    Bits(Vec<bool>),
    Words(Vec<u16>),
}

struct GroupState {
    group: ScanGroup,
    next: Instant,
    /// Ticks skipped since the last poll, reported with the next one.
    skipped: u32,
}

struct Driver<H: DriverHost> {
    device: Arc<DeviceConfig>,
    opts: ModbusDevice,
    link: Arc<Link>,
    host: Arc<H>,
    deadbands: Vec<Deadband>,
    health: Health,
    /// No request before this instant (retry backoff).
    hold_until: Option<Instant>,
    /// Rate limit of the warning for exceptions and malformed replies,
    /// per request (table, start address).
    refusals: HashMap<(Table, u16), BurstLog>,
}

/// Runs one Modbus device until shutdown.
pub async fn run<H: DriverHost>(
    device: Arc<DeviceConfig>,
    host: H,
    mut shutdown: watch::Receiver<bool>,
    writes: WriteQueue,
) -> Result<(), DriverError> {
    let fail = |message: String| DriverError::Device {
        device: device.name.clone(),
        message,
    };
    let DriverOptions::Modbus(opts) = &device.driver else {
        return Err(fail("not a Modbus device".into()));
    };
    let plan = plan::plan(&device, opts).map_err(fail)?;
    let transport = transport(&device, opts).map_err(fail)?;
    let mut writes = writes.lock_owned().await;
    let mut writes_open = true;
    let host = Arc::new(host);
    let mut d = Driver {
        link: link::link(transport),
        opts: opts.clone(),
        deadbands: vec![Deadband::default(); device.tags.len()],
        health: Health::default(),
        hold_until: None,
        refusals: HashMap::new(),
        host: host.clone(),
        device: device.clone(),
    };
    let start = Instant::now();
    let mut groups: Vec<GroupState> = plan
        .groups
        .into_iter()
        .map(|group| GroupState {
            group,
            next: start,
            skipped: 0,
        })
        .collect();
    let mut pipeline = Pipeline::new(host);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let due = (0..groups.len()).min_by_key(|&i| groups[i].next);
        let deadline = due.map(|i| match d.hold_until {
            Some(h) => groups[i].next.max(h),
            None => groups[i].next,
        });
        tokio::select! {
            biased;
            r = shutdown.changed() => {
                if r.is_err() {
                    break;
                }
                continue;
            }
            w = writes.recv(), if writes_open => match w {
                Some(w) => d.write(w).await,
                // No sender left: nobody can ask for writes any more.
                None => writes_open = false,
            },
            _ = sleep_until(deadline) => {
                let Some(i) = due else { continue };
                let g = &mut groups[i];
                let skipped = std::mem::take(&mut g.skipped);
                d.poll(&g.group, &mut pipeline, skipped).await?;
                g.skipped = reschedule(g, d.hold_until);
            }
        }
    }
    pipeline.finish().await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Next deadline: previous deadline + period. Ticks already past (the
/// poll overran its period) are skipped and returned, to be reported; a
/// retry backoff (`hold_until`) also moves the deadline, uncounted.
fn reschedule(g: &mut GroupState, hold_until: Option<Instant>) -> u32 {
    let period = g.group.period;
    let now = Instant::now();
    g.next += period;
    let mut skipped = 0;
    if g.next <= now {
        let behind = now.duration_since(g.next).as_nanos() / period.as_nanos().max(1);
        skipped = u32::try_from(behind + 1).unwrap_or(u32::MAX);
        g.next += period.saturating_mul(skipped);
    }
    if let Some(h) = hold_until {
        while g.next < h {
            g.next += period;
        }
    }
    skipped
}

impl<H: DriverHost> Driver<H> {
    async fn call(&self, request: Request<'static>, requests: &mut u32) -> Result<Response, CallError> {
        let mut busy_left = self.opts.busy_retries;
        loop {
            *requests += 1;
            let r = self
                .link
                .call(self.opts.unit_id, request.clone(), self.device.timeout)
                .await;
            if !self.opts.pause_between_requests.is_zero() {
                tokio::time::sleep(self.opts.pause_between_requests).await;
            }
            match r {
                Err(CallError::Exception(SERVER_BUSY)) if busy_left > 0 => {
                    busy_left -= 1;
                    tokio::time::sleep(self.opts.busy_retry_interval).await;
                }
                r => return r,
            }
        }
    }

    async fn read(&self, r: &ReadRequest, requests: &mut u32) -> Result<Data, CallError> {
        let (address, count) = (r.address, r.count);
        let request = match r.table {
            Table::Coil => Request::ReadCoils(address, count),
            Table::DiscreteInput => Request::ReadDiscreteInputs(address, count),
            Table::Holding => Request::ReadHoldingRegisters(address, count),
            Table::Input => Request::ReadInputRegisters(address, count),
        };
        let n = usize::from(count);
        match self.call(request, requests).await? {
            // Bits come padded to whole bytes.
            Response::ReadCoils(mut b) | Response::ReadDiscreteInputs(mut b)
                if b.len() >= n && b.len() < n + 8 =>
            {
                b.truncate(n);
                Ok(Data::Bits(b))
            }
            Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) if w.len() == n => {
                Ok(Data::Words(w))
            }
            other => Err(CallError::Protocol(format!(
                "{} {address}+{count}: unexpected reply {}",
                r.table.as_str(),
                describe(&other)
            ))),
        }
    }

    /// Polls one scan group and publishes its frame.
    async fn poll(
        &mut self,
        group: &ScanGroup,
        pipeline: &mut Pipeline,
        skipped_ticks: u32,
    ) -> Result<(), DriverError> {
        let t0 = Instant::now();
        let mut requests = 0u32;
        let mut errors: Vec<PollError> = Vec::new();
        let mut answered = false;
        let mut down: Option<CallError> = None;
        let mut samples: Vec<Sample> = Vec::new();
        let mut suppressed = 0u32;
        for r in &group.requests {
            // Once the device did not answer, the rest of the poll fails fast.
            let (result, sent) = match &down {
                Some(e) => (Err(e.clone()), false),
                None => (self.read(r, &mut requests).await, true),
            };
            let ts = now_ns();
            match &result {
                // 10/11: a gateway in front answered that its target did not.
                Ok(_) | Err(CallError::Protocol(_)) => answered = true,
                Err(CallError::Exception(c)) if !GATEWAY_TARGET_ABSENT.contains(c) => answered = true,
                Err(e) => {
                    if down.is_none() {
                        tracing::debug!(device = self.device.name, error = %e, "device not answering");
                        down = Some(e.clone());
                    }
                }
            }
            if let (Err(e), true) = (&result, sent) {
                errors.push(poll_error(e));
                self.log_refusal(r, e);
            }
            for (i, p) in &r.tags {
                let Some(tag) = self.device.tags.get(*i) else {
                    continue;
                };
                let offset = usize::from(p.address - r.address);
                let s = match &result {
                    Ok(Data::Bits(b)) => match b.get(offset) {
                        Some(v) => sample::reading(tag, Raw::Bool(*v), ts),
                        None => sample::failed(tag, MALFORMED, ts),
                    },
                    Ok(Data::Words(w)) => {
                        let regs = w.get(offset..offset + usize::from(p.count)).unwrap_or(&[]);
                        match codec::decode(tag.data_type, p.byte_order, p.bit, regs) {
                            Ok(raw) => sample::reading(tag, raw, ts),
                            Err(_) => sample::failed(tag, MALFORMED, ts),
                        }
                    }
                    Err(e) => sample::failed(tag, code(e), ts),
                };
                let admit = self.deadbands.get_mut(*i).is_none_or(|db| db.admit(tag, &s));
                if admit {
                    samples.push(s);
                } else {
                    suppressed += 1;
                }
            }
        }
        let duration = t0.elapsed();
        if self.opts.close_connection_after_poll {
            self.link.close().await;
        }
        let status = self.health.record(answered, self.device.retry.max_retries);
        if answered {
            self.hold_until = None;
        } else {
            let delay = self.device.retry.delay(self.health.failures());
            self.hold_until = Some(Instant::now() + delay);
        }
        if let Some(online) = status {
            self.host.connection_changed(online);
            let reason = match &down {
                Some(e) if !online => e.to_string(),
                _ => String::new(),
            };
            tracing::info!(
                device = self.device.name,
                status = if online { "Online" } else { "Offline" },
                reason,
                "device status changed"
            );
            pipeline
                .send_event(status_event(&self.device.name, online, &reason, now_ns()))
                .await?;
        }
        let report = PollReport {
            duration,
            requests,
            suppressed,
            skipped_ticks,
            errors,
            ..PollReport::default()
        };
        pipeline
            .finish_poll(self.host.as_ref(), &self.device.name, samples, report)
            .await
    }

    /// Logs an exception or a malformed reply to a read, once per burst
    /// per request. A device that does not answer (timeout, connection,
    /// exceptions 10/11 of a gateway in front of it) is reported by its
    /// status change instead.
    fn log_refusal(&mut self, r: &ReadRequest, e: &CallError) {
        let answered = match e {
            CallError::Exception(c) => !GATEWAY_TARGET_ABSENT.contains(c),
            CallError::Protocol(_) => true,
            CallError::Timeout | CallError::Connection(_) => false,
        };
        if !answered {
            return;
        }
        let Some(failed) = self.refusals.entry((r.table, r.address)).or_default().note() else {
            return;
        };
        let tags: Vec<&str> = r
            .tags
            .iter()
            .filter_map(|(i, _)| self.device.tags.get(*i))
            .map(|t| t.name.as_str())
            .collect();
        tracing::warn!(
            device = self.device.name,
            table = r.table.as_str(),
            address = r.address,
            count = r.count,
            tags = tags.join(","),
            code = code(e),
            error = %e,
            failed,
            "Modbus read failed: exception or malformed reply; its tags are BAD (logged once per {LOG_EVERY:?} per request)"
        );
    }

    /// Serves one write request.
    async fn write(&self, w: WriteRequest) {
        let result = self.try_write(&w).await;
        let _ = w.reply.send(result);
    }

    async fn try_write(&self, w: &WriteRequest) -> WriteResult {
        let rejected = |m: String| WriteResult::failed(WriteStatus::Rejected, 0, m);
        let Some(tag) = self.device.tag(&w.tag) else {
            return rejected(format!("device {:?} has no tag {:?}", self.device.name, w.tag));
        };
        if tag.access == Access::Read {
            return rejected(format!("tag {:?} is read-only (access = \"Read\")", tag.name));
        }
        if !tag.enabled {
            return rejected(format!("tag {:?} is disabled", tag.name));
        }
        if let Some(v) = sample::numeric(&w.value) {
            if tag.min_value.is_some_and(|lo| v < lo) || tag.max_value.is_some_and(|hi| v > hi) {
                return rejected(format!(
                    "{v} is outside the tag's range {}..={}",
                    tag.min_value.map_or("".into(), |x| x.to_string()),
                    tag.max_value.map_or("".into(), |x| x.to_string())
                ));
            }
        }
        let TagOptions::Modbus(o) = &tag.driver else {
            return rejected("not a Modbus tag".into());
        };
        let point = match config::modbus::resolve(&self.opts, tag, o) {
            Ok(p) => p,
            Err((_, m)) => return rejected(m),
        };
        let raw = match sample::raw_for_write(tag, &w.value) {
            Ok(r) => r,
            Err(m) => return rejected(m),
        };
        let request = match (point.table, point.bit, &raw) {
            (Table::Coil, _, Raw::Bool(b)) => Request::WriteSingleCoil(point.address, *b),
            (Table::Holding, Some(_), _) => {
                return rejected(
                    "writing one bit of a register is not supported; write the whole register".into(),
                )
            }
            (Table::Holding, None, raw) => {
                match codec::encode(tag.data_type, point.byte_order, point.count, raw) {
                    Ok(regs) if regs.len() == 1 => Request::WriteSingleRegister(point.address, regs[0]),
                    Ok(regs) => Request::WriteMultipleRegisters(point.address, Cow::Owned(regs)),
                    Err(m) => return rejected(m),
                }
            }
            (t, _, _) => return rejected(format!("{} cannot be written", t.as_str())),
        };
        let mut requests = 0;
        match self.call(request, &mut requests).await {
            Ok(
                Response::WriteSingleCoil(..)
                | Response::WriteSingleRegister(..)
                | Response::WriteMultipleRegisters(..)
                | Response::WriteMultipleCoils(..),
            ) => WriteResult::ok(),
            Ok(other) => WriteResult::failed(
                WriteStatus::Protocol,
                MALFORMED,
                format!("unexpected reply {}", describe(&other)),
            ),
            Err(e) => {
                let status = match e {
                    CallError::Exception(_) => WriteStatus::Exception,
                    CallError::Timeout => WriteStatus::Timeout,
                    CallError::Connection(_) => WriteStatus::Connection,
                    CallError::Protocol(_) => WriteStatus::Protocol,
                };
                WriteResult::failed(status, code(&e), e.to_string())
            }
        }
    }
}

fn describe(r: &Response) -> String {
    match r {
        Response::ReadCoils(b) => format!("ReadCoils({} bits)", b.len()),
        Response::ReadDiscreteInputs(b) => format!("ReadDiscreteInputs({} bits)", b.len()),
        Response::ReadHoldingRegisters(w) => format!("ReadHoldingRegisters({} registers)", w.len()),
        Response::ReadInputRegisters(w) => format!("ReadInputRegisters({} registers)", w.len()),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn group(period_ms: u64, next: Instant) -> GroupState {
        GroupState {
            group: ScanGroup {
                period: Duration::from_millis(period_ms),
                requests: Vec::new(),
            },
            next,
            skipped: 0,
        }
    }

    #[test]
    fn next_deadline_follows_the_previous_one_and_overruns_skip_ticks() {
        // On time: the next deadline is the previous one plus the period,
        // however long the poll took (no drift).
        let t0 = Instant::now();
        let mut g = group(1000, t0);
        assert_eq!(reschedule(&mut g, None), 0);
        assert_eq!(g.next, t0 + Duration::from_millis(1000));
        // A poll that overran by 3.5 periods skips the 4 ticks in the past.
        let late = Instant::now() - Duration::from_millis(350);
        let mut g = group(100, late);
        assert_eq!(reschedule(&mut g, None), 3);
        assert!(g.next > Instant::now());
        assert_eq!((g.next - late).as_millis() % 100, 0, "still on the grid");
        // A backoff moves the deadline past itself without counting skips.
        let t0 = Instant::now();
        let mut g = group(100, t0);
        let hold = t0 + Duration::from_millis(1050);
        assert_eq!(reschedule(&mut g, Some(hold)), 0);
        assert!(g.next >= hold && g.next < hold + Duration::from_millis(100));
    }
}
