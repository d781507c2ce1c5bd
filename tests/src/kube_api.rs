//! A stand-in for the Kubernetes API server, for `kubernetesenv` end to end: it answers
//! the Pod list with fixed pods, and each watch with an empty stream, over plain HTTP on
//! loopback. A kubeconfig file pointing at it is what mixr's handler is given.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A pod as the API returns it: `name` in `namespace`, with labels, IP and a
/// ReplicaSet owner named after `deployment`.
pub fn pod(namespace: &str, name: &str, deployment: &str, ip: &str, labels: &[(&str, &str)]) -> serde_json::Value {
    let hash = name.rsplit('-').nth(1).unwrap_or("0");
    let mut l: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    l.insert("pod-template-hash".into(), hash.into());
    serde_json::json!({
        "metadata": {
            "name": name, "namespace": namespace, "resourceVersion": "1", "labels": l,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{deployment}-{hash}"), "controller": true}]
        },
        "spec": {"serviceAccountName": format!("bookinfo-{deployment}"), "containers": [{"name": deployment, "ports": [{"containerPort": 9080}]}]},
        "status": {"phase": "Running", "podIP": ip, "hostIP": "10.128.0.1"}
    })
}

/// Serves `pods` until the runtime ends; returns the address.
pub async fn serve(pods: Vec<serde_json::Value>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let list = serde_json::json!({"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": pods}).to_string();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let list = list.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = if req.uri().query().is_some_and(|q| q.contains("watch=1")) {
                        String::new()
                    } else {
                        list.clone()
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(conn), service).await;
            });
        }
    });
    addr
}

/// A kubeconfig naming the stand-in at `addr`, written into `dir`.
pub fn kubeconfig(dir: &Path, addr: SocketAddr) -> PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: local\ncontexts:\n- name: local\n  context: {{cluster: local}}\nclusters:\n- name: local\n  cluster: {{server: 'http://{addr}'}}\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}
