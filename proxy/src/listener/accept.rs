//! Accepting connections when the process is out of file descriptors (EMFILE, ENFILE) or
//! kernel memory: the listening socket stays readable, so an accept loop that just tries
//! again spins a core and logs without end. Every failed accept waits instead, 5 ms
//! doubling to 1 s, back to nothing after the next success, and failures are logged at
//! most once a second for the whole process (with how many there were since).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

const FIRST_WAIT: Duration = Duration::from_millis(5);
const MAX_WAIT: Duration = Duration::from_secs(1);
const LOG_EVERY: Duration = Duration::from_secs(1);

/// One accept loop's wait after failures.
#[derive(Debug, Default)]
pub struct Backoff {
    wait: Option<Duration>,
}

impl Backoff {
    /// How long to wait after another failure.
    pub fn failed(&mut self) -> Duration {
        let wait = self.wait.map_or(FIRST_WAIT, |w| (w * 2).min(MAX_WAIT));
        self.wait = Some(wait);
        wait
    }

    pub fn succeeded(&mut self) {
        self.wait = None;
    }
}

/// Failures since the last line logged, and when that was; shared by every loop, so a
/// process whose descriptors ran out logs once a second however many listeners it has.
static LOG: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));

fn log_failure(listener: &'static str, error: &std::io::Error, wait: Duration) {
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    log.1 += 1;
    let now = Instant::now();
    if log.0.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
        return;
    }
    tracing::warn!(listener, error = %error, failures = log.1, backoff_ms = wait.as_millis() as u64, "accept failed; backing off");
    *log = (Some(now), 0);
}

/// The next connection on `listener`, waiting out failures. Cancel-safe.
pub async fn next(listener: &TcpListener, backoff: &mut Backoff, name: &'static str) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                return accepted;
            }
            Err(e) => {
                let wait = backoff.failed();
                log_failure(name, &e, wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_a_second_and_reset_on_success() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..10).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(), FIRST_WAIT);
    }
}
