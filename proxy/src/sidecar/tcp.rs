//! Proxying a redirected connection that is not HTTP as TCP, as Istio's sidecar did with
//! its TCP filters: inbound to the app on the port the caller dialled (127.0.0.1), checked
//! with mixr when it opens; outbound to where the app was going when a ServiceEntry lists
//! it or `--outbound-traffic-policy` is ALLOW_ANY (refused under REGISTRY_ONLY). Reported when it opens and when it closes, with Istio's TCP attributes
//! (`connection.id`, `connection.event`, bytes each way, `connection.duration`).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mixr_rules::value::{MapVal, Value, ip_to_bytes};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::capture::registry::{self, OutboundPolicy};
use crate::policy::Verdict;
use crate::proxy::{Direction, Proxy};
use crate::worker::Worker;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// One proxied connection, as its attributes describe it.
struct Connection<'p> {
    proxy: &'p Proxy,
    dir: Direction,
    id: String,
    peer: SocketAddr,
    original: SocketAddr,
    /// `destination.service.host`: the ServiceEntry's host, or Istio's name for
    /// passthrough and refused traffic; inbound, this workload's service.
    service: String,
    started: Instant,
}

impl Connection<'_> {
    /// The attributes of one event: `open` (no counts yet) or `close`.
    fn attributes(&self, event: &'static str, received: u64, sent: u64) -> Vec<(&'static str, Value<'static>)> {
        let owned = |s: &str| Value::String(Cow::Owned(s.to_string()));
        let identity = &self.proxy.identity;
        let labels = Value::StringMap(MapVal::from(crate::policy::attributes::destination_labels(identity)));
        let mut attrs = vec![
            ("source.ip", Value::Bytes(Cow::Owned(ip_to_bytes(self.peer.ip())))),
            ("source.port", Value::Int64(i64::from(self.peer.port()))),
            ("destination.ip", Value::Bytes(Cow::Owned(ip_to_bytes(self.original.ip())))),
            ("destination.port", Value::Int64(i64::from(self.original.port()))),
            ("connection.id", owned(&self.id)),
            ("connection.event", Value::String(Cow::Borrowed(event))),
            ("connection.mtls", Value::Bool(false)),
            ("context.protocol", Value::String(Cow::Borrowed("tcp"))),
            ("context.reporter.kind", Value::String(Cow::Borrowed(self.dir.reporter_kind()))),
            ("context.time", crate::policy::attributes::now()),
            ("destination.service.host", owned(&self.service)),
        ];
        let names: [&'static str; 4] = match self.dir {
            Direction::Inbound => [
                "destination.workload.name",
                "destination.workload.namespace",
                "destination.namespace",
                "destination.labels",
            ],
            Direction::Outbound => {
                ["source.workload.name", "source.workload.namespace", "source.namespace", "source.labels"]
            }
        };
        attrs.extend([
            (names[0], owned(&identity.workload)),
            (names[1], owned(&identity.namespace)),
            (names[2], owned(&identity.namespace)),
            (names[3], labels),
        ]);
        if event == "close" {
            let (received, sent) = (received as i64, sent as i64);
            attrs.extend([
                ("connection.received.bytes", Value::Int64(received)),
                ("connection.sent.bytes", Value::Int64(sent)),
                ("connection.received.bytes_total", Value::Int64(received)),
                ("connection.sent.bytes_total", Value::Int64(sent)),
                ("connection.duration", Value::Duration(mixr_rules::value::Duration::from_std(self.started.elapsed()))),
            ]);
        }
        attrs
    }

    fn report(&self, worker: &Worker, event: &'static str, received: u64, sent: u64) {
        if let Some(reporter) = &worker.reporter {
            let attrs = self.attributes(event, received, sent);
            reporter.report(crate::policy::reports::Entry::new(attrs.iter().map(|(n, v)| (*n, v)), None));
        }
    }

    /// Whether mixr lets the connection open. Only inbound connections are checked, as
    /// Istio checked TCP at the destination's sidecar.
    async fn allowed(&self, worker: &Worker) -> bool {
        if self.dir != Direction::Inbound {
            return true;
        }
        let (Some(policy), Some(mixr)) = (self.proxy.policy.as_ref().filter(|p| p.checks()), worker.mixr.as_ref())
        else {
            return true;
        };
        let attrs = self.attributes("open", 0, 0);
        let verdict = match policy.cached(&attrs, &[]) {
            Some(hit) => hit,
            None => Box::pin(policy.ask(mixr, &attrs, &[], &self.id, None)).await,
        };
        matches!(verdict, Verdict::Allow { .. })
    }
}

/// Where the connection goes: outbound where it was going, inbound to the app on the
/// port the caller dialled.
fn target(dir: Direction, original: SocketAddr) -> SocketAddr {
    match dir {
        Direction::Outbound => original,
        Direction::Inbound => {
            let loopback: IpAddr =
                if original.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
            SocketAddr::new(loopback, original.port())
        }
    }
}

/// Copies one direction until its end or an error, counting what went through, then
/// closes the writing side so the other end sees the end too.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, count: &AtomicU64) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

pub async fn proxy(
    proxy: &Arc<Proxy>,
    worker: &Arc<Worker>,
    dir: Direction,
    mut client: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
) {
    let id = format!("{}-{}", std::process::id(), NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed));
    let (service, refused) = match dir {
        Direction::Inbound => {
            let app = proxy.identity.labels.iter().find(|(k, _)| k == "app");
            (app.map_or_else(|| "unknown".to_string(), |(_, v)| v.clone()), false)
        }
        Direction::Outbound => match registry::host_for(&proxy.tables.load().config, original) {
            Some(host) => (host, false),
            None if proxy.outbound_policy == OutboundPolicy::RegistryOnly => (registry::BLACKHOLE.to_string(), true),
            None => (registry::PASSTHROUGH.to_string(), false),
        },
    };
    let conn = Connection { proxy, dir, id, peer, original, service, started: Instant::now() };
    if refused {
        tracing::debug!(connection = %conn.id, %original, "TCP to a destination no ServiceEntry lists refused (REGISTRY_ONLY)");
        conn.report(worker, "open", 0, 0);
        conn.report(worker, "close", 0, 0);
        return;
    }
    if !conn.allowed(worker).await {
        tracing::debug!(connection = %conn.id, %peer, %original, "TCP connection denied");
        return;
    }
    conn.report(worker, "open", 0, 0);
    let to = match dir {
        // Spread over the entry's endpoints by connection.
        Direction::Outbound => {
            let pick = NEXT_CONNECTION.load(Ordering::Relaxed) as usize;
            registry::virtual_target(&proxy.tables.load().config, original, pick).unwrap_or(original)
        }
        Direction::Inbound => target(dir, original),
    };
    let mut upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(connection = %conn.id, %to, error = %e, "TCP upstream refused");
            conn.report(worker, "close", 0, 0);
            return;
        }
        Err(_) => {
            tracing::debug!(connection = %conn.id, %to, "TCP upstream connect timed out");
            conn.report(worker, "close", 0, 0);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (received, sent) = (AtomicU64::new(0), AtomicU64::new(0));
    let (client_r, client_w) = client.split();
    let (upstream_r, upstream_w) = upstream.split();
    tokio::join!(pump(client_r, upstream_w, &received), pump(upstream_r, client_w, &sent));
    conn.report(worker, "close", received.into_inner(), sent.into_inner());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_goes_to_the_dialled_port_on_loopback_and_outbound_where_it_was_going() {
        let v4: SocketAddr = "10.1.2.3:9000".parse().unwrap();
        assert_eq!(target(Direction::Inbound, v4), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(target(Direction::Outbound, v4), v4);
        let v6: SocketAddr = "[fd00::3]:9000".parse().unwrap();
        assert_eq!(target(Direction::Inbound, v6), "[::1]:9000".parse().unwrap());
    }
}
