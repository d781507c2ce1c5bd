//! The Bookinfo services. Each forwards the `end-user` header, as Bookinfo's do, so that
//! user-based routing works along the whole call chain; productpage takes it from the
//! request's `end-user` header or from the user signed in on its page.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{page, user};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    ProductPage,
    Details,
    Reviews(u8),
    Ratings,
}

impl Service {
    pub fn name(self) -> String {
        match self {
            Service::ProductPage => "productpage".into(),
            Service::Details => "details".into(),
            Service::Reviews(_) => "reviews".into(),
            Service::Ratings => "ratings".into(),
        }
    }

    pub fn version(self) -> String {
        match self {
            Service::Reviews(v) => format!("v{v}"),
            _ => "v1".into(),
        }
    }

    pub fn workload(self) -> String {
        format!("{}-{}", self.name(), self.version())
    }

    /// Its Kubernetes service account, as Istio's bookinfo.yaml names them.
    pub fn service_account(self) -> String {
        format!("bookinfo-{}", self.name())
    }
}

type Http = Client<HttpConnector, Empty<Bytes>>;

/// Calls `host` (e.g. `reviews:9080`) through the sidecar's outbound listener.
async fn call(
    client: &Http,
    outbound: SocketAddr,
    host: &str,
    path: &str,
    user: Option<&str>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let mut req = Request::builder().uri(format!("http://{outbound}{path}")).header("host", host);
    if let Some(u) = user {
        req = req.header("end-user", u);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::String(String::from_utf8_lossy(&body).into()))))
}

fn json_reply(status: u16, v: Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

fn reply(status: u16, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static(content_type));
    r
}

async fn handle(svc: Service, outbound: SocketAddr, client: Http, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let id: u32 = path.rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or(0);
    match svc {
        Service::Details => json_reply(
            200,
            json!({"id": id, "author": "William Shakespeare", "year": 1595, "type": "paperback", "pages": 200,
                   "publisher": "PublisherA", "language": "English", "ISBN-10": "1234567890", "ISBN-13": "123-1234567890"}),
        ),
        Service::Ratings => json_reply(200, json!({"id": id, "ratings": {"Reviewer1": 5, "Reviewer2": 4}})),
        Service::Reviews(v) => reviews(svc, v, id, user::of(&req), outbound, &client).await,
        Service::ProductPage => match (req.method(), path.as_str()) {
            (&hyper::Method::POST, "/login") => user::login(req).await,
            (_, "/logout") => user::logout(),
            _ => product_page(&req, &path, outbound, &client).await,
        },
    }
}

async fn reviews(
    svc: Service,
    version: u8,
    id: u32,
    user: Option<String>,
    outbound: SocketAddr,
    client: &Http,
) -> Response<Full<Bytes>> {
    let mut reviews = json!([
        {"reviewer": "Reviewer1",
         "text": "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"},
        {"reviewer": "Reviewer2",
         "text": "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."}
    ]);
    if version > 1 {
        let color = if version == 2 { "black" } else { "red" };
        let ratings =
            call(client, outbound, "ratings:9080", &format!("/ratings/{id}"), user.as_deref(), Duration::from_secs(10))
                .await;
        let error = match ratings {
            Ok((200, r)) => {
                for (i, who) in ["Reviewer1", "Reviewer2"].iter().enumerate() {
                    reviews[i]["rating"] = json!({"stars": r["ratings"][who], "color": color});
                }
                None
            }
            Ok((code, body)) => Some(format!("Ratings service is currently unavailable ({code}: {body})")),
            Err(e) => Some(format!("Ratings service is currently unavailable ({e})")),
        };
        if let Some(error) = error {
            for i in 0..2 {
                reviews[i]["rating"] = json!({ "error": error });
            }
        }
    }
    json_reply(200, json!({"id": id, "podname": svc.workload(), "clustername": "null", "reviews": reviews}))
}

/// The product: JSON for API clients, HTML for browsers (see [`page::wants_html`]).
async fn product_page(
    req: &Request<Incoming>,
    path: &str,
    outbound: SocketAddr,
    client: &Http,
) -> Response<Full<Bytes>> {
    let user = user::of(req);
    let details = call(client, outbound, "details:9080", "/details/0", user.as_deref(), Duration::from_secs(3)).await;
    // Bookinfo's productpage gives reviews 3 s: the 7 s ratings delay for jason surfaces
    // here as "reviews unavailable".
    let reviews = call(client, outbound, "reviews:9080", "/reviews/0", user.as_deref(), Duration::from_secs(3)).await;
    let details = match details {
        Ok((200, d)) => d,
        other => json!({"error": format!("Sorry, product details are currently unavailable ({other:?})")}),
    };
    let reviews = match reviews {
        Ok((200, r)) => r,
        Ok((code, body)) => {
            json!({"error": format!("Sorry, product reviews are currently unavailable for this book ({code}: {body})")})
        }
        Err(e) => json!({"error": format!("Sorry, product reviews are currently unavailable for this book ({e})")}),
    };
    let product = json!({"product": "The Comedy of Errors", "user": user, "details": details, "reviews": reviews});
    let accept = req.headers().get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok());
    if !path.starts_with("/api/") && page::wants_html(accept) {
        return reply(200, "text/html; charset=utf-8", page::render(user.as_deref(), &product));
    }
    json_reply(200, product)
}

/// Serves `svc` on `listener`; its calls go out through `outbound` (its sidecar).
pub async fn serve(svc: Service, listener: TcpListener, outbound: SocketAddr) {
    let client: Http = Client::builder(TokioExecutor::new()).build_http();
    while let Ok((sock, _)) = listener.accept().await {
        let client = client.clone();
        tokio::spawn(async move {
            let handler = service_fn(move |req| {
                let client = client.clone();
                async move { Ok::<_, Infallible>(handle(svc, outbound, client, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(sock), handler).await;
        });
    }
}
