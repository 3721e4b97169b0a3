//! [`Link`]: one connection to one serial line or TCP endpoint, shared by
//! every device (unit id) configured on it.
//!
//! - **One connection per line.** Links are registered process-wide by
//!   [`Transport::key`] (serial port path, or protocol + endpoint); the
//!   devices on a line hold an `Arc` and the link closes when the last one
//!   stops. RS-485 allows one outstanding request, and many TCP gateways
//!   and PLCs accept a single master connection.
//! - **Serialized and fair.** A request holds the link for one exchange
//!   (connect if needed, send, wait at most `timeout`), never for a whole
//!   poll; waiting requests are served first come, first served (tokio's
//!   mutex is FIFO). A device that times out costs the others at most one
//!   `timeout` per request, and a device backing off holds nothing.
//! - **A timeout or malformed reply drops the connection.** A late answer
//!   would otherwise be taken as the answer to the next request; the next
//!   request reconnects (TCP) or reopens the port (serial).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use config::{Parity, SerialSettings};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::{Request, Response, Slave, SlaveContext};

/// How a line is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp(String),
    RtuOverTcp(String),
    Rtu(SerialSettings),
}

impl Transport {
    /// Identity of the line: devices with equal keys share a connection.
    /// A serial key includes the line settings, so a reload that changes
    /// them opens the port anew instead of reusing the old settings.
    pub fn key(&self) -> String {
        match self {
            Transport::Tcp(e) => format!("tcp://{}", host_port(e)),
            Transport::RtuOverTcp(e) => format!("rtu+tcp://{}", host_port(e)),
            Transport::Rtu(s) => format!(
                "serial://{}?{},{},{:?},{}",
                s.port, s.baud_rate, s.data_bits, s.parity, s.stop_bits
            ),
        }
    }
}

/// Why one exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("exception {0}")]
    Exception(u8),
    #[error("no answer within the timeout")]
    Timeout,
    #[error("connection: {0}")]
    Connection(String),
    #[error("malformed reply: {0}")]
    Protocol(String),
}

impl CallError {
    /// Whether the device did not answer at all (counts toward Offline).
    pub fn is_transport(&self) -> bool {
        matches!(self, CallError::Timeout | CallError::Connection(_))
    }
}

pub struct Link {
    transport: Transport,
    conn: tokio::sync::Mutex<Option<Context>>,
}

static LINKS: LazyLock<Mutex<HashMap<String, Weak<Link>>>> = LazyLock::new(Mutex::default);

/// The shared link of `transport` (created on first use).
pub fn link(transport: Transport) -> Arc<Link> {
    let key = transport.key();
    let mut links = LINKS.lock().unwrap_or_else(|p| p.into_inner());
    links.retain(|_, w| w.strong_count() > 0);
    if let Some(l) = links.get(&key).and_then(Weak::upgrade) {
        return l;
    }
    let l = Arc::new(Link {
        transport,
        conn: tokio::sync::Mutex::new(None),
    });
    links.insert(key, Arc::downgrade(&l));
    l
}

fn host_port(endpoint: &str) -> String {
    if endpoint
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        endpoint.to_string()
    } else {
        format!("{endpoint}:502")
    }
}

async fn tcp(endpoint: &str) -> io::Result<tokio::net::TcpStream> {
    let s = tokio::net::TcpStream::connect(host_port(endpoint)).await?;
    // Requests are small and latency-bound.
    s.set_nodelay(true)?;
    Ok(s)
}

async fn connect(t: &Transport) -> io::Result<Context> {
    Ok(match t {
        Transport::Tcp(e) => tokio_modbus::client::tcp::attach(tcp(e).await?),
        Transport::RtuOverTcp(e) => tokio_modbus::client::rtu::attach(tcp(e).await?),
        Transport::Rtu(s) => {
            let builder = tokio_serial::new(&s.port, s.baud_rate)
                .data_bits(match s.data_bits {
                    5 => tokio_serial::DataBits::Five,
                    6 => tokio_serial::DataBits::Six,
                    7 => tokio_serial::DataBits::Seven,
                    _ => tokio_serial::DataBits::Eight,
                })
                .parity(match s.parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .stop_bits(if s.stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                });
            let port = tokio_serial::SerialStream::open(&builder).map_err(io::Error::from)?;
            tokio_modbus::client::rtu::attach(port)
        }
    })
}

impl Link {
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// One request/response exchange with unit `unit`, bounded by `timeout`
    /// (connecting, if needed, has its own `timeout`).
    pub async fn call(
        &self,
        unit: u8,
        request: Request<'static>,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            match tokio::time::timeout(timeout, connect(&self.transport)).await {
                Ok(Ok(c)) => *conn = Some(c),
                Ok(Err(e)) => return Err(CallError::Connection(e.to_string())),
                Err(_) => return Err(CallError::Connection("connect timed out".into())),
            }
        }
        let Some(ctx) = conn.as_mut() else {
            return Err(CallError::Connection("not connected".into()));
        };
        ctx.set_slave(Slave(unit));
        let result = match tokio::time::timeout(timeout, ctx.call(request)).await {
            Ok(Ok(Ok(r))) => return Ok(r),
            Ok(Ok(Err(exception))) => return Err(CallError::Exception(exception.into())),
            Ok(Err(tokio_modbus::Error::Transport(e))) if e.kind() == io::ErrorKind::InvalidData => {
                CallError::Protocol(e.to_string())
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => CallError::Connection(e.to_string()),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => CallError::Protocol(e.to_string()),
            Err(_) => CallError::Timeout,
        };
        // Unknown stream state: start over on the next request.
        *conn = None;
        Err(result)
    }

    /// Closes the connection (reopened by the next request).
    pub async fn close(&self) {
        if let Some(mut c) = self.conn.lock().await.take() {
            let _ = c.disconnect().await;
        }
    }
}
