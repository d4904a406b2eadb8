//! A child's output read line by line on a thread of its own, so that whoever waits for a line
//! gives up after a timeout instead of hanging, and the child never blocks on a full pipe.
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError, channel};
use std::time::Duration;

pub struct Lines {
    rx: Receiver<String>,
    closed: bool,
}

/// No line came within the time given.
#[derive(Debug)]
pub struct Silent(pub Duration);

impl std::fmt::Display for Silent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no output for {:?}", self.0)
    }
}

impl std::error::Error for Silent {}

impl Lines {
    pub fn new(stream: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx, closed: false }
    }

    /// The next line; `None` once the stream is closed.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<String>, Silent> {
        if self.closed {
            return Ok(None);
        }
        match self.rx.recv_timeout(timeout) {
            Ok(line) => Ok(Some(line)),
            Err(RecvTimeoutError::Timeout) => Err(Silent(timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                self.closed = true;
                Ok(None)
            }
        }
    }

    /// A line already there, if any.
    pub fn try_next(&mut self) -> Option<String> {
        match self.rx.try_recv() {
            Ok(line) => Some(line),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.closed = true;
                None
            }
        }
    }

    /// Every line there now (for error messages).
    pub fn rest(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.try_next()).collect()
    }
}
