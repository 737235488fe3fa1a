//! Free loopback ports for a sandbox, chosen so that nothing else takes
//! them between the choice and the bind.
//!
//! Two things could: the kernel, which hands out ports of its ephemeral
//! range (`net.ipv4.ip_local_port_range`) to every outgoing connection and
//! to every `bind(0)`, and another sandbox started at the same moment (tests
//! run in parallel), which may pick a port this one has chosen but whose
//! owner (`pgdr run`'s controller or proxies) binds it only later. So ports
//! come from below the ephemeral range, and each is reserved by binding
//! the abstract Unix socket name `pgdr-port-<port>`, which only one socket
//! of the machine (of its network namespace) can hold, until this process
//! exits. Abstract names leave no file behind.

use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;
use std::sync::Mutex;

use crate::SandboxError;

/// The reservations of this process: held until it exits.
static HELD: Mutex<Vec<UnixListener>> = Mutex::new(Vec::new());

/// Lowest port handed out; the top is the ephemeral range's start.
const LOW: u16 = 15000;

/// `count` distinct free loopback ports, reserved for this process (until
/// it exits): for the sandbox, and for tests and tools that start servers
/// of their own beside sandboxes.
pub fn reserve(count: usize) -> Result<Vec<u16>, SandboxError> {
    let high = ephemeral_start();
    if high <= LOW || usize::from(high - LOW) < count * 8 {
        return kernel_ports(count);
    }
    let span = high - LOW;
    let start = rand::random::<u16>() % span;
    let mut out = Vec::with_capacity(count);
    let mut held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    for i in 0..span {
        if out.len() == count {
            break;
        }
        let port = LOW + (start + i) % span;
        let Some(lock) = try_reserve(port) else { continue };
        // Bound by someone outside the sandboxes (or by this process).
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        held.push(lock);
        out.push(port);
    }
    if out.len() < count {
        return Err(SandboxError::Topology(format!(
            "only {} of {count} loopback ports between {LOW} and {high} are free",
            out.len()
        )));
    }
    Ok(out)
}

/// The reservation of `port`, unless another process (or this one) holds it.
fn try_reserve(port: u16) -> Option<UnixListener> {
    let name = SocketAddr::from_abstract_name(format!("pgdr-port-{port}")).ok()?;
    UnixListener::bind_addr(&name).ok()
}

/// The first port of the kernel's ephemeral range (32768 when unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Ports the kernel picks (all bound at once so they differ): the fallback
/// when the ephemeral range leaves no room below it.
fn kernel_ports(count: usize) -> Result<Vec<u16>, SandboxError> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(SandboxError::io(Path::new("127.0.0.1:0")))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(SandboxError::io(Path::new("127.0.0.1:0"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let a = reserve(40).expect("40 ports");
        let b = reserve(40).expect("40 more ports");
        let mut all: Vec<u16> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 80, "two reservations in one process never share a port");
        let high = ephemeral_start();
        for p in all {
            if high > LOW {
                assert!((LOW..high).contains(&p), "{p} outside {LOW}..{high}");
            }
            TcpListener::bind(("127.0.0.1", p)).unwrap_or_else(|e| panic!("{p} not bindable: {e}"));
        }
    }
}
