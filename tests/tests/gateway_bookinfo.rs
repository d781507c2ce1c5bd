//! Bookinfo through its ingress gateway (`bookinfo`'s topology): Istio's bookinfo-gateway
//! routes over HTTP and HTTPS, and Istio's ingress policies apply at the gateway.

use mixr_bookinfo::gateway::IngressPolicy;
use mixr_bookinfo::topology::{Options, Topology};
use mixr_e2e::gateway::https_get;

async fn start(ingress_policy: IngressPolicy) -> Topology {
    let options = Options { ingress_policy, ..Options::default() };
    Topology::start(&mixr_e2e::binary("mixr"), &mixr_e2e::binary("mixr-proxy"), options).await.unwrap()
}

async fn http(topo: &Topology, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut req = client
        .request(method.parse().unwrap(), format!("http://{}{path}", topo.gateway.http))
        .header("host", "bookinfo.example.com");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if method == "POST" {
        req = req.header("content-type", "application/x-www-form-urlencoded").body("username=jason");
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_is_served_through_its_gateway_over_http_and_https() {
    let topo = start(IngressPolicy::None).await;
    let (code, body) = http(&topo, "GET", "/productpage", &[("end-user", "jason")]).await;
    assert_eq!(code, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["reviews"]["podname"], "reviews-v2", "the mesh's routes apply behind the gateway: {page}");
    assert_eq!(http(&topo, "GET", "/static/bootstrap.css", &[]).await.0, 200);
    assert_eq!(http(&topo, "POST", "/login", &[]).await.0, 303);
    assert_eq!(http(&topo, "GET", "/logout", &[]).await.0, 303);
    let (code, body) = http(&topo, "GET", "/api/v1/products", &[]).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        http(&topo, "GET", "/details/0", &[]).await,
        (404, "no route (NR)\n".into()),
        "not opened to the outside"
    );

    let gw = &topo.gateway;
    let host = "bookinfo.example.com";
    let a = https_get(gw.https, host, host, "/productpage", &gw.ca_pem, None, &["h2", "http/1.1"], &[]).await.unwrap();
    assert_eq!((a.status, a.alpn.as_deref()), (200, Some("h2")), "{}", a.body);
    assert!(a.body.contains("William Shakespeare"), "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_ingress_denial_applies_at_the_bookinfo_gateway() {
    let topo = start(IngressPolicy::IngressDenial).await;
    let (code, body) = http(&topo, "GET", "/productpage", &[("x-user", "john")]).await;
    assert_eq!((code, body.as_str()), (403, "PERMISSION_DENIED:denyproductpagehandler.istio-system:Not allowed"));
    assert_eq!(http(&topo, "GET", "/productpage", &[("x-user", "testuser")]).await.0, 200);
    let gw = &topo.gateway;
    let host = "bookinfo.example.com";
    let john = [("x-user", "john")];
    let a = https_get(gw.https, host, host, "/productpage", &gw.ca_pem, None, &["http/1.1"], &john).await.unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    // Straight to productpage's sidecar, not through the gateway: the rule is the gateway's.
    let resp = reqwest::Client::new().get(topo.productpage()).header("x-user", "john").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_deny_ip_applies_at_the_bookinfo_gateway() {
    let topo = start(IngressPolicy::DenyIp).await;
    let (code, body) = http(&topo, "GET", "/productpage", &[]).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("127.0.0.1 is not whitelisted"), "{body}");
    let resp = reqwest::Client::new().get(topo.productpage()).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "callers that do not come through the gateway are not its policy's");
}
