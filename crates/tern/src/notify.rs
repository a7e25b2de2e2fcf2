//! Readiness for a service manager, per systemd's notification protocol
//! (`sd_notify(3)`): when `NOTIFY_SOCKET` names a Unix datagram socket (a
//! path, or `@name` in the abstract namespace), tern sends `READY=1` once a
//! role serves (the moment it prints its ready line) and `STOPPING=1` when
//! it begins to shut down. Units with `Type=notify` then start what depends
//! on tern only after it serves. Without `NOTIFY_SOCKET` nothing is sent.
//!
//! A notification that cannot be sent is logged and otherwise ignored: the
//! service manager's start timeout is what catches a role that never says
//! it is ready.

use std::os::unix::net::UnixDatagram;

/// Sends `READY=1` with a one-line `STATUS=` (for `systemctl status`).
pub fn ready(status: &str) {
    send(&format!(
        "READY=1\nMAINPID={}\nSTATUS={}",
        std::process::id(),
        status.replace('\n', " ")
    ));
}

/// Sends `STOPPING=1`: the role is shutting down.
pub fn stopping() {
    send("STOPPING=1");
}

fn send(message: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let bytes = target.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)
            }
            None => socket.send_to(message.as_bytes(), &target),
        }
    });
    if let Err(e) = result {
        tracing::warn!(socket = ?target, "could not notify the service manager: {e}");
    }
}
