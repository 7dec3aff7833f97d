//! Raw socket setup the test programs share: listeners that are IPv6-only
//! for IPv6 (as a real pod's), connects from a marked socket, and closes
//! that reset.

use std::{
    io,
    mem::size_of,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    time::Duration,
};

/// A listening socket for `addr`. An IPv6 one is made IPv6-only: a dual-stack
/// socket would also take IPv4 connections, as IPv4-mapped addresses
/// (::ffff:a.b.c.d), which is not what a v4 client of a real pod sees.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    listen_with(addr, addr.is_ipv6())
}

/// A dual-stack listener on `[::]:port`, as iperf3, Go and Java servers open
/// by default: IPv4 clients arrive on it as `::ffff:a.b.c.d`.
pub fn listen_dual_stack(port: u16) -> io::Result<TcpListener> {
    listen_with(
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
        false,
    )
}

fn listen_with(addr: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    let socket = tcp_socket(addr)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    set_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)?;
    if addr.is_ipv6() {
        set_option(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &i32::from(v6_only),
        )?;
    }
    let (storage, len) = sockaddr(addr);
    // SAFETY: the address structure is initialised and its length given.
    let bound = unsafe {
        libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) == 0
            && libc::listen(fd, 1024) == 0
    };
    if !bound {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(socket))
}

/// A UDP socket bound to `addr`; an IPv6 one takes IPv6 only, as
/// [`listen`]'s listeners do.
pub fn udp_bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A TCP connection to `target` from a socket marked with `mark` (SO_MARK,
/// needs CAP_NET_ADMIN) before its connect when `mark` is not 0; a blocking
/// connect that gives up after `timeout`.
pub fn connect_marked(target: SocketAddr, mark: u32, timeout: Duration) -> io::Result<TcpStream> {
    let socket = tcp_socket(target)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
    if mark != 0 {
        set_option(fd, libc::SOL_SOCKET, libc::SO_MARK, &mark)?;
    }
    let timeout = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    set_option(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &timeout)?;
    let (storage, len) = sockaddr(target);
    // SAFETY: the address structure is initialised and its length given.
    if unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpStream::from(socket))
}

/// A new TCP socket of `addr`'s family.
fn tcp_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket has no memory arguments; the descriptor is owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt with a value of any plain type.
fn set_option<T>(fd: i32, level: i32, option: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid T for the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            option,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `addr` as the kernel's socket address structure.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage, and both sockaddr_in and
    // sockaddr_in6 fit in (and may be written through) a sockaddr_storage.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(v4) => {
                let sin =
                    &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                let sin6 = &mut *(&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }
}

/// SO_LINGER on with a zero timeout: the last close of `stream`'s socket
/// resets the connection (RST) instead of ending it with a FIN.
pub fn linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
