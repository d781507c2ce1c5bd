//! Upgrade passthrough (WebSocket and friends): the request goes upstream as is; when the
//! upstream agrees (101), the two connections are spliced and bytes flow both ways until
//! either side closes.

use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;

use crate::body::{ProxyBody, empty, reply};

/// Whether the request asks to switch protocols.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    wants_upgrade(req.headers())
}

pub fn wants_upgrade(headers: &hyper::HeaderMap) -> bool {
    crate::http1::has_field(headers, &hyper::header::UPGRADE) && crate::http1::connection_has(headers, "upgrade")
}

/// Sends an upgrade request to the picked endpoint on a connection of its own (within the
/// cluster's `connectTimeout`) and splices the connections on 101. A request body goes
/// with the request, framed as it was read (its length, or chunked): an upgrade never
/// announces a length it does not send.
pub async fn forward(
    pool: &crate::pool::Pool,
    target: &crate::upstream::InFlight,
    mut req: Request<ProxyBody>,
) -> Response<ProxyBody> {
    let downstream = hyper::upgrade::on(&mut req);
    // The caller's connection counts against its listener's ceiling while spliced.
    let held = req.extensions_mut().remove::<std::sync::Arc<crate::listener::OpenConnection>>();
    let (mut parts, body) = req.into_parts();
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    if let Ok(uri) = pq.parse::<Uri>() {
        parts.uri = uri;
    }
    // hyper frames the body from its size; a caller's length could disagree with it.
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    let up = Request::from_parts(parts, body);
    let mut resp = match pool.send_upgrade(&target.target(), up).await {
        Ok(r) => r,
        Err(_) => return reply(503, "upstream connect error (upgrade)\n"),
    };
    if resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return resp.map(crate::body::stream);
    }
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let _held = held;
        let (Ok(down), Ok(up)) = (downstream.await, upstream.await) else { return };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, empty())
}
