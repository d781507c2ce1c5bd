//! An upstream connection's byte stream: plain TCP, or TLS over it when the
//! DestinationRule says so. One type, so the HTTP/1.1 and HTTP/2 clients need no generics.

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

pub type Io = Either<TcpStream, Box<TlsStream<TcpStream>>>;

pub fn plain(tcp: TcpStream) -> Io {
    Either::Left(tcp)
}

pub fn tls(stream: TlsStream<TcpStream>) -> Io {
    Either::Right(Box::new(stream))
}

/// The TCP connection underneath, to see whether the peer closed it.
pub fn tcp(io: &Io) -> &TcpStream {
    match io {
        Either::Left(s) => s,
        Either::Right(s) => s.get_ref().0,
    }
}
