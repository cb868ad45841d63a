//! Gratuitous ARP on a raw `AF_PACKET` socket (needs `CAP_NET_RAW`): tells
//! the hosts of a link that an IPv4 address now lives at this interface's
//! hardware address. The one place in `ferryd` that opens a raw socket.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The 28-byte ARP packet announcing `ip` at `mac`: `op` 1 (a request for
/// its own address) or 2 (an unsolicited reply).
pub fn packet(mac: [u8; 6], ip: Ipv4Addr, op: u16) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&op.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    let target_mac = if op == 2 { BROADCAST } else { [0; 6] };
    p[18..24].copy_from_slice(&target_mac);
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// The hardware address of `iface` in this network namespace.
fn mac_of(iface: &str) -> io::Result<[u8; 6]> {
    // Asked of the kernel through a socket, which belongs to this process's
    // network namespace: `/sys/class/net` shows the namespace it was
    // mounted in, which differs for a daemon that entered a namespace with
    // setns (as on a test bench).
    // SAFETY: all-zero is a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::other(format!(
            "interface name {iface:?} is too long"
        )));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a datagram socket with no pointers.
    let fd = check("socket(AF_INET)", unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0)
    })?;
    // SAFETY: fd was just returned to us and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCGIFHWADDR fills the ifreq we pass, which outlives the call.
    check("ioctl(SIOCGIFHWADDR)", unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req)
    })?;
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != libc::ARPHRD_ETHER {
        return Err(io::Error::other(format!("{iface} has no Ethernet address")));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

fn check(op: &str, ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{op}: {e}")))
    } else {
        Ok(ret)
    }
}

/// Broadcast a gratuitous ARP request and reply for `ip` on `iface`.
pub fn announce(iface: &str, ip: Ipv4Addr) -> io::Result<()> {
    let name = CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: name is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let mac = mac_of(iface)?;
    // SAFETY: socket takes integer arguments and returns a new descriptor
    // or -1.
    let fd = check("socket(AF_PACKET)", unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    })?;
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&BROADCAST);
    for op in [1u16, 2] {
        let p = packet(mac, ip, op);
        // SAFETY: p and to are valid for the lengths given during the call.
        check("sendto", unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) as libc::c_int
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packet_announces_the_address_at_the_mac() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let ip = Ipv4Addr::new(10, 0, 0, 100);
        let p = packet(mac, ip, 1);
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &mac);
        assert_eq!(&p[14..18], &[10, 0, 0, 100]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 0, 0, 100]);
        let r = packet(mac, ip, 2);
        assert_eq!(&r[6..8], &[0, 2]);
        assert_eq!(&r[18..24], &[0xff; 6]);
    }

    #[test]
    fn an_unknown_interface_is_an_error() {
        assert!(announce("nosuchif0", Ipv4Addr::LOCALHOST).is_err());
    }
}
