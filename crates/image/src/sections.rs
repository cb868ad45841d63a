//! The fixed-layout parts of section payloads.
//!
//! A payload is the kind's fixed struct, then the variable data whose
//! lengths that struct gives, in the order documented on each struct. A
//! newer minor may append bytes after that; an older reader ignores them.
//! All structs are `repr(C)` with explicit padding, little-endian.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

macro_rules! layout {
    ($($(#[$m:meta])* pub struct $name:ident $body:tt = $size:expr;)*) => {
        $(
            $(#[$m])*
            #[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
            #[repr(C)]
            pub struct $name $body
            const _: () = assert!(core::mem::size_of::<$name>() == $size);
            impl $name {
                /// Size of the struct in the file.
                pub const LEN: usize = $size;
            }
        )*
    };
}

/// [`ProcessInfo::flags`]: the argument block is present.
pub const PROC_HAS_ARGV: u32 = 1 << 0;
/// [`ProcessInfo::flags`]: the environment block is present.
pub const PROC_HAS_ENV: u32 = 1 << 1;

/// `ThreadInfo::flags`: the thread was stopped in the shim's checkpoint
/// handler and resumes there (`resume_rip`, `resume_rsp`, `fs_base` of
/// `regs`); returning from the handler restores `regs`, the XSAVE area, the
/// mask and the alternate stack from the signal frame on its stack, which
/// is part of the image's memory. `regs` and the XSAVE area are then the
/// same state as the frame's, kept for checks and for tools.
pub const THREAD_PARKED: u32 = 1 << 0;

/// Number of resource limits (`RLIMIT_NLIMITS`).
pub const RLIMIT_COUNT: usize = 16;
/// Number of signal actions (signals 1 to 64).
pub const SIGNAL_COUNT: usize = 64;
/// Size of a `siginfo_t`.
pub const SIGINFO_LEN: usize = 128;

/// [`MappingInfo::flags`]: a private mapping (`MAP_PRIVATE`).
pub const MAP_PRIVATE: u32 = 1 << 0;
/// [`MappingInfo::flags`]: a shared mapping (`MAP_SHARED`).
pub const MAP_SHARED: u32 = 1 << 1;
/// [`MappingInfo::flags`]: anonymous memory.
pub const MAP_ANON: u32 = 1 << 2;
/// [`MappingInfo::flags`]: backed by the file at `path`.
pub const MAP_FILE: u32 = 1 << 3;
/// [`MappingInfo::flags`]: the main thread's stack (`[stack]`).
pub const MAP_STACK: u32 = 1 << 4;
/// [`MappingInfo::flags`]: the heap (`[heap]`).
pub const MAP_HEAP: u32 = 1 << 5;
/// [`MappingInfo::flags`]: grows down (`VM_GROWSDOWN`).
pub const MAP_GROWSDOWN: u32 = 1 << 6;
/// [`MappingInfo::flags`]: the mapped file was deleted.
pub const MAP_DELETED: u32 = 1 << 7;
/// [`MappingInfo::flags`], in an incremental image: the mapping's content
/// is all in this image (it was made, moved or re-made since the parent,
/// or is not tracked): no page of an older image applies to it.
pub const MAP_FRESH: u32 = 1 << 8;

/// [`MappingInfo::special`]: an ordinary mapping.
pub const SPECIAL_NONE: u32 = 0;
/// [`MappingInfo::special`]: `[vdso]`.
pub const SPECIAL_VDSO: u32 = 1;
/// [`MappingInfo::special`]: `[vvar]`.
pub const SPECIAL_VVAR: u32 = 2;
/// [`MappingInfo::special`]: `[vvar_vclock]` (Linux ≥ 6.13).
pub const SPECIAL_VVAR_VCLOCK: u32 = 3;

/// [`PageRun::kind`]: `count` pages of bytes follow the run header.
pub const RUN_DATA: u32 = 1;
/// [`PageRun::kind`]: `count` pages that are zero (in an incremental image:
/// became zero since the parent); no bytes follow.
pub const RUN_ZERO: u32 = 2;

/// [`FdInfo::kind`]: a regular file ([`RegularFile`]).
pub const FD_REGULAR: u16 = 1;
/// [`FdInfo::kind`]: one end of a pipe or FIFO ([`PipeEnd`]).
pub const FD_PIPE: u16 = 2;
/// [`FdInfo::kind`]: one end of a unix socketpair ([`UnixPairEnd`]).
pub const FD_UNIX_PAIR: u16 = 3;
/// [`FdInfo::kind`]: a listening TCP socket ([`SocketInfo`]).
pub const FD_TCP_LISTEN: u16 = 4;
/// [`FdInfo::kind`]: a UDP socket ([`SocketInfo`]).
pub const FD_UDP: u16 = 5;
/// [`FdInfo::kind`]: an epoll set ([`EpollSet`]).
pub const FD_EPOLL: u16 = 6;
/// [`FdInfo::kind`]: an eventfd ([`Eventfd`]).
pub const FD_EVENTFD: u16 = 7;
/// [`FdInfo::kind`]: a timerfd ([`Timerfd`]).
pub const FD_TIMERFD: u16 = 8;
/// [`FdInfo::kind`]: a signalfd ([`Signalfd`]).
pub const FD_SIGNALFD: u16 = 9;
/// [`FdInfo::kind`]: a descriptor the restorer cannot rebuild ([`OtherFd`]).
pub const FD_OTHER: u16 = 10;
/// [`FdInfo::kind`]: a TCP socket neither bound nor connected nor
/// listening, as `socket` made it ([`SocketInfo`], address and port zero).
pub const FD_TCP_UNBOUND: u16 = 11;

/// [`RegularFile::flags`]: the file was unlinked; its content is the
/// descriptor's data.
pub const REGULAR_UNLINKED: u32 = 1 << 0;

layout! {
    /// The process section. Followed by `cwd_len` bytes of the working
    /// directory, `exe_len` bytes of the executable's path, then (if
    /// [`PROC_HAS_ARGV`]) `argv_len` bytes of arguments and (if
    /// [`PROC_HAS_ENV`]) `env_len` bytes of environment, each a block of
    /// NUL-terminated strings.
    pub struct ProcessInfo {
        /// Virtual pid (equal to the file header's).
        pub vpid: u32,
        /// Virtual pid of the parent; 0 if the parent is not in the image.
        pub parent_vpid: u32,
        /// Virtual process group id.
        pub vpgid: u32,
        /// Virtual session id.
        pub vsid: u32,
        /// The umask.
        pub umask: u32,
        /// `personality(0xffffffff)`.
        pub personality: u32,
        /// `PROC_HAS_*` bits.
        pub flags: u32,
        /// Bytes of the working directory.
        pub cwd_len: u32,
        /// Bytes of the executable's path.
        pub exe_len: u32,
        /// Bytes of the argument block (0 without [`PROC_HAS_ARGV`]).
        pub argv_len: u32,
        /// Bytes of the environment block (0 without [`PROC_HAS_ENV`]).
        pub env_len: u32,
        /// The nice value of the main thread (-20 to 19).
        pub nice: i32,
        /// The thread name of the main thread (`comm`), NUL-padded.
        pub comm: [u8; 16],
    } = 64;

    /// One resource limit.
    pub struct Rlimit {
        /// Soft limit (`RLIM_INFINITY` is `u64::MAX`).
        pub cur: u64,
        /// Hard limit.
        pub max: u64,
    } = 16;

    /// The rlimits section: every limit, indexed by `RLIMIT_*`.
    pub struct Rlimits {
        /// `limits[RLIMIT_CPU]` … `limits[RLIMIT_RTTIME]`.
        pub limits: [Rlimit; RLIMIT_COUNT],
    } = 256;

    /// The x86_64 general registers in the layout of `struct
    /// user_regs_struct` (`<sys/user.h>`).
    pub struct UserRegs {
        pub r15: u64,
        pub r14: u64,
        pub r13: u64,
        pub r12: u64,
        pub rbp: u64,
        pub rbx: u64,
        pub r11: u64,
        pub r10: u64,
        pub r9: u64,
        pub r8: u64,
        pub rax: u64,
        pub rcx: u64,
        pub rdx: u64,
        pub rsi: u64,
        pub rdi: u64,
        pub orig_rax: u64,
        pub rip: u64,
        pub cs: u64,
        pub eflags: u64,
        pub rsp: u64,
        pub ss: u64,
        /// The thread's FS base (its TLS pointer).
        pub fs_base: u64,
        /// The thread's GS base.
        pub gs_base: u64,
        pub ds: u64,
        pub es: u64,
        pub fs: u64,
        pub gs: u64,
    } = 216;

    /// The thread section. Followed by `xsave_len` bytes of the XSAVE area.
    pub struct ThreadInfo {
        /// Virtual tid.
        pub vtid: u32,
        /// Zero.
        pub flags: u32,
        /// General registers, `fs_base` and `gs_base` included.
        pub regs: UserRegs,
        /// Blocked signals, bit `n - 1` for signal `n`.
        pub sigmask: u64,
        /// `sigaltstack`: `ss_sp`.
        pub altstack_sp: u64,
        /// `sigaltstack`: `ss_size`.
        pub altstack_size: u64,
        /// `sigaltstack`: `ss_flags`.
        pub altstack_flags: u32,
        /// Bytes of the XSAVE area that follows.
        pub xsave_len: u32,
        /// The registered rseq area's address (0: none).
        pub rseq_addr: u64,
        /// Its length.
        pub rseq_len: u32,
        /// Its signature.
        pub rseq_sig: u32,
        /// `set_robust_list` head (0: none).
        pub robust_list_head: u64,
        /// `set_robust_list` length.
        pub robust_list_len: u64,
        /// `set_tid_address` (`clear_child_tid`; 0: none).
        pub clear_child_tid: u64,
        /// With [`THREAD_PARKED`]: where the thread resumes, inside the
        /// shim's checkpoint handler.
        pub resume_rip: u64,
        /// With [`THREAD_PARKED`]: its stack pointer there.
        pub resume_rsp: u64,
    } = 312;

    /// The address space's bookkeeping in the kernel (`PR_SET_MM_MAP`'s
    /// fields), the CPU's register-state layout and the vDSO's identity.
    /// Followed by `auxv_len` bytes of the auxiliary vector.
    pub struct AddressSpace {
        /// Start of the executable's code.
        pub start_code: u64,
        /// End of its code.
        pub end_code: u64,
        /// Start of its data.
        pub start_data: u64,
        /// End of its data.
        pub end_data: u64,
        /// Start of the heap (`brk` area).
        pub start_brk: u64,
        /// The current `brk`.
        pub brk: u64,
        /// Start of the main thread's stack.
        pub start_stack: u64,
        /// Start of the argument strings.
        pub arg_start: u64,
        /// End of the argument strings.
        pub arg_end: u64,
        /// Start of the environment strings.
        pub env_start: u64,
        /// End of the environment strings.
        pub env_end: u64,
        /// `XCR0`: the register state the CPU saves (`xgetbv(0)`).
        pub xcr0: u64,
        /// Bytes of the XSAVE area this CPU writes in a signal frame.
        pub xsave_size: u32,
        /// CRC-32C of the `[vdso]` pages' content.
        pub vdso_crc: u32,
        /// Bytes of the `[vdso]` mapping.
        pub vdso_len: u64,
        /// Bytes of the auxiliary vector that follow.
        pub auxv_len: u32,
        /// Zero.
        pub reserved: u32,
    } = 120;

    /// One signal action (the kernel's `struct sigaction`).
    pub struct SigAction {
        /// `sa_handler` / `sa_sigaction` (0 `SIG_DFL`, 1 `SIG_IGN`).
        pub handler: u64,
        /// `sa_flags`.
        pub flags: u64,
        /// `sa_restorer`.
        pub restorer: u64,
        /// `sa_mask`, bit `n - 1` for signal `n`.
        pub mask: u64,
    } = 32;

    /// The signal-actions section: `actions[n - 1]` for signal `n`.
    pub struct SigActions {
        /// Signals 1 to 64.
        pub actions: [SigAction; SIGNAL_COUNT],
    } = 2048;

    /// The pending-signals section. Followed by `count` × 128 bytes, one
    /// `siginfo_t` each, in the order they would be delivered.
    pub struct PendingInfo {
        /// The thread they are pending on; 0 for the process-wide queue.
        pub vtid: u32,
        /// Number of `siginfo_t` that follow.
        pub count: u32,
    } = 8;

    /// The mapping section. Followed by `path_len` bytes of path (the file,
    /// or a name such as `[stack]`, `[vdso]`).
    pub struct MappingInfo {
        /// First address, page-aligned.
        pub start: u64,
        /// Address after the last byte, page-aligned, greater than `start`.
        pub end: u64,
        /// Offset in the file (page-aligned).
        pub offset: u64,
        /// Device of the file (`makedev(major, minor)`).
        pub device: u64,
        /// Inode of the file.
        pub inode: u64,
        /// `PROT_*` bits.
        pub prot: u32,
        /// `MAP_*` bits of this module: exactly one of [`MAP_PRIVATE`] and
        /// [`MAP_SHARED`].
        pub flags: u32,
        /// `SPECIAL_*`: the vDSO and vvar mappings are recorded where they
        /// were, never with content.
        pub special: u32,
        /// Bytes of the path.
        pub path_len: u32,
    } = 56;

    /// The pages section, for the mapping section before it. Followed by
    /// `run_count` runs, each a [`PageRun`] then (for [`RUN_DATA`])
    /// `count` × 4096 bytes.
    pub struct PagesInfo {
        /// The mapping's start address (equal to that mapping's).
        pub mapping_start: u64,
        /// Number of runs.
        pub run_count: u64,
    } = 16;

    /// One run of consecutive pages.
    pub struct PageRun {
        /// Address of the first page: page-aligned, inside the mapping,
        /// after the previous run.
        pub addr: u64,
        /// Number of pages, at least 1.
        pub count: u32,
        /// [`RUN_DATA`] or [`RUN_ZERO`].
        pub kind: u32,
    } = 16;

    /// The descriptor section. Followed by `body_len` bytes of the kind's
    /// body (its struct, then its variable part), then `data_len` bytes of
    /// data, streamed: an unlinked file's content, a pipe's unread bytes,
    /// a socketpair end's queued data; 0 for other kinds.
    pub struct FdInfo {
        /// The descriptor number.
        pub fd: u32,
        /// `F_GETFD` flags (`FD_CLOEXEC`).
        pub fd_flags: u32,
        /// `F_GETFL` status flags (`O_*`).
        pub status_flags: u32,
        /// `FD_*` kind of this module.
        pub kind: u16,
        /// Zero.
        pub reserved0: u16,
        /// Bytes of the body.
        pub body_len: u32,
        /// 0, or 1 + the number of a lower descriptor this one shares its
        /// open file description with (a `dup`): a restorer duplicates that
        /// one, and the data is left out (`data_len` 0).
        pub shares: u32,
        /// Bytes of data after the body.
        pub data_len: u64,
    } = 32;

    /// [`FD_REGULAR`] body. Followed by `path_len` bytes of path. An
    /// unlinked file ([`REGULAR_UNLINKED`]) carries its content as data.
    pub struct RegularFile {
        /// The file offset.
        pub offset: u64,
        /// `REGULAR_*` bits.
        pub flags: u32,
        /// Bytes of the path.
        pub path_len: u32,
    } = 16;

    /// [`FD_PIPE`] body. Followed by `path_len` bytes of the FIFO's path
    /// (0 for a pipe). The read end carries the unread bytes as data.
    pub struct PipeEnd {
        /// Same on both ends of one pipe; unique in the image.
        pub pipe_id: u64,
        /// 0 the read end, 1 the write end.
        pub end: u32,
        /// 1 for a FIFO, 0 for a pipe.
        pub fifo: u32,
        /// `F_GETPIPE_SZ`.
        pub capacity: u32,
        /// Bytes of the FIFO's path.
        pub path_len: u32,
    } = 24;

    /// [`FD_UNIX_PAIR`] body. The data is what is queued for this end to
    /// read: the bytes for `SOCK_STREAM`, else messages, each a u32 length
    /// and its bytes.
    pub struct UnixPairEnd {
        /// Same on both ends of one pair; unique in the image.
        pub pair_id: u64,
        /// 0 or 1.
        pub end: u32,
        /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
        pub sock_type: u32,
        /// This end's shutdown state: 1 reading shut (its peer shut down
        /// writing), 2 writing shut.
        pub shutdown: u32,
        /// Zero.
        pub reserved: u32,
    } = 24;

    /// [`FD_TCP_LISTEN`], [`FD_UDP`] and [`FD_TCP_UNBOUND`] body. Followed by `opt_count`
    /// [`SockOpt`].
    pub struct SocketInfo {
        /// `AF_INET` or `AF_INET6`.
        pub family: u16,
        /// Bound port, host order.
        pub port: u16,
        /// `listen` backlog (0 for UDP).
        pub backlog: u32,
        /// Bound address: 4 bytes for `AF_INET` then zeros, or 16.
        pub addr: [u8; 16],
        /// IPv6 scope id.
        pub scope_id: u32,
        /// Number of socket options that follow.
        pub opt_count: u32,
    } = 32;

    /// One socket option, as `getsockopt` gave it.
    pub struct SockOpt {
        /// `SOL_*` level.
        pub level: i32,
        /// Option name.
        pub name: i32,
        /// Bytes of `value` used (at most 20).
        pub len: u32,
        /// The value.
        pub value: [u8; 20],
    } = 32;

    /// [`FD_EPOLL`] body. Followed by `count` [`EpollEntry`].
    pub struct EpollSet {
        /// Number of entries.
        pub count: u32,
        /// `epoll_create1` flags.
        pub flags: u32,
    } = 8;

    /// One descriptor watched by an epoll set.
    pub struct EpollEntry {
        /// The watched descriptor.
        pub fd: u32,
        /// `EPOLL*` events.
        pub events: u32,
        /// The user data.
        pub data: u64,
    } = 16;

    /// [`FD_EVENTFD`] body.
    pub struct Eventfd {
        /// The counter.
        pub count: u64,
        /// `EFD_*` flags.
        pub flags: u32,
        /// Zero.
        pub reserved: u32,
    } = 16;

    /// A `struct timespec`.
    pub struct Timespec {
        /// Seconds.
        pub sec: i64,
        /// Nanoseconds.
        pub nsec: i64,
    } = 16;

    /// [`FD_TIMERFD`] body.
    pub struct Timerfd {
        /// `CLOCK_*`.
        pub clock: u32,
        /// `TFD_*` creation flags.
        pub flags: u32,
        /// `TFD_TIMER_*` flags of the last `timerfd_settime`.
        pub settime_flags: u32,
        /// Zero.
        pub reserved: u32,
        /// Expirations not yet read.
        pub ticks: u64,
        /// `it_interval`.
        pub interval: Timespec,
        /// `it_value`: time to the next expiration (0: disarmed).
        pub value: Timespec,
    } = 56;

    /// [`FD_SIGNALFD`] body.
    pub struct Signalfd {
        /// The signal mask, bit `n - 1` for signal `n`.
        pub mask: u64,
        /// `SFD_*` flags.
        pub flags: u32,
        /// Zero.
        pub reserved: u32,
    } = 16;

    /// [`FD_OTHER`] body. Followed by `desc_len` bytes saying what it was
    /// (the `/proc/self/fd` link, for example).
    pub struct OtherFd {
        /// Bytes of the description.
        pub desc_len: u32,
        /// Zero.
        pub reserved: u32,
    } = 8;

    /// One interval timer (`struct itimerval`).
    pub struct Itimer {
        /// `it_interval.tv_sec`.
        pub interval_sec: i64,
        /// `it_interval.tv_usec`.
        pub interval_usec: i64,
        /// `it_value.tv_sec` (time left).
        pub value_sec: i64,
        /// `it_value.tv_usec`.
        pub value_usec: i64,
    } = 32;

    /// The interval-timers section: `ITIMER_REAL`, `ITIMER_VIRTUAL`,
    /// `ITIMER_PROF`.
    pub struct Itimers {
        /// Indexed by `ITIMER_*`.
        pub timers: [Itimer; 3],
    } = 96;

    /// The POSIX-timer section: one `timer_create` timer.
    pub struct PosixTimer {
        /// The timer id the program holds.
        pub id: i32,
        /// `CLOCK_*`.
        pub clock: i32,
        /// `sigev_notify`.
        pub notify: i32,
        /// `sigev_signo`.
        pub signo: i32,
        /// `sigev_value`.
        pub value: u64,
        /// The thread for `SIGEV_THREAD_ID` (virtual tid; 0 otherwise).
        pub notify_vtid: u32,
        /// Zero.
        pub reserved: u32,
        /// `it_interval`.
        pub interval: Timespec,
        /// `it_value`: time to the next expiration (0: disarmed).
        pub remaining: Timespec,
    } = 64;

    /// The end section.
    pub struct End {
        /// Sections before this one.
        pub sections: u64,
        /// Offset of this section's header (bytes before it).
        pub bytes: u64,
        /// CRC-32C of those bytes (the file from offset 0 to this header).
        pub running_crc: u32,
        /// Zero.
        pub reserved: u32,
    } = 24;
}

/// The fixed size of a descriptor kind's body struct, if the kind is known.
pub fn fd_body_len(kind: u16) -> Option<usize> {
    Some(match kind {
        FD_REGULAR => RegularFile::LEN,
        FD_PIPE => PipeEnd::LEN,
        FD_UNIX_PAIR => UnixPairEnd::LEN,
        FD_TCP_LISTEN | FD_UDP | FD_TCP_UNBOUND => SocketInfo::LEN,
        FD_EPOLL => EpollSet::LEN,
        FD_EVENTFD => Eventfd::LEN,
        FD_TIMERFD => Timerfd::LEN,
        FD_SIGNALFD => Signalfd::LEN,
        FD_OTHER => OtherFd::LEN,
        _ => return None,
    })
}
