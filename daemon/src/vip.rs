//! The service address: added to an interface on the primary and announced
//! with a gratuitous ARP, removed on a demotion.
//!
//! `IP/PREFIX@IFACE`, e.g. `10.0.0.100/24@eth0`. The address is added with
//! `ip addr replace` and an IPv4 address is announced with a gratuitous ARP
//! ([`crate::garp`]); failures are logged, never fatal (the application
//! keeps running).

use std::net::IpAddr;
use std::process::Command;

use tracing::{info, warn};

/// A parsed service address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// The address.
    pub ip: IpAddr,
    /// The prefix length.
    pub prefix: u8,
    /// The interface.
    pub iface: String,
}

/// Parse `IP/PREFIX@IFACE`.
pub fn parse(s: &str) -> Result<Vip, String> {
    let (addr, iface) = s
        .split_once('@')
        .ok_or("expected IP/PREFIX@IFACE, e.g. 10.0.0.100/24@eth0")?;
    let (ip, prefix) = addr.split_once('/').ok_or("missing /PREFIX")?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(|| format!("prefix {prefix:?} is not 0..={max}"))?;
    if iface.is_empty()
        || iface.len() > 15
        || !iface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(format!("{iface:?} is not an interface name"));
    }
    Ok(Vip {
        ip,
        prefix,
        iface: iface.to_owned(),
    })
}

fn run(app: &str, what: &str, cmd: &mut Command) -> bool {
    match cmd.output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr);
            warn!(app, what, error = %err.trim(), "service address command failed");
            false
        }
        Err(e) => {
            warn!(app, what, error = %e, "cannot run the service address command");
            false
        }
    }
}

/// How long an added address lives unless renewed: the primary renews it
/// every [`RENEW_EVERY`] while it holds its lease, so that the address
/// leaves a host whose ferryd died or froze (its program may still run
/// there) within this time, by the kernel's own clock.
pub const LIFETIME_SECS: u32 = 2;
/// How often the primary renews the address.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Add (or renew) the address on its interface for [`LIFETIME_SECS`], and
/// announce it when `announce`. Logs at `info` only when `first`.
pub fn add(app: &str, vip: &str, first: bool, announce: bool) {
    let Ok(v) = parse(vip) else { return };
    let cidr = format!("{}/{}", v.ip, v.prefix);
    let lft = LIFETIME_SECS.to_string();
    let added = run(
        app,
        "ip addr replace",
        Command::new("ip").args([
            "addr",
            "replace",
            &cidr,
            "dev",
            &v.iface,
            "valid_lft",
            &lft,
            "preferred_lft",
            &lft,
        ]),
    );
    if !added {
        return;
    }
    if first {
        info!(app, vip, "service address added");
    }
    if !announce {
        return;
    }
    match v.ip {
        IpAddr::V4(ip) => match crate::garp::announce(&v.iface, ip) {
            Ok(()) if first => info!(app, vip, "gratuitous ARP sent"),
            Ok(()) => {}
            Err(e) => warn!(app, vip, error = %e, "cannot send a gratuitous ARP"),
        },
        IpAddr::V6(_) if first => {
            warn!(
                app,
                vip, "IPv6 service address: no unsolicited neighbour advertisement is sent"
            )
        }
        IpAddr::V6(_) => {}
    }
}

/// At start, when this node is no primary: remove the address if a
/// previous run left it on the interface (a crash before a demotion).
pub fn remove_stale(app: &str, vip: &str) {
    let Ok(v) = parse(vip) else { return };
    let present = Command::new("ip")
        .args(["-o", "addr", "show", "dev", &v.iface])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w == format!("{}/{}", v.ip, v.prefix))
        });
    if present {
        info!(app, vip, "removing the service address a previous run left");
        remove(app, vip);
    }
}

/// Remove the address from its interface.
pub fn remove(app: &str, vip: &str) {
    let Ok(v) = parse(vip) else { return };
    let cidr = format!("{}/{}", v.ip, v.prefix);
    if run(
        app,
        "ip addr del",
        Command::new("ip").args(["addr", "del", &cidr, "dev", &v.iface]),
    ) {
        info!(app, vip, "service address removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let v = parse("10.0.0.100/24@eth0").unwrap();
        assert_eq!(v.prefix, 24);
        assert_eq!(v.iface, "eth0");
        assert!(parse("10.0.0.100/24").is_err());
        assert!(parse("10.0.0.100/33@eth0").is_err());
        assert!(parse("10.0.0/24@eth0").is_err());
        assert!(parse("10.0.0.1/24@eth0; rm").is_err());
    }
}
