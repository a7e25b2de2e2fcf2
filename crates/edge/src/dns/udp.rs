//! Batched UDP I/O for the DNS workers: `recvmmsg` takes every query waiting
//! on the socket (up to [`BATCH`]) in one system call and `sendmmsg` sends
//! their answers in one more, instead of two calls per query. Under load the
//! system calls, not the answers, are most of a query's cost.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::SockAddr;

/// Queries taken per system call.
pub const BATCH: usize = 32;
/// Receive buffer per query; a longer datagram is cut and then fails to parse (FORMERR).
const QUERY_MAX: usize = 4096;

pub struct Batch {
    bufs: Vec<[u8; QUERY_MAX]>,
    addrs: Vec<libc::sockaddr_storage>,
    lens: Vec<usize>,
    count: usize,
}

impl Batch {
    pub fn new() -> Batch {
        Batch {
            bufs: vec![[0u8; QUERY_MAX]; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            lens: vec![0; BATCH],
            count: 0,
        }
    }

    /// Blocks until at least one datagram arrives (or the socket's read
    /// timeout passes), then takes every one waiting, up to [`BATCH`].
    pub fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: iovec and mmsghdr are plain old data.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iovecs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iovecs[i].iov_len = QUERY_MAX;
            msgs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msgs[i].msg_hdr.msg_iov = &mut iovecs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every pointer in `msgs` points into buffers owned by `self`
        // or by this frame, valid and large enough for the lengths given,
        // and they outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        for (i, msg) in msgs.iter().enumerate().take(self.count) {
            self.lens[i] = (msg.msg_len as usize).min(QUERY_MAX);
        }
        Ok(self.count)
    }

    /// The `i`-th datagram received and its sender, if the address is IPv4 or IPv6.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.count {
            return None;
        }
        let addr = to_socket_addr(&self.addrs[i])?;
        Some((&self.bufs[i][..self.lens[i]], addr))
    }
}

/// Reads an IPv4 or IPv6 address the kernel wrote into `storage`.
fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large enough for.
            let sin: &libc::sockaddr_in =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(sin.sin_port)))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

impl Default for Batch {
    fn default() -> Self {
        Batch::new()
    }
}

/// Sends each answer to its address, in as few system calls as the kernel allows.
pub fn send_all(socket: &UdpSocket, answers: &[(Vec<u8>, SocketAddr)]) {
    let mut sent = 0;
    while sent < answers.len() {
        let chunk = &answers[sent..answers.len().min(sent + BATCH)];
        let addrs: Vec<SockAddr> = chunk.iter().map(|(_, a)| SockAddr::from(*a)).collect();
        // SAFETY: plain old data.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, (bytes, _)) in chunk.iter().enumerate() {
            iovecs[i].iov_base = bytes.as_ptr() as *mut libc::c_void;
            iovecs[i].iov_len = bytes.len();
            msgs[i].msg_hdr.msg_name = addrs[i].as_ptr() as *mut libc::c_void;
            msgs[i].msg_hdr.msg_namelen = addrs[i].len();
            msgs[i].msg_hdr.msg_iov = &mut iovecs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the pointers refer to `chunk` and `addrs`, alive across the
        // call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                chunk.len() as libc::c_uint,
                0,
            )
        };
        if n <= 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // One bad destination must not stop the others: skip it.
            tracing::debug!(error = %e, to = %chunk[0].1, "dns udp send failed");
            sent += 1;
            continue;
        }
        sent += n as usize;
    }
}
