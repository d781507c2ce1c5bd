//! Bookinfo end to end: the stand-in services, a mixr-proxy per service and mixr, driven
//! through Istio's Bookinfo tasks (the same topology `bookinfo` runs as a demo).

use std::time::{Duration, Instant};

use mixr_bookinfo::topology::{Options, Scenario, Topology};
use serde_json::Value;

async fn page(topo: &Topology, user: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(topo.productpage());
    if let Some(u) = user {
        req = req.header("end-user", u);
    }
    let resp = req.send().await.expect("productpage answered");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_tasks() {
    let topo =
        Topology::start(&mixr_e2e::binary("mixr"), &mixr_e2e::binary("mixr-proxy"), Options::default()).await.unwrap();

    // mTLS is STRICT: ratings takes no plaintext; productpage, PERMISSIVE, does.
    let ratings = topo.inbound_addr("ratings-v1").unwrap();
    let plain =
        reqwest::Client::new().get(format!("http://{ratings}/ratings/0")).header("host", "ratings").send().await;
    assert!(plain.is_err(), "plaintext to a STRICT workload was answered: {plain:?}");

    // Request routing: jason gets reviews v2 (black stars), everyone else v1 (no stars).
    let (code, p) = page(&topo, Some("jason")).await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(p["reviews"]["podname"], "reviews-v2", "{p}");
    assert_eq!(p["reviews"]["reviews"][0]["rating"]["color"], "black");
    assert_eq!(p["reviews"]["reviews"][0]["rating"]["stars"], 5);
    assert_eq!(p["details"]["author"], "William Shakespeare");
    let (_, p) = page(&topo, None).await;
    assert_eq!(p["reviews"]["podname"], "reviews-v1");
    assert!(p["reviews"]["reviews"][0].get("rating").is_none());

    // Traffic shifting 50/50 between v1 and v3; the denier stops reviews-v3 from calling
    // ratings, so v3 shows the ratings error.
    topo.apply(Scenario::Split).await.unwrap();
    let (mut v1, mut v3) = (0, 0);
    for _ in 0..40 {
        let (_, p) = page(&topo, None).await;
        match p["reviews"]["podname"].as_str() {
            Some("reviews-v1") => v1 += 1,
            Some("reviews-v3") => {
                v3 += 1;
                let err = p["reviews"]["reviews"][0]["rating"]["error"].as_str().unwrap_or_default().to_string();
                assert!(
                    err.contains("403") && err.contains("PERMISSION_DENIED:denyreviewsv3.istio-system:Not allowed"),
                    "{err}"
                );
            }
            other => panic!("unexpected reviews {other:?}: {p}"),
        }
    }
    assert!(v1 >= 8 && v3 >= 8, "50/50 split gave v1={v1} v3={v3}");
    // Shifting the others does not move jason off his route.
    for _ in 0..10 {
        let (_, p) = page(&topo, Some("jason")).await;
        assert_eq!(p["reviews"]["podname"], "reviews-v2", "{p}");
    }

    // Fault injection: ratings aborts with 500 for jason; reviews v2 shows the error.
    topo.apply(Scenario::Abort).await.unwrap();
    let (_, p) = page(&topo, Some("jason")).await;
    let err = p["reviews"]["reviews"][0]["rating"]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("500"), "{p}");

    // A 7 s delay on ratings for jason: productpage gives reviews 3 s and gives up.
    topo.apply(Scenario::Delay).await.unwrap();
    let t = Instant::now();
    let (code, p) = page(&topo, Some("jason")).await;
    assert_eq!(code, 200);
    assert!(
        p["reviews"]["error"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Sorry, product reviews are currently unavailable"),
        "{p}"
    );
    assert!(t.elapsed() >= Duration::from_secs(3) && t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let (_, p) = page(&topo, None).await;
    assert_eq!(p["reviews"]["podname"], "reviews-v1", "other users are not delayed");

    // Rate limit: 3 product API calls per minute, then 429.
    let api = topo.productpage().replace("/productpage", "/api/v1/products");
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(reqwest::get(&api).await.unwrap().status().as_u16());
    }
    assert_eq!(codes, vec![200, 200, 200, 429]);

    // Metrics: the sidecars' reports reach mixr's Prometheus adapter.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = mixr_bookinfo::topology::http_get(topo.mixr_monitoring.parse().unwrap(), "/metrics").await.unwrap();
        let series = |labels: &[(&str, &str)]| mixr_e2e::sum_series(&m, "istio_requests_total", labels);
        if series(&[("destination_service", "reviews")]).is_some() && series(&[("response_code", "429")]).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "reports never reached mixr:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats =
        mixr_bookinfo::topology::http_get(topo.stats_addr("productpage-v1").unwrap(), "/metrics").await.unwrap();
    let sidecar = [("destination_service", "reviews"), ("reporter", "source")];
    assert!(mixr_e2e::sum_series(&stats, "mixr_proxy_requests_total", &sidecar).is_some(), "{stats}");
    // Istio's series come from mixr alone: the sidecar never exports them too.
    assert!(!stats.contains("istio_"), "{stats}");
}
