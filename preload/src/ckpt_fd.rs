//! The descriptors of a checkpoint that are neither files nor pipes:
//! eventfd, timerfd, signalfd and epoll (as `/proc/self/fdinfo` describes
//! them), unix socketpairs (paired through the table [`note_socketpair`]
//! keeps, their queues peeked, never consumed), bound UDP sockets and
//! listening TCP sockets (address, port, backlog, options).

use crate::ckpt::{fail, read_file, Fail, W};
use crate::sys::raw;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use ferry_image::sections::{
    EpollEntry, EpollSet, Eventfd, FdInfo, Signalfd, SockOpt, SocketInfo, Timerfd, Timespec,
    UnixPairEnd,
};
use ferry_image::write::FdBody;
use libc::*;

/// Socketpairs made since start, by the inodes of their two ends.
const PAIRS: usize = 4096;
#[allow(clippy::declare_interior_mutable_const)]
const NO_PAIR: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static PAIR_INODES: [[AtomicU64; 2]; PAIRS] = [NO_PAIR; PAIRS];
static NPAIRS: AtomicUsize = AtomicUsize::new(0);

fn inode(fd: i32) -> u64 {
    // SAFETY: a zeroed stat is a valid out-buffer.
    let mut st: stat = unsafe { core::mem::zeroed() };
    if raw(
        SYS_fstat,
        [fd as usize, &mut st as *mut stat as usize, 0, 0, 0, 0],
    ) < 0
    {
        return 0;
    }
    st.st_ino
}

/// After a successful `socketpair` whose descriptors are at `sv`: remember
/// that the two ends belong together.
pub fn note_socketpair(sv: usize) {
    // SAFETY: the kernel just wrote two descriptors there.
    let fds = unsafe { core::ptr::read_unaligned(sv as *const [i32; 2]) };
    let (a, b) = (inode(fds[0]), inode(fds[1]));
    if a == 0 || b == 0 {
        return;
    }
    // A slot whose inodes are free again is reused; else a new one.
    let n = NPAIRS.load(Ordering::Acquire);
    let i = (0..n)
        .find(|&i| {
            PAIR_INODES[i][0].load(Ordering::Relaxed) == a
                || PAIR_INODES[i][1].load(Ordering::Relaxed) == a
                || PAIR_INODES[i][0].load(Ordering::Relaxed) == b
                || PAIR_INODES[i][1].load(Ordering::Relaxed) == b
        })
        .unwrap_or_else(|| NPAIRS.fetch_add(1, Ordering::AcqRel));
    if i < PAIRS {
        PAIR_INODES[i][0].store(a, Ordering::Relaxed);
        PAIR_INODES[i][1].store(b, Ordering::Relaxed);
    }
}

/// The pair and end of the socket with inode `ino`.
fn pair_of(ino: u64) -> Option<(u64, u32)> {
    let n = NPAIRS.load(Ordering::Acquire).min(PAIRS);
    (0..n).find_map(|i| {
        let (a, b) = (
            PAIR_INODES[i][0].load(Ordering::Relaxed),
            PAIR_INODES[i][1].load(Ordering::Relaxed),
        );
        let id = a.min(b);
        if ino == a {
            Some((id, 0))
        } else if ino == b {
            Some((id, 1))
        } else {
            None
        }
    })
}

/// The value after `key` on its line of `text`, spaces trimmed.
fn field<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut rest = text;
    loop {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = &rest[..end];
        if let Some(v) = line.strip_prefix(key) {
            let skip = v.iter().take_while(|b| b.is_ascii_whitespace()).count();
            return Some(&v[skip..]);
        }
        if end >= rest.len() {
            return None;
        }
        rest = &rest[end + 1..];
    }
}

/// The number at the start of `s` in `radix`, and what follows it.
fn number(s: &[u8], radix: u32) -> Option<(u64, &[u8])> {
    let digits = s
        .iter()
        .take_while(|b| (**b as char).is_digit(radix))
        .count();
    if digits == 0 {
        return None;
    }
    let v = s[..digits].iter().try_fold(0u64, |a, &d| {
        a.checked_mul(radix as u64)?
            .checked_add((d as char).to_digit(radix)? as u64)
    })?;
    Some((v, &s[digits..]))
}

/// The number after `key` on its line of `text`, in `radix`.
pub(crate) fn field_num(text: &[u8], key: &[u8], radix: u32) -> Option<u64> {
    number(field(text, key)?, radix).map(|(v, _)| v)
}

/// `(sec, nsec)` as fdinfo prints a timespec.
fn field_pair(text: &[u8], key: &[u8]) -> Option<Timespec> {
    let v = field(text, key)?.strip_prefix(b"(")?;
    let (sec, rest) = number(v, 10)?;
    let rest = rest.strip_prefix(b",")?;
    let skip = rest.iter().take_while(|b| **b == b' ').count();
    let (nsec, _) = number(&rest[skip..], 10)?;
    Some(Timespec {
        sec: sec as i64,
        nsec: nsec as i64,
    })
}

fn fdinfo(fd: i32, buf: &mut [u8]) -> Result<usize, Fail> {
    let mut p = crate::sys::Line::new();
    let _ = core::fmt::Write::write_fmt(&mut p, format_args!("/proc/self/fdinfo/{fd}\0"));
    // SAFETY: the line ends in the NUL written above.
    let path = unsafe { core::ffi::CStr::from_ptr(p.as_bytes().as_ptr() as *const c_char) };
    read_file(path, buf).map_err(|e| fail("reading /proc/self/fdinfo", e))
}

fn sockopt_int(fd: i32, level: i32, name: i32) -> Option<i32> {
    let mut v = 0i32;
    let mut len = 4u32;
    let r = raw(
        SYS_getsockopt,
        [
            fd as usize,
            level as usize,
            name as usize,
            &mut v as *mut i32 as usize,
            &mut len as *mut u32 as usize,
            0,
        ],
    );
    (r == 0).then_some(v)
}

/// Write descriptor `fd` if it is of a kind this module knows; false if
/// not (the caller writes it as one the restorer cannot rebuild).
pub fn write(
    w: &mut W<'_>,
    mut info: FdInfo,
    fd: i32,
    st: &stat,
    link: &[u8],
    buf: &mut [u8],
) -> Result<bool, Fail> {
    let nonblock = info.status_flags & O_NONBLOCK as u32;
    if link == b"anon_inode:[eventfd]" {
        let n = fdinfo(fd, buf)?;
        let t = &buf[..n];
        let sem = field_num(t, b"eventfd-semaphore:", 10).unwrap_or(0) != 0;
        let body = Eventfd {
            count: field_num(t, b"eventfd-count:", 16).unwrap_or(0),
            flags: nonblock | if sem { EFD_SEMAPHORE as u32 } else { 0 },
            reserved: 0,
        };
        w.fd(&info, &FdBody::Eventfd(body), &[])?;
        return Ok(true);
    }
    if link == b"anon_inode:[timerfd]" {
        let n = fdinfo(fd, buf)?;
        let t = &buf[..n];
        let zero = Timespec { sec: 0, nsec: 0 };
        let body = Timerfd {
            clock: field_num(t, b"clockid:", 10).unwrap_or(0) as u32,
            flags: nonblock,
            settime_flags: field_num(t, b"settime flags:", 8).unwrap_or(0) as u32,
            reserved: 0,
            ticks: field_num(t, b"ticks:", 10).unwrap_or(0),
            interval: field_pair(t, b"it_interval:").unwrap_or(zero),
            value: field_pair(t, b"it_value:").unwrap_or(zero),
        };
        w.fd(&info, &FdBody::Timerfd(body), &[])?;
        return Ok(true);
    }
    if link == b"anon_inode:[signalfd]" {
        let n = fdinfo(fd, buf)?;
        let body = Signalfd {
            mask: field_num(&buf[..n], b"sigmask:", 16).unwrap_or(0),
            flags: nonblock,
            reserved: 0,
        };
        w.fd(&info, &FdBody::Signalfd(body), &[])?;
        return Ok(true);
    }
    if link == b"anon_inode:[eventpoll]" {
        let (text, rest) = buf.split_at_mut(buf.len() / 2);
        let n = fdinfo(fd, text)?;
        // SAFETY: scratch bytes viewed as plain-integer entries; the
        // buffer is 8-byte aligned at its halfway point (its length is a
        // multiple of 16).
        let entries: &mut [EpollEntry] = unsafe {
            core::slice::from_raw_parts_mut(
                rest.as_mut_ptr() as *mut EpollEntry,
                rest.len() / core::mem::size_of::<EpollEntry>(),
            )
        };
        let mut count = 0usize;
        for line in text[..n].split(|&b| b == b'\n') {
            let Some(v) = line.strip_prefix(b"tfd:") else {
                continue;
            };
            let skip = v.iter().take_while(|b| **b == b' ').count();
            let Some((tfd, _)) = number(&v[skip..], 10) else {
                continue;
            };
            let after = |key: &[u8]| {
                line.windows(key.len())
                    .position(|x| x == key)
                    .and_then(|p| {
                        let s = &line[p + key.len()..];
                        let k = s.iter().take_while(|b| **b == b' ').count();
                        number(&s[k..], 16).map(|(v, _)| v)
                    })
            };
            let events = after(b"events:");
            let data = after(b"data:");
            if count == entries.len() {
                return Err(fail("an epoll set with too many entries", E2BIG));
            }
            entries[count] = EpollEntry {
                fd: tfd as u32,
                events: events.unwrap_or(0) as u32,
                data: data.unwrap_or(0),
            };
            count += 1;
        }
        let set = EpollSet {
            count: count as u32,
            flags: 0,
        };
        w.fd(&info, &FdBody::Epoll(set, &entries[..count]), &[])?;
        return Ok(true);
    }
    if st.st_mode & S_IFMT != S_IFSOCK {
        return Ok(false);
    }
    let (Some(domain), Some(ty)) = (
        sockopt_int(fd, SOL_SOCKET, SO_DOMAIN),
        sockopt_int(fd, SOL_SOCKET, SO_TYPE),
    ) else {
        return Ok(false);
    };
    if domain == AF_UNIX {
        let Some((pair_id, end)) = pair_of(st.st_ino) else {
            return Ok(false);
        };
        let mut p = pollfd {
            fd,
            events: POLLRDHUP,
            revents: 0,
        };
        raw(SYS_poll, [&mut p as *mut pollfd as usize, 1, 0, 0, 0, 0]);
        let body = UnixPairEnd {
            pair_id,
            end,
            sock_type: ty as u32,
            shutdown: (p.revents & POLLRDHUP != 0) as u32,
            reserved: 0,
        };
        let n = peek_queue(fd, ty, buf)?;
        info.data_len = 0;
        w.fd(&info, &FdBody::UnixPair(body), &buf[..n])?;
        return Ok(true);
    }
    if domain != AF_INET && domain != AF_INET6 {
        return Ok(false);
    }
    let listening = sockopt_int(fd, SOL_SOCKET, SO_ACCEPTCONN) == Some(1);
    let udp = ty == SOCK_DGRAM;
    let Some(addr) = sock_name(SYS_getsockname, fd) else {
        return Ok(false);
    };
    let connected = sock_name(SYS_getpeername, fd).is_some();
    // As `socket` made it: no port (so no address) and no peer. A
    // replay's sockets are such, since it never binds or connects them.
    let unbound = ty == SOCK_STREAM && !listening && !connected && addr[2..4] == [0, 0];
    if !(udp || unbound || (ty == SOCK_STREAM && listening)) {
        return Ok(false);
    }
    // A connected UDP socket has a peer this format does not carry.
    if udp && connected {
        return Ok(false);
    }
    let port = u16::from_be_bytes([addr[2], addr[3]]);
    let mut body = SocketInfo {
        family: domain as u16,
        port,
        backlog: 0,
        addr: [0; 16],
        scope_id: 0,
        opt_count: 0,
    };
    if domain == AF_INET {
        body.addr[..4].copy_from_slice(&addr[4..8]);
    } else {
        body.addr.copy_from_slice(&addr[8..24]);
        body.scope_id = u32::from_ne_bytes([addr[24], addr[25], addr[26], addr[27]]);
    }
    if listening {
        // tcp_info's tcpi_sacked holds a listener's backlog.
        let mut ti = [0u32; 64];
        let mut tl = core::mem::size_of_val(&ti) as u32;
        let ok = raw(
            SYS_getsockopt,
            [
                fd as usize,
                IPPROTO_TCP as usize,
                TCP_INFO as usize,
                ti.as_mut_ptr() as usize,
                &mut tl as *mut u32 as usize,
                0,
            ],
        ) == 0;
        // struct tcp_info: 8 bytes of u8 fields, then rto, ato, snd_mss,
        // rcv_mss, unacked, sacked (the sixth u32 after them).
        body.backlog = if ok { ti[2 + 5] } else { SOMAXCONN as u32 };
    }
    let mut opts = [SockOpt {
        level: 0,
        name: 0,
        len: 0,
        value: [0; 20],
    }; 8];
    let mut n = 0usize;
    let mut wanted: [(i32, i32); 8] = [
        (SOL_SOCKET, SO_REUSEADDR),
        (SOL_SOCKET, SO_REUSEPORT),
        (SOL_SOCKET, SO_BROADCAST),
        (SOL_SOCKET, SO_RCVBUF),
        (SOL_SOCKET, SO_SNDBUF),
        (SOL_SOCKET, SO_KEEPALIVE),
        (IPPROTO_TCP, TCP_NODELAY),
        (IPPROTO_IPV6, IPV6_V6ONLY),
    ];
    if udp {
        wanted[5] = (SOL_SOCKET, SO_PRIORITY);
        wanted[6] = (IPPROTO_IP, IP_TOS);
    }
    for (level, name) in wanted {
        if level == IPPROTO_IPV6 && domain != AF_INET6 {
            continue;
        }
        if let Some(v) = sockopt_int(fd, level, name) {
            let mut value = [0u8; 20];
            value[..4].copy_from_slice(&v.to_ne_bytes());
            opts[n] = SockOpt {
                level,
                name,
                len: 4,
                value,
            };
            n += 1;
        }
    }
    body.opt_count = n as u32;
    let kind = if udp {
        FdBody::Udp(body, &opts[..n])
    } else if unbound {
        FdBody::TcpUnbound(body, &opts[..n])
    } else {
        FdBody::TcpListen(body, &opts[..n])
    };
    w.fd(&info, &kind, &[])?;
    Ok(true)
}

/// `getsockname` or `getpeername` (`nr`) of socket `fd`, as the kernel's
/// sockaddr bytes.
fn sock_name(nr: i64, fd: i32) -> Option<[u8; 128]> {
    let mut addr = [0u8; 128];
    let mut len = addr.len() as u32;
    let r = raw(
        nr,
        [
            fd as usize,
            addr.as_mut_ptr() as usize,
            &mut len as *mut u32 as usize,
            0,
            0,
            0,
        ],
    );
    (r == 0).then_some(addr)
}

/// What is queued for `fd` to read, peeked (the queue stays whole): the
/// bytes of a stream; for datagrams, each a u32 length and its bytes.
fn peek_queue(fd: i32, ty: i32, buf: &mut [u8]) -> Result<usize, Fail> {
    let old = sockopt_int(fd, SOL_SOCKET, SO_PEEK_OFF).unwrap_or(-1);
    let set = |v: i32| {
        raw(
            SYS_setsockopt,
            [
                fd as usize,
                SOL_SOCKET as usize,
                SO_PEEK_OFF as usize,
                &v as *const i32 as usize,
                4,
                0,
            ],
        )
    };
    if set(0) != 0 {
        return Err(fail("SO_PEEK_OFF on a unix socket", EINVAL));
    }
    let stream = ty == SOCK_STREAM;
    let mut n = 0usize;
    let mut result = Ok(());
    for _ in 0..1_000_000 {
        let head = if stream { 0 } else { 4 };
        if n + head >= buf.len() {
            result = Err(fail("a unix socket's queue is larger than 900 KiB", E2BIG));
            break;
        }
        let room = &mut buf[n + head..];
        let r = raw(
            SYS_recvfrom,
            [
                fd as usize,
                room.as_mut_ptr() as usize,
                room.len(),
                (MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC) as usize,
                0,
                0,
            ],
        );
        if r < 0 {
            if r != -(EAGAIN as isize) {
                result = Err(fail("peeking at a unix socket's queue", (-r) as i32));
            }
            break;
        }
        let got = r as usize;
        if got > room.len() {
            result = Err(fail("a unix socket's queue is larger than 900 KiB", E2BIG));
            break;
        }
        if stream {
            if got == 0 {
                break;
            }
            n += got;
        } else {
            buf[n..n + 4].copy_from_slice(&(got as u32).to_le_bytes());
            n += 4 + got;
        }
    }
    set(old);
    result.map(|_| n)
}

/// A POSIX timer section for each timer of the process, from
/// /proc/self/timers (id, signal, value, notification, clock) and
/// `timer_gettime` (interval, time left). `shown` maps a real tid to the
/// one the program knows.
pub fn posix_timers(w: &mut W<'_>, buf: &mut [u8], shown: impl Fn(u32) -> u32) -> Result<(), Fail> {
    let n = match read_file(c"/proc/self/timers", buf) {
        Ok(n) => n,
        // No timers file: a kernel without CONFIG_CHECKPOINT_RESTORE; a
        // process that has timers there cannot be checkpointed whole.
        Err(e) => return Err(fail("reading /proc/self/timers", e)),
    };
    let text = &buf[..n];
    // Blocks of lines, each starting with "ID: " at the start of a line
    // ("ClockID: " holds the same bytes).
    let starts = |at: usize| at == 0 || text[at - 1] == b'\n';
    let mut at = 0usize;
    while at < text.len() {
        let Some(p) = text[at..]
            .windows(4)
            .enumerate()
            .position(|(i, x)| x == b"ID: " && starts(at + i))
        else {
            break;
        };
        let begin = at + p;
        let next = text[begin + 4..]
            .windows(4)
            .enumerate()
            .position(|(i, x)| x == b"ID: " && starts(begin + 4 + i))
            .map_or(text.len(), |q| begin + 4 + q);
        let block = &text[begin..next];
        at = next;
        let Some(id) = field_num(block, b"ID:", 10) else {
            continue;
        };
        let (signo, value) = field(block, b"signal:")
            .and_then(|v| {
                let (sig, r) = number(v, 10)?;
                let (val, _) = number(r.strip_prefix(b"/")?, 16)?;
                Some((sig, val))
            })
            .unwrap_or((0, 0));
        let notify_text = field(block, b"notify:").unwrap_or(b"");
        let base = if notify_text.starts_with(b"none") {
            SIGEV_NONE
        } else if notify_text.starts_with(b"thread") {
            SIGEV_THREAD
        } else {
            SIGEV_SIGNAL
        };
        let slash = notify_text.iter().position(|&b| b == b'/').unwrap_or(0);
        let to_thread = notify_text[slash..].starts_with(b"/tid.");
        let target = number(&notify_text[(slash + 5).min(notify_text.len())..], 10)
            .map_or(0, |(v, _)| v as u32);
        let mut spec = [0i64; 4];
        raw(
            SYS_timer_gettime,
            [id as usize, spec.as_mut_ptr() as usize, 0, 0, 0, 0],
        );
        let t = ferry_image::sections::PosixTimer {
            id: id as i32,
            clock: field_num(block, b"ClockID:", 10).unwrap_or(0) as i32,
            notify: base | if to_thread { SIGEV_THREAD_ID } else { 0 },
            signo: signo as i32,
            value,
            notify_vtid: if to_thread { shown(target) } else { 0 },
            reserved: 0,
            interval: Timespec {
                sec: spec[0],
                nsec: spec[1],
            },
            remaining: Timespec {
                sec: spec[2],
                nsec: spec[3],
            },
        };
        w.posix_timer(&t)?;
    }
    Ok(())
}
