//! Listchecker behaviour, including provider refresh and ttl against a real local HTTP
//! server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mixr_rules::config::load_str;
use mixr_rules::snapshot::InstanceValues;
use mixr_rules::value::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::clock::ManualClock;

fn params(spec: &str) -> Result<Params, ConfigError> {
    let text = format!("apiVersion: config.istio.io/v1alpha2\nkind: listchecker\nmetadata: {{name: l}}\nspec:\n{spec}");
    let (set, mut errors) = load_str("l.yaml", &text, "istio-system");
    if !errors.is_empty() {
        return Err(errors.remove(0));
    }
    parse(&set.handlers[0])
}

fn value(v: &str) -> InstanceValues {
    InstanceValues { fields: vec![("value", Value::String(v.to_string().into()))], maps: vec![] }
}

fn checker(spec: &str, clock: Arc<dyn Clock>) -> ListChecker {
    ListChecker::new(params(spec).unwrap(), clock)
}

#[test]
fn whitelist_and_blacklist_messages() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
    let w = checker("  overrides: [v1, v2]\n  cachingInterval: 10s\n  cachingUseCount: 5\n", clock.clone());
    let ok = w.check(&value("v1"));
    assert!(ok.status.is_ok());
    assert_eq!((ok.valid_duration, ok.valid_use_count), (Duration::from_secs(10), 5));
    let denied = w.check(&value("v3"));
    assert_eq!(denied.status, Status::new(7, "v3 is not whitelisted"));

    let b = checker("  overrides: [bad]\n  blacklist: true\n", clock);
    assert_eq!(b.check(&value("bad")).status, Status::new(7, "bad is blacklisted"));
    assert!(b.check(&value("good")).status.is_ok());
    assert_eq!(b.check(&value("good")).valid_duration, Duration::from_secs(300));
}

#[test]
fn ip_whitelist_with_ip_values() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
    let w = checker("  entryType: IP_ADDRESSES\n  overrides: [10.57.0.0/16, '::1']\n", clock);
    let ip = |t: &str| InstanceValues {
        fields: vec![("value", Value::Bytes(mixr_rules::value::ip_to_bytes(t.parse().unwrap()).into()))],
        maps: vec![],
    };
    assert!(w.check(&ip("10.57.3.4")).status.is_ok());
    assert!(w.check(&ip("::1")).status.is_ok());
    assert_eq!(w.check(&ip("10.58.0.1")).status.message, "10.58.0.1 is not whitelisted");
}

#[test]
fn param_errors() {
    assert_eq!(params("  refreshInterval: 100ms\n").unwrap_err().message, "must be at least 1s");
    assert_eq!(params("  refreshInterval: 10s\n  ttl: 5s\n").unwrap_err().message, "must be at least refreshInterval");
    assert!(params("  entryType: NUMBERS\n").unwrap_err().message.contains("unknown entry type"));
    assert!(
        params("  entryType: IP_ADDRESSES\n  overrides: [1.2.3]\n").unwrap_err().message.contains("not an IP address")
    );
    assert!(params("  providerUrl: ftp://x\n").unwrap_err().message.contains("must start with"));
}

/// A minimal HTTP/1.1 server on 127.0.0.1 serving a body that the test can change.
async fn serve(body: Arc<Mutex<(u16, String)>>, hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                hits.fetch_add(1, Ordering::SeqCst);
                let (status, text) = body.lock().unwrap().clone();
                let resp =
                    format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}", text.len());
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/list")
}

#[tokio::test]
async fn provider_refresh_and_ttl() {
    let body = Arc::new(Mutex::new((200, "alice\nbob\n".to_string())));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = serve(body.clone(), hits.clone()).await;
    let clock = Arc::new(ManualClock::default());
    let c = checker(
        &format!("  providerUrl: {url}\n  refreshInterval: 1s\n  ttl: 3s\n  overrides: [root]\n"),
        clock.clone(),
    );

    // Before the first fetch: overrides answer, everything else is UNAVAILABLE.
    assert!(c.check(&value("root")).status.is_ok());
    assert_eq!(c.check(&value("alice")).status.code, code::UNAVAILABLE);

    assert_eq!(c.refresh().await.unwrap(), 2);
    assert!(c.check(&value("alice")).status.is_ok());
    assert_eq!(c.check(&value("carol")).status.message, "carol is not whitelisted");

    // The provider changes its list: the next refresh picks it up.
    body.lock().unwrap().1 = "carol\n".into();
    c.refresh().await.unwrap();
    assert!(c.check(&value("carol")).status.is_ok());
    assert!(!c.check(&value("alice")).status.is_ok());

    // The provider fails: the old list serves until ttl, then it is dropped.
    body.lock().unwrap().0 = 500;
    assert!(c.refresh().await.is_err());
    clock.advance(Duration::from_secs(2));
    assert!(c.check(&value("carol")).status.is_ok(), "within ttl the last list stands");
    clock.advance(Duration::from_secs(2));
    assert_eq!(c.check(&value("carol")).status.code, code::UNAVAILABLE, "after ttl the list is dropped");
    assert!(c.check(&value("root")).status.is_ok(), "overrides still apply");

    // It recovers by itself.
    body.lock().unwrap().0 = 200;
    c.refresh().await.unwrap();
    assert!(c.check(&value("carol")).status.is_ok());
}

#[tokio::test]
async fn background_polling_follows_the_provider() {
    let body = Arc::new(Mutex::new((200, "a\n".to_string())));
    let hits = Arc::new(AtomicUsize::new(0));
    let url = serve(body.clone(), hits.clone()).await;
    let c = Arc::new(checker(
        &format!("  providerUrl: {url}\n  refreshInterval: 1s\n"),
        Arc::new(crate::clock::SystemClock),
    ));
    c.start_polling();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !c.check(&value("a")).status.is_ok() {
        assert!(std::time::Instant::now() < deadline, "first poll never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    body.lock().unwrap().1 = "b\n".into();
    while !c.check(&value("b")).status.is_ok() {
        assert!(std::time::Instant::now() < deadline, "second poll never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hits.load(Ordering::SeqCst) >= 2);
    // Dropping the checker stops the poller.
    let before = hits.load(Ordering::SeqCst);
    drop(c);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(hits.load(Ordering::SeqCst) <= before + 1);
}

#[tokio::test]
async fn file_provider_with_yaml_ip_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ips.yaml");
    std::fs::write(&path, "whitelist:\n- 10.0.0.0/8\n").unwrap();
    let c = checker(
        &format!("  providerUrl: file://{}\n  entryType: IP_ADDRESSES\n", path.display()),
        Arc::new(ManualClock::default()),
    );
    c.refresh().await.unwrap();
    assert!(c.check(&value("10.1.2.3")).status.is_ok());
    assert!(!c.check(&value("11.1.2.3")).status.is_ok());
}
