//! An inbound connection under the workload's mTLS mode. A TLS record starts with its
//! content type, and a ClientHello's is handshake (22); no HTTP request starts with that
//! byte, so one peeked byte tells them apart without consuming anything.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::mode::Mode;
use super::{Mesh, MtlsError, PeerIdentity};

/// A TLS record's first byte when it carries a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

pub enum Inbound {
    Plain(TcpStream),
    Mutual(Box<TlsStream<TcpStream>>, Arc<PeerIdentity>),
}

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("plaintext to a STRICT workload")]
    Plaintext,
    #[error("mTLS without a certificate of our own: {0}")]
    NoCertificate(MtlsError),
    #[error("TLS handshake: {0}")]
    Handshake(String),
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("the peer certificate names no SPIFFE identity of the trust domain")]
    NoIdentity,
}

/// Takes the connection as `mode` says: a ClientHello gets the mTLS handshake (unless
/// DISABLE), plaintext is served unless STRICT. `first_byte_wait` bounds how long a
/// silent caller is waited for; `handshake_timeout`, the whole handshake.
pub async fn accept(
    mesh: &Mesh,
    mode: Mode,
    sock: TcpStream,
    first_byte_wait: Duration,
    handshake_timeout: Duration,
) -> Result<Inbound, Refused> {
    if mode == Mode::Disable {
        return Ok(Inbound::Plain(sock));
    }
    let mut first = [0u8; 1];
    let hello = match tokio::time::timeout(first_byte_wait, sock.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == TLS_HANDSHAKE,
        // Silent, closed or failed: not TLS, and the HTTP server deals with it as it would.
        _ => false,
    };
    if !hello {
        return if mode == Mode::Strict { Err(Refused::Plaintext) } else { Ok(Inbound::Plain(sock)) };
    }
    let config = mesh.server_config().map_err(Refused::NoCertificate)?;
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(sock);
    let stream = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Refused::Handshake(e.to_string())),
        Err(_) => return Err(Refused::Timeout),
    };
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or(Refused::NoIdentity)?;
    let identity = PeerIdentity::from_cert(leaf, &mesh.trust_domain).ok_or(Refused::NoIdentity)?;
    Ok(Inbound::Mutual(Box::new(stream), Arc::new(identity)))
}
