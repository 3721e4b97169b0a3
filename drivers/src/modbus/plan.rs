//! Request planning: which reads one poll of a device sends.
//!
//! Enabled, readable tags are grouped by effective scan period, then by
//! table; within a table they are sorted by address and merged into one
//! read while the merged span stays within `max_registers_per_request`
//! (`max_bits_per_request` for coils and discrete inputs) and the hole
//! between the span and the next tag is at most `max_gap` registers.
//! With `one_request_per_tag` every tag is read on its own. Write-only
//! tags are never read.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use config::{Access, DeviceConfig, ModbusDevice, ModbusPoint, Table, TagOptions};

/// One read request and the tags it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    pub address: u16,
    pub count: u16,
    /// `(index into device.tags, its point)`, sorted by address.
    pub tags: Vec<(usize, ModbusPoint)>,
}

/// The requests of one scan period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanGroup {
    pub period: Duration,
    pub requests: Vec<ReadRequest>,
}

/// Every request of a device, by scan period (shortest first).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub groups: Vec<ScanGroup>,
}

impl Plan {
    pub fn requests(&self) -> usize {
        self.groups.iter().map(|g| g.requests.len()).sum()
    }
    pub fn tags(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| &g.requests)
            .map(|r| r.tags.len())
            .sum()
    }
}

/// Plans the reads of `device`; fails on a tag whose address does not
/// resolve (impossible for a validated configuration).
pub fn plan(device: &DeviceConfig, opts: &ModbusDevice) -> Result<Plan, String> {
    let mut by_period: BTreeMap<Duration, BTreeMap<Table, Vec<(usize, ModbusPoint)>>> = BTreeMap::new();
    for (i, tag) in device.tags.iter().enumerate() {
        if !tag.enabled || tag.access == Access::Write {
            continue;
        }
        let TagOptions::Modbus(o) = &tag.driver else {
            return Err(format!("tag {:?} has no Modbus options", tag.name));
        };
        let point = config::modbus::resolve(opts, tag, o)
            .map_err(|(key, m)| format!("tag {:?}: {key}: {m}", tag.name))?;
        by_period
            .entry(tag.effective_scan(device))
            .or_default()
            .entry(point.table)
            .or_default()
            .push((i, point));
    }
    let groups = by_period
        .into_iter()
        .map(|(period, tables)| ScanGroup {
            period,
            requests: tables
                .into_iter()
                .flat_map(|(table, points)| merge(table, points, opts))
                .collect(),
        })
        .collect();
    Ok(Plan { groups })
}

fn merge(table: Table, mut points: Vec<(usize, ModbusPoint)>, opts: &ModbusDevice) -> Vec<ReadRequest> {
    points.sort_by_key(|(i, p)| (p.address, *i));
    let limit = u32::from(if table.is_bits() {
        opts.max_bits_per_request
    } else {
        opts.max_registers_per_request
    });
    let mut out: Vec<ReadRequest> = Vec::new();
    for (i, p) in points {
        if !opts.one_request_per_tag {
            if let Some(r) = out.last_mut() {
                let start = u32::from(r.address);
                let end = start + u32::from(r.count);
                let new_end = end.max(p.end());
                let joins = u32::from(p.address) <= end + u32::from(opts.max_gap) && new_end - start <= limit;
                if joins {
                    // new_end - start <= limit <= 2000, so it fits u16.
                    r.count = u16::try_from(new_end - start).unwrap_or(u16::MAX);
                    r.tags.push((i, p));
                    continue;
                }
            }
        }
        out.push(ReadRequest {
            table,
            address: p.address,
            count: p.count,
            tags: vec![(i, p)],
        });
    }
    out
}

impl fmt::Display for ReadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FC{} {:<14} {:>5}..{:<5} ({:>4} {}) {} tag{}",
            self.table.read_function(),
            self.table.as_str(),
            self.address,
            u32::from(self.address) + u32::from(self.count) - 1,
            self.count,
            match (self.table.is_bits(), self.count) {
                (true, 1) => "bit",
                (true, _) => "bits",
                (false, 1) => "reg",
                (false, _) => "regs",
            },
            self.tags.len(),
            if self.tags.len() == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{ByteOrder, DataType, ModbusTag, TagConfig};

    fn opts() -> ModbusDevice {
        ModbusDevice {
            unit_id: 1,
            address_base: None,
            byte_order: ByteOrder::ABCD,
            max_registers_per_request: 125,
            max_bits_per_request: 2000,
            max_gap: 0,
            one_request_per_tag: false,
            pause_between_requests: Duration::ZERO,
            close_connection_after_poll: false,
            busy_retries: 0,
            busy_retry_interval: Duration::ZERO,
            port: None,
            baud_rate: None,
            data_bits: None,
            parity: None,
            stop_bits: None,
        }
    }

    fn tag(name: &str, address: &str, dt: DataType) -> TagConfig {
        TagConfig::new(name, address, dt, TagOptions::Modbus(ModbusTag::default()))
    }

    fn device(tags: Vec<TagConfig>, o: &ModbusDevice) -> DeviceConfig {
        DeviceConfig {
            file: "d.toml".into(),
            name: "d".into(),
            description: None,
            protocol: config::Protocol::ModbusTcp,
            endpoint: "127.0.0.1:502".into(),
            location: None,
            enabled: true,
            scan_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            max_concurrent: 1,
            batch_size: 1,
            retry: config::RetryPolicy {
                max_retries: 3,
                retry_interval: Duration::from_secs(1),
                exponential_backoff: true,
                max_retry_interval: Duration::from_secs(30),
            },
            driver: config::DriverOptions::Modbus(o.clone()),
            tags,
        }
    }

    fn spans(p: &Plan) -> Vec<(Table, u16, u16, usize)> {
        p.groups
            .iter()
            .flat_map(|g| &g.requests)
            .map(|r| (r.table, r.address, r.count, r.tags.len()))
            .collect()
    }

    #[test]
    fn adjacent_tags_merge_and_gaps_split() {
        let o = opts();
        let d = device(
            vec![
                tag("a", "40001", DataType::UInt16),
                tag("b", "40002", DataType::Float),  // 1..=2
                tag("c", "40004", DataType::Int16),  // adjacent to b
                tag("d", "40010", DataType::UInt16), // gap of 5
                tag("x", "30001", DataType::UInt16),
                tag("bit", "40001.3", DataType::Boolean), // overlaps a
            ],
            &o,
        );
        let p = plan(&d, &o).unwrap();
        assert_eq!(
            spans(&p),
            [
                (Table::Input, 0, 1, 1),
                (Table::Holding, 0, 4, 4),
                (Table::Holding, 9, 1, 1)
            ]
        );
        let o = ModbusDevice { max_gap: 5, ..opts() };
        let p = plan(&device(d.tags.clone(), &o), &o).unwrap();
        assert_eq!(spans(&p)[1..], [(Table::Holding, 0, 10, 5)]);
        let o = ModbusDevice { max_gap: 4, ..opts() };
        assert_eq!(plan(&device(d.tags.clone(), &o), &o).unwrap().requests(), 3);
    }

    #[test]
    fn limits_split_long_runs() {
        let o = ModbusDevice {
            max_registers_per_request: 10,
            ..opts()
        };
        let tags: Vec<TagConfig> = (0..25)
            .map(|i| tag(&format!("t{i}"), &format!("{}", 40001 + i * 2), DataType::UInt32))
            .collect();
        let p = plan(&device(tags, &o), &o).unwrap();
        assert_eq!(
            spans(&p),
            [
                (Table::Holding, 0, 10, 5),
                (Table::Holding, 10, 10, 5),
                (Table::Holding, 20, 10, 5),
                (Table::Holding, 30, 10, 5),
                (Table::Holding, 40, 10, 5)
            ]
        );
        // 2000 coils per request by default.
        let o = opts();
        let coils: Vec<TagConfig> = (0..4500)
            .map(|i| tag(&format!("c{i}"), &format!("{:06}", i + 1), DataType::Boolean))
            .collect();
        let p = plan(&device(coils, &o), &o).unwrap();
        assert_eq!(
            spans(&p),
            [
                (Table::Coil, 0, 2000, 2000),
                (Table::Coil, 2000, 2000, 2000),
                (Table::Coil, 4000, 500, 500)
            ]
        );
    }

    #[test]
    fn one_request_per_tag_and_scan_groups() {
        let o = ModbusDevice {
            one_request_per_tag: true,
            ..opts()
        };
        let mut fast = tag("fast", "40003", DataType::UInt16);
        fast.scan_rate = Some(Duration::from_millis(100));
        let mut write_only = tag("sp", "40005", DataType::UInt16);
        write_only.access = Access::Write;
        let mut off = tag("off", "40006", DataType::UInt16);
        off.enabled = false;
        let d = device(
            vec![
                tag("a", "40001", DataType::UInt16),
                tag("b", "40002", DataType::UInt16),
                fast,
                write_only,
                off,
            ],
            &o,
        );
        let p = plan(&d, &o).unwrap();
        assert_eq!(p.groups.len(), 2);
        assert_eq!(p.groups[0].period, Duration::from_millis(100));
        assert_eq!(
            spans(&p),
            [
                (Table::Holding, 2, 1, 1),
                (Table::Holding, 0, 1, 1),
                (Table::Holding, 1, 1, 1)
            ]
        );
    }

    #[test]
    fn contiguous_map_needs_few_requests() {
        // 1000 uint16 registers: 8 requests instead of 1000.
        let o = opts();
        let tags: Vec<TagConfig> = (0..1000)
            .map(|i| tag(&format!("r{i}"), &format!("{}", 400001 + i), DataType::UInt16))
            .collect();
        let p = plan(&device(tags, &o), &o).unwrap();
        assert_eq!(p.requests(), 8);
        assert_eq!(p.tags(), 1000);
    }
}
