//! A closed-loop load generator: `concurrency` callers, each sending its next request as
//! soon as the last one returns, over one HTTP/2 connection (as a sidecar would).
//!
//! Requests are encoded once and sent as raw bytes, and answers are not decoded: the
//! generator shares the machine with the server, so it must cost as little as possible.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use tokio::sync::Mutex;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

/// Passes pre-encoded messages through; answers are counted, not parsed.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = usize;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = usize;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
        let n = buf.remaining();
        buf.advance(n);
        Ok(Some(n))
    }
}

/// One unary call with a pre-encoded body.
pub async fn call_raw(
    grpc: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    body: Bytes,
) -> Result<usize, Status> {
    grpc.ready().await.map_err(|e| Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.map(|r| r.into_inner())
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl LoadResult {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_us(&self, p: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i]
    }
}

/// Sends `requests` (round robin) for `warmup + measure`; only the measured window counts.
/// `on_measure_start`/`end` run at the window's edges (CPU sampling).
pub async fn run(
    endpoint: &str,
    path: &'static str,
    requests: Vec<Bytes>,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    mut at_edges: impl FnMut(),
) -> Result<LoadResult, String> {
    let channel = Channel::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect {endpoint}: {e}"))?;
    let client = tonic::client::Grpc::new(channel);
    let requests = Arc::new(requests);
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + measure;
    let totals = Arc::new(Mutex::new(LoadResult::default()));
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut client = client.clone();
        let requests = requests.clone();
        let totals = totals.clone();
        tasks.push(tokio::spawn(async move {
            let mut local = LoadResult::default();
            let mut i = worker;
            loop {
                let sent = Instant::now();
                if sent >= window_end {
                    break;
                }
                let req = requests[i % requests.len()].clone();
                i += 1;
                let ok = call_raw(&mut client, path, req).await.is_ok();
                let done = Instant::now();
                if sent >= window_start && done <= window_end {
                    local.requests += 1;
                    if !ok {
                        local.errors += 1;
                    }
                    local.latencies_us.push(done.duration_since(sent).as_micros().min(u32::MAX as u128) as u32);
                }
            }
            let mut t = totals.lock().await;
            t.requests += local.requests;
            t.errors += local.errors;
            t.latencies_us.extend(local.latencies_us);
        }));
    }
    tokio::time::sleep_until(window_start.into()).await;
    at_edges();
    tokio::time::sleep_until(window_end.into()).await;
    at_edges();
    for t in tasks {
        let _ = t.await;
    }
    let mut result = std::mem::take(&mut *totals.lock().await);
    result.elapsed = measure;
    result.latencies_us.sort_unstable();
    Ok(result)
}
