//! [`Pipeline`]: decouples a driver's poll cadence from the bus's commit
//! latency. A poll hands its frame to a per-device publisher task through a
//! bounded queue of [`DEPTH`] frames and goes on polling; the task publishes
//! the frames in order, one at a time. An fsync stall shorter than `DEPTH`
//! scan periods therefore costs no poll, and a longer one slows polling
//! (backpressure) instead of growing memory.
//!
//! On shutdown [`Pipeline::finish`] publishes what is queued before it
//! returns: nothing a driver already read is dropped by a clean stop.

use std::sync::Arc;

use proto::{DataFrame, EventFrame, Sample};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{DriverError, DriverHost, ErrorKind, HostError, PollError, PollReport};

/// Frames a device may have queued for the bus.
pub const DEPTH: usize = 32;

/// What a driver hands to the bus, in order.
#[derive(Debug)]
pub enum Publication {
    Data(DataFrame),
    Event(EventFrame),
}

pub struct Pipeline {
    tx: Option<mpsc::Sender<Publication>>,
    task: Option<JoinHandle<Result<(), HostError>>>,
}

impl Pipeline {
    pub fn new<H: DriverHost>(host: Arc<H>) -> Pipeline {
        let (tx, mut rx) = mpsc::channel::<Publication>(DEPTH);
        let task = tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                match p {
                    Publication::Data(frame) => host.publish(frame).await?,
                    Publication::Event(event) => host.publish_event(event).await?,
                }
            }
            Ok(())
        });
        Pipeline {
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// Queues a frame; waits only while the queue is full. Fails with the
    /// publisher's error once the bus refused a frame.
    pub async fn send(&mut self, frame: DataFrame) -> Result<(), DriverError> {
        self.push(Publication::Data(frame)).await
    }

    /// Ends a poll: queues its samples as one frame of `device` (none when
    /// every sample was withheld) and reports the poll to `host`. A frame
    /// the bus refused is reported as a `bus` error and returned.
    pub async fn finish_poll<H: DriverHost>(
        &mut self,
        host: &H,
        device: &str,
        samples: Vec<Sample>,
        mut report: PollReport,
    ) -> Result<(), DriverError> {
        report.samples = samples.len();
        if !samples.is_empty() {
            let frame = DataFrame {
                device_id: device.to_string(),
                samples,
            };
            if let Err(e) = self.send(frame).await {
                report.samples = 0;
                report.errors.push(PollError {
                    kind: ErrorKind::Bus,
                    code: 0,
                });
                host.poll_finished(&report);
                return Err(e);
            }
        }
        host.poll_finished(&report);
        Ok(())
    }

    /// Queues an event behind the frames already queued.
    pub async fn send_event(&mut self, event: EventFrame) -> Result<(), DriverError> {
        self.push(Publication::Event(event)).await
    }

    async fn push(&mut self, p: Publication) -> Result<(), DriverError> {
        let sent = match &self.tx {
            Some(tx) => tx.send(p).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            self.finish().await?;
            Err(DriverError::Publish(HostError {
                message: "publisher stopped".into(),
                transient: true,
            }))
        }
    }

    /// Publishes everything queued, then stops the publisher task.
    pub async fn finish(&mut self) -> Result<(), DriverError> {
        self.tx.take();
        match self.task.take() {
            None => Ok(()),
            Some(t) => match t.await {
                Ok(r) => r.map_err(DriverError::Publish),
                Err(e) => Err(DriverError::Publish(HostError {
                    message: format!("publisher task failed: {e}"),
                    transient: true,
                })),
            },
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // A driver task that is aborted must not leave a publisher behind.
        if let Some(t) = &self.task {
            if self.tx.is_some() {
                t.abort();
            }
        }
    }
}
