//! Where a redirected connection was going: netfilter's `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6), read from the conntrack entry the REDIRECT made.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// The destination the caller dialled, when netfilter rewrote it; `None` for a connection
/// made to this address itself (explicit mode: no NAT, so no original destination, or
/// one that is the local address).
pub fn redirected(sock: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let local = sock.local_addr().ok()?;
    let original = original_dst(sock, local.is_ipv6()).ok()?;
    (canonical(original) != canonical(local)).then_some(original)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (dual-stack listeners see those).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// Reads the original destination; ENOENT when the connection was not NATed.
pub fn original_dst(sock: &impl AsRawFd, ipv6: bool) -> io::Result<SocketAddr> {
    if ipv6 {
        // A dual-stack socket's IPv4 connections keep their conntrack entry in the IPv4
        // table: ask IPv6 first, then IPv4.
        original_v6(sock.as_raw_fd()).or_else(|_| original_v4(sock.as_raw_fd()))
    } else {
        original_v4(sock.as_raw_fd())
    }
}

#[allow(unsafe_code)]
fn original_v4(fd: i32) -> io::Result<SocketAddr> {
    // SAFETY: `addr` is a properly aligned, zeroed sockaddr_in that lives across the call
    // and `len` holds its exact size, so the kernel writes at most that many bytes into
    // it; `fd` is borrowed from a socket the caller holds open for the call's duration.
    // All-zero bytes are a valid sockaddr_in (plain integers).
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: see above.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_IP, libc::SO_ORIGINAL_DST, (&raw mut addr).cast::<libc::c_void>(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if i32::from(addr.sin_family) != libc::AF_INET {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "SO_ORIGINAL_DST: not an IPv4 address"));
    }
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(addr.sin_port))))
}

#[allow(unsafe_code)]
fn original_v6(fd: i32) -> io::Result<SocketAddr> {
    // SAFETY: as in `original_v4`, with a zeroed sockaddr_in6 (plain integers and byte
    // arrays, valid when all zero) and its exact size.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: see above.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_IPV6,
            libc::IP6T_SO_ORIGINAL_DST,
            (&raw mut addr).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if i32::from(addr.sin6_family) != libc::AF_INET6 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "IP6T_SO_ORIGINAL_DST: not an IPv6 address"));
    }
    let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
    Ok(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(addr.sin6_port), addr.sin6_flowinfo, addr.sin6_scope_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_no_other_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        // Without conntrack the kernel has no entry (ENOENT); with it, the entry's
        // destination is this address. Either way: not redirected.
        assert_eq!(redirected(&sock), None);
        if let Ok(original) = original_dst(&sock, false) {
            assert_eq!(original, addr);
        }
    }

    #[test]
    fn mapped_addresses_compare_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "10.0.0.1:80".parse::<SocketAddr>().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }
}
