//! Reports, batched as Istio's sidecar did (100 entries or 1 s after the first), sent in the
//! background so no response waits; a bounded buffer counts what it drops; flushed on
//! graceful shutdown.

use std::time::Duration;

use mixr_proto::istio::mixer::v1::ReportRequest;
use mixr_proto::istio::mixer::v1::mixer_client::MixerClient;
use mixr_proto::istio::mixer::v1::report_request::RepeatedAttributesSemantics;
use mixr_rules::bag::Encoder;
use mixr_rules::value::OwnedValue;
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

pub type Entry = Vec<(&'static str, OwnedValue)>;

const BATCH: usize = 100;
const BUFFER: usize = 10_000;

enum Msg {
    Entry(Entry),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct Reporter {
    tx: mpsc::Sender<Msg>,
    dropped: IntCounter,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Reporter {
    pub fn start(client: MixerClient<Channel>, dropped: IntCounter) -> Reporter {
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(run(client, rx));
        Reporter { tx, dropped }
    }

    /// Queues one entry; never waits.
    pub fn report(&self, entry: Entry) {
        if self.tx.try_send(Msg::Entry(entry)).is_err() {
            self.dropped.inc();
        }
    }

    /// Sends everything queued (graceful shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
        }
    }
}

async fn send(client: &mut MixerClient<Channel>, batch: &mut Vec<Entry>, failing: &mut bool) {
    if batch.is_empty() {
        return;
    }
    let mut enc = Encoder::new();
    let attributes = batch.iter().map(|e| enc.encode(e.iter().map(|(n, v)| (*n, v)))).collect();
    let req = ReportRequest {
        attributes,
        default_words: enc.into_words(),
        global_word_count: Encoder::global_word_count(),
        repeated_attributes_semantics: RepeatedAttributesSemantics::IndependentEncoding as i32,
    };
    batch.clear();
    // Reports are not retried (as in Istio); a failure is logged once per streak.
    match tokio::time::timeout(Duration::from_secs(5), client.report(req)).await {
        Ok(Ok(_)) => *failing = false,
        other => {
            if !*failing {
                tracing::warn!(error = ?other.err(), "report to mixr failed; entries dropped");
            }
            *failing = true;
        }
    }
}

async fn run(mut client: MixerClient<Channel>, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<Entry> = Vec::new();
    let mut failing = false;
    loop {
        let msg = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    send(&mut client, &mut batch, &mut failing).await;
                    continue;
                }
            }
        };
        match msg {
            Some(Msg::Entry(e)) => {
                batch.push(e);
                if batch.len() >= BATCH {
                    send(&mut client, &mut batch, &mut failing).await;
                }
            }
            Some(Msg::Flush(done)) => {
                send(&mut client, &mut batch, &mut failing).await;
                let _ = done.send(());
            }
            None => {
                send(&mut client, &mut batch, &mut failing).await;
                return;
            }
        }
    }
}
