//! Keys of `protocol = "modbus-tcp"`, `"modbus-rtu"` and
//! `"modbus-rtu-over-tcp"` devices and their tags, and the resolution of a
//! tag's address into a [`ModbusPoint`] (table, PDU address, register
//! count, bit, byte order).
//!
//! # Addresses
//! - Modicon style, without `table`: `"40001"` / `"400001"` (holding),
//!   `"30001"` (input register), `"10001"` (discrete input), `"00001"`
//!   (coil); 5 digits address 1..=9999, 6 digits 1..=65536. A register bit
//!   is `"40001.3"` (bit 0 = least significant). The number after the
//!   table digit counts from `address_base`, which defaults to **1** for
//!   this notation (the Modicon convention: `40001` is PDU address 0).
//! - Explicit: `table = "holding"` (or `input`, `coil`, `discrete_input`)
//!   and `address = 0` (an integer or a digit string, `"12.3"` for a bit,
//!   or `bit = 3`). It counts from `address_base`, which defaults to **0**
//!   here (the PDU address, as in the Modbus specification).
//! - Setting `address_base` on the device applies it to both notations, for
//!   devices whose documentation counts the other way.

use std::time::Duration;

use serde::Deserialize;

use crate::device::{DataType, TagConfig};
use crate::units;

/// A Modbus data table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// FC1 read, FC5 write.
    #[serde(alias = "coils")]
    Coil,
    /// FC2 read.
    #[serde(alias = "discrete", alias = "discrete_inputs")]
    DiscreteInput,
    /// FC4 read.
    #[serde(alias = "input_register", alias = "input_registers")]
    Input,
    /// FC3 read, FC6/FC16 write.
    #[serde(alias = "holding_register", alias = "holding_registers")]
    Holding,
}

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::Input => "input",
            Table::Holding => "holding",
        }
    }
    /// Coils and discrete inputs hold bits; the others 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }
    /// The Modbus read function code.
    pub fn read_function(self) -> u8 {
        match self {
            Table::Coil => 1,
            Table::DiscreteInput => 2,
            Table::Holding => 3,
            Table::Input => 4,
        }
    }
}

/// Byte and word order of a multi-byte value, named by where the bytes of
/// the big-endian value `A B C D` end up in the registers as transmitted.
/// `ABCD`: big-endian; `DCBA`: little-endian; `BADC`: bytes swapped in each
/// register; `CDAB`: registers in reverse order. For 16-bit values only
/// the byte swap matters (`AB`, `BA`); for 64-bit values the same rules
/// apply to 4 registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum ByteOrder {
    #[default]
    #[serde(alias = "AB", alias = "abcd", alias = "ab", alias = "big")]
    ABCD,
    #[serde(alias = "BA", alias = "dcba", alias = "ba", alias = "little")]
    DCBA,
    #[serde(alias = "badc")]
    BADC,
    #[serde(alias = "cdab")]
    CDAB,
}

impl ByteOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            ByteOrder::ABCD => "ABCD",
            ByteOrder::DCBA => "DCBA",
            ByteOrder::BADC => "BADC",
            ByteOrder::CDAB => "CDAB",
        }
    }
    /// Whether the two bytes of each register are swapped.
    pub fn swaps_bytes(self) -> bool {
        matches!(self, ByteOrder::DCBA | ByteOrder::BADC)
    }
    /// Whether the registers come last-first.
    pub fn reverses_words(self) -> bool {
        matches!(self, ByteOrder::DCBA | ByteOrder::CDAB)
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    #[serde(alias = "N")]
    None,
    #[serde(alias = "E")]
    Even,
    #[serde(alias = "O")]
    Odd,
}

/// The line settings of a serial port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    pub port: String,
    pub baud_rate: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
}

/// Device keys of the Modbus protocols.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusDevice {
    /// Unit (slave) id; 1..=247 on a serial line, 0..=255 over TCP.
    #[serde(default = "d_unit", alias = "slave_id")]
    pub unit_id: u8,
    /// What the device's documentation calls its first register (0 or 1);
    /// see the module docs for the defaults.
    #[serde(default)]
    pub address_base: Option<u16>,
    /// Default byte order of multi-register values (tags may override).
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Largest register read (FC3/FC4), at most 125.
    #[serde(default = "d_regs")]
    pub max_registers_per_request: u16,
    /// Largest bit read (FC1/FC2), at most 2000.
    #[serde(default = "d_bits")]
    pub max_bits_per_request: u16,
    /// Unused registers (or bits) a merged request may read to join two
    /// tags; 0 = only adjacent tags are merged.
    #[serde(default)]
    pub max_gap: u16,
    /// One request per tag, for devices that reject multi-field reads.
    #[serde(default)]
    pub one_request_per_tag: bool,
    /// Idle time after each request, for slow devices.
    #[serde(default, deserialize_with = "units::duration")]
    pub pause_between_requests: Duration,
    /// Close the connection after every poll (devices that allow only one
    /// master connection at a time).
    #[serde(default)]
    pub close_connection_after_poll: bool,
    /// Retries of a request answered with exception 6 (server device busy).
    #[serde(default = "d_busy")]
    pub busy_retries: u32,
    #[serde(default = "d_busy_interval", deserialize_with = "units::duration")]
    pub busy_retry_interval: Duration,
    /// `modbus-rtu`: the serial device (e.g. `/dev/ttyUSB0`).
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub baud_rate: Option<u32>,
    #[serde(default)]
    pub data_bits: Option<u8>,
    #[serde(default)]
    pub parity: Option<Parity>,
    #[serde(default)]
    pub stop_bits: Option<u8>,
}

impl ModbusDevice {
    /// The serial line settings (`modbus-rtu`), with defaults 9600 8N1.
    pub fn serial(&self) -> Option<SerialSettings> {
        Some(SerialSettings {
            port: self.port.clone()?,
            baud_rate: self.baud_rate.unwrap_or(9600),
            data_bits: self.data_bits.unwrap_or(8),
            parity: self.parity.unwrap_or_default(),
            stop_bits: self.stop_bits.unwrap_or(1),
        })
    }
}

fn d_unit() -> u8 {
    1
}
fn d_regs() -> u16 {
    125
}
fn d_bits() -> u16 {
    2000
}
fn d_busy() -> u32 {
    3
}
fn d_busy_interval() -> Duration {
    Duration::from_millis(100)
}

/// Tag keys of the Modbus protocols.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusTag {
    /// Explicit table; `address` is then a plain number.
    #[serde(default)]
    pub table: Option<Table>,
    /// Bit of a register (0 = least significant), for `bool` tags.
    #[serde(default)]
    pub bit: Option<u8>,
    /// Overrides the device's `byte_order`.
    #[serde(default)]
    pub byte_order: Option<ByteOrder>,
    /// Registers of a `string` or `bytes` tag (2 bytes each).
    #[serde(default)]
    pub length: Option<u16>,
}

/// Where a tag lives on the device, resolved from its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModbusPoint {
    pub table: Table,
    /// PDU (zero-based) address of the first register or bit.
    pub address: u16,
    /// Registers (or bits) the value spans.
    pub count: u16,
    pub bit: Option<u8>,
    pub byte_order: ByteOrder,
}

impl ModbusPoint {
    /// One past the last register (or bit), in u32 so 65535 + n fits.
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// Registers a value of `dt` spans (`None`: not readable from registers
/// without `length`, or not supported by Modbus).
fn register_count(dt: DataType, length: Option<u16>) -> Result<u16, String> {
    use DataType::*;
    match dt {
        Boolean | Int16 | UInt16 => Ok(1),
        Int32 | UInt32 | Float => Ok(2),
        Int64 | UInt64 | Double => Ok(4),
        String | ByteArray => match length {
            Some(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "a {} tag needs `length` (registers, 2 bytes each)",
                if dt == String { "string" } else { "bytes" }
            )),
        },
        Int8 | UInt8 | DateTime => Err(format!(
            "data_type {dt:?} is not supported by Modbus; use int16/uint16 (with `scaling`) or int64"
        )),
    }
}

/// Resolves `tag`'s address on a device with `device` options; the error
/// names the problem for the `address` key (or the key in `.0`).
pub fn resolve(
    device: &ModbusDevice,
    tag: &TagConfig,
    opts: &ModbusTag,
) -> Result<ModbusPoint, (&'static str, String)> {
    let addr = tag.address.trim();
    let (number, suffix_bit) = match addr.split_once('.') {
        Some((n, b)) => {
            let bit: u8 = b
                .parse()
                .ok()
                .filter(|b| *b < 16)
                .ok_or(("address", format!("bit {b:?} in {addr:?} must be 0..=15")))?;
            (n, Some(bit))
        }
        None => (addr, None),
    };
    if number.is_empty() || !number.bytes().all(|c| c.is_ascii_digit()) {
        return Err((
            "address",
            format!(
                "{addr:?} is not a Modbus address: expected digits like \"40001\" (or `table` with a number)"
            ),
        ));
    }
    let (table, n, default_base) = match opts.table {
        Some(t) => {
            let n: u32 = number
                .parse()
                .map_err(|_| ("address", format!("{addr:?} is too large")))?;
            (t, n, 0)
        }
        None => {
            if !(number.len() == 5 || number.len() == 6) {
                return Err((
                    "address",
                    format!(
                        "{addr:?} is not a Modicon address (5 or 6 digits like \"40001\"); \
                         for a plain register number set `table` (holding, input, coil, discrete_input)"
                    ),
                ));
            }
            let table = match &number[..1] {
                "0" => Table::Coil,
                "1" => Table::DiscreteInput,
                "3" => Table::Input,
                "4" => Table::Holding,
                d => {
                    return Err((
                        "address",
                        format!("{addr:?}: Modicon table digit {d} is none of 0 (coil), 1 (discrete input), 3 (input register), 4 (holding register)"),
                    ))
                }
            };
            let n: u32 = number[1..].parse().unwrap_or(0);
            (table, n, 1)
        }
    };
    let base = u32::from(device.address_base.unwrap_or(default_base));
    let address = n.checked_sub(base).and_then(|a| u16::try_from(a).ok()).ok_or((
        "address",
        format!(
            "{addr:?} is outside the device's address space (address_base {base}, PDU addresses 0..=65535)"
        ),
    ))?;
    let bit = match (suffix_bit, opts.bit) {
        (Some(_), Some(_)) => return Err(("bit", format!("bit given twice: in {addr:?} and as `bit`"))),
        (a, b) => a.or(b),
    };
    if let Some(b) = bit {
        if b > 15 {
            return Err(("bit", format!("must be 0..=15, got {b}")));
        }
        if table.is_bits() {
            return Err((
                "bit",
                format!(
                    "a {} is a single bit already; `bit` is for registers",
                    table.as_str()
                ),
            ));
        }
        if tag.data_type != DataType::Boolean {
            return Err(("data_type", "a register bit is read as `bool`".into()));
        }
    }
    let count = if table.is_bits() {
        if tag.data_type != DataType::Boolean {
            return Err((
                "data_type",
                format!("a {} holds one bit: data_type must be bool", table.as_str()),
            ));
        }
        1
    } else {
        if tag.data_type == DataType::Boolean && bit.is_none() {
            return Err((
                "data_type",
                format!(
                    "a bool in a {} register needs a bit: \"{addr}.N\" or `bit = N`",
                    table.as_str()
                ),
            ));
        }
        register_count(tag.data_type, opts.length).map_err(|m| ("data_type", m))?
    };
    if opts.length.is_some() && !matches!(tag.data_type, DataType::String | DataType::ByteArray) {
        return Err(("length", "only string and bytes tags take `length`".into()));
    }
    let point = ModbusPoint {
        table,
        address,
        count,
        bit,
        byte_order: opts.byte_order.unwrap_or(device.byte_order),
    };
    if point.end() > 65536 {
        return Err((
            "address",
            format!("{addr:?} plus {count} registers runs past address 65535"),
        ));
    }
    Ok(point)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::TagOptions;

    fn device(base: Option<u16>) -> ModbusDevice {
        let mut d: ModbusDevice = toml::from_str("").unwrap();
        d.address_base = base;
        d
    }

    fn tag(address: &str, dt: DataType) -> TagConfig {
        TagConfig::new("t", address, dt, TagOptions::Modbus(ModbusTag::default()))
    }

    fn at(
        d: &ModbusDevice,
        address: &str,
        dt: DataType,
        o: &ModbusTag,
    ) -> Result<(Table, u16, u16, Option<u8>), String> {
        resolve(d, &tag(address, dt), o)
            .map(|p| (p.table, p.address, p.count, p.bit))
            .map_err(|(k, m)| format!("{k}: {m}"))
    }

    #[test]
    fn modicon_addresses() {
        let d = device(None);
        let o = ModbusTag::default();
        assert_eq!(
            at(&d, "40001", DataType::UInt16, &o),
            Ok((Table::Holding, 0, 1, None))
        );
        assert_eq!(
            at(&d, "400001", DataType::Float, &o),
            Ok((Table::Holding, 0, 2, None))
        );
        assert_eq!(
            at(&d, "465536", DataType::UInt16, &o),
            Ok((Table::Holding, 65535, 1, None))
        );
        assert_eq!(
            at(&d, "30010", DataType::Double, &o),
            Ok((Table::Input, 9, 4, None))
        );
        assert_eq!(
            at(&d, "00001", DataType::Boolean, &o),
            Ok((Table::Coil, 0, 1, None))
        );
        assert_eq!(
            at(&d, "10005", DataType::Boolean, &o),
            Ok((Table::DiscreteInput, 4, 1, None))
        );
        assert_eq!(
            at(&d, "40001.15", DataType::Boolean, &o),
            Ok((Table::Holding, 0, 1, Some(15)))
        );
        // Devices counting from 0: 40000 is the first register.
        assert_eq!(
            at(&device(Some(0)), "40000", DataType::UInt16, &o),
            Ok((Table::Holding, 0, 1, None))
        );
        for bad in ["40000", "4001", "4000001", "50001", "4000a", "40001.16", "465537"] {
            assert!(at(&d, bad, DataType::UInt16, &o).is_err(), "{bad}");
        }
        assert!(at(&d, "465536", DataType::Float, &o).is_err(), "runs past 65535");
    }

    #[test]
    fn explicit_tables_count_from_zero_unless_told() {
        let holding = ModbusTag {
            table: Some(Table::Holding),
            ..ModbusTag::default()
        };
        assert_eq!(
            at(&device(None), "0", DataType::Int32, &holding),
            Ok((Table::Holding, 0, 2, None))
        );
        assert_eq!(
            at(&device(Some(1)), "1", DataType::Int32, &holding),
            Ok((Table::Holding, 0, 2, None))
        );
        assert!(at(&device(Some(1)), "0", DataType::Int32, &holding).is_err());
        let bit = ModbusTag {
            bit: Some(3),
            ..holding.clone()
        };
        assert_eq!(
            at(&device(None), "7", DataType::Boolean, &bit),
            Ok((Table::Holding, 7, 1, Some(3)))
        );
        assert!(
            at(&device(None), "7.3", DataType::Boolean, &bit).is_err(),
            "bit given twice"
        );
    }

    #[test]
    fn types_must_fit_their_table() {
        let d = device(None);
        let o = ModbusTag::default();
        let err = |a: &str, dt, o: &ModbusTag| at(&d, a, dt, o).unwrap_err();
        assert!(err("00001", DataType::UInt16, &o).starts_with("data_type"));
        assert!(err("40001", DataType::Boolean, &o).contains("needs a bit"));
        assert!(err("40001", DataType::String, &o).contains("length"));
        assert!(err("40001", DataType::Int8, &o).contains("not supported"));
        assert!(err("00001.2", DataType::Boolean, &o).starts_with("bit"));
        let s = ModbusTag {
            length: Some(10),
            ..ModbusTag::default()
        };
        assert_eq!(
            at(&d, "40001", DataType::String, &s),
            Ok((Table::Holding, 0, 10, None))
        );
        assert!(err("40001", DataType::UInt16, &s).starts_with("length"));
    }
}
