//! Codes of libc-level calls ([`crate::Kind::Call`]) and names of calls for
//! messages.

/// A libc-level call the shim logs as one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Call {
    /// `pthread_mutex_lock` (also timed and try variants); `ret` is the result.
    MutexLock = 1,
    /// `pthread_cond_wait` / `pthread_cond_timedwait` returned with the mutex.
    CondWait = 2,
    /// `pthread_rwlock_rdlock` and variants.
    RwlockRead = 3,
    /// `pthread_rwlock_wrlock` and variants.
    RwlockWrite = 4,
    /// `sem_wait` and variants.
    SemWait = 5,
    /// `pthread_create`; `ret` is the result, `arg0` the new thread's vtid.
    ThreadCreate = 6,
    /// `pthread_join`; `arg0` the joined thread's vtid.
    ThreadJoin = 7,
    /// `fork`/`vfork`/a process-creating `clone`; `ret` is the child's vpid.
    Fork = 8,
    /// `posix_spawn`/`posix_spawnp`; `ret` the result, `arg0` the child's vpid.
    Spawn = 9,
}

impl Call {
    /// Parse a call code.
    pub fn from_u32(v: u32) -> Option<Call> {
        Some(match v {
            1 => Call::MutexLock,
            2 => Call::CondWait,
            3 => Call::RwlockRead,
            4 => Call::RwlockWrite,
            5 => Call::SemWait,
            6 => Call::ThreadCreate,
            7 => Call::ThreadJoin,
            8 => Call::Fork,
            9 => Call::Spawn,
            _ => return None,
        })
    }

    /// The name a user knows the call by.
    pub fn name(self) -> &'static str {
        match self {
            Call::MutexLock => "pthread_mutex_lock",
            Call::CondWait => "pthread_cond_wait",
            Call::RwlockRead => "pthread_rwlock_rdlock",
            Call::RwlockWrite => "pthread_rwlock_wrlock",
            Call::SemWait => "sem_wait",
            Call::ThreadCreate => "pthread_create",
            Call::ThreadJoin => "pthread_join",
            Call::Fork => "fork",
            Call::Spawn => "posix_spawn",
        }
    }
}

/// The name of an x86_64 system call, for messages; "syscall" when unknown.
pub fn syscall_name(nr: u32) -> &'static str {
    SYSCALL_NAMES.get(nr as usize).copied().unwrap_or("syscall")
}

/// x86_64 syscall names by number (Linux 6.x, 0..=462).
static SYSCALL_NAMES: &[&str] = &[
    "read", "write", "open", "close", "stat", "fstat", "lstat", "poll", "lseek", "mmap",
    "mprotect", "munmap", "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "ioctl",
    "pread64", "pwrite64", "readv", "writev", "access", "pipe", "select", "sched_yield",
    "mremap", "msync", "mincore", "madvise", "shmget", "shmat", "shmctl", "dup", "dup2",
    "pause", "nanosleep", "getitimer", "alarm", "setitimer", "getpid", "sendfile", "socket",
    "connect", "accept", "sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown", "bind",
    "listen", "getsockname", "getpeername", "socketpair", "setsockopt", "getsockopt", "clone",
    "fork", "vfork", "execve", "exit", "wait4", "kill", "uname", "semget", "semop", "semctl",
    "shmdt", "msgget", "msgsnd", "msgrcv", "msgctl", "fcntl", "flock", "fsync", "fdatasync",
    "truncate", "ftruncate", "getdents", "getcwd", "chdir", "fchdir", "rename", "mkdir",
    "rmdir", "creat", "link", "unlink", "symlink", "readlink", "chmod", "fchmod", "chown",
    "fchown", "lchown", "umask", "gettimeofday", "getrlimit", "getrusage", "sysinfo", "times",
    "ptrace", "getuid", "syslog", "getgid", "setuid", "setgid", "geteuid", "getegid",
    "setpgid", "getppid", "getpgrp", "setsid", "setreuid", "setregid", "getgroups",
    "setgroups", "setresuid", "getresuid", "setresgid", "getresgid", "getpgid", "setfsuid",
    "setfsgid", "getsid", "capget", "capset", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigqueueinfo", "rt_sigsuspend", "sigaltstack", "utime", "mknod", "uselib",
    "personality", "ustat", "statfs", "fstatfs", "sysfs", "getpriority", "setpriority",
    "sched_setparam", "sched_getparam", "sched_setscheduler", "sched_getscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "mlock",
    "munlock", "mlockall", "munlockall", "vhangup", "modify_ldt", "pivot_root", "_sysctl",
    "prctl", "arch_prctl", "adjtimex", "setrlimit", "chroot", "sync", "acct", "settimeofday",
    "mount", "umount2", "swapon", "swapoff", "reboot", "sethostname", "setdomainname", "iopl",
    "ioperm", "create_module", "init_module", "delete_module", "get_kernel_syms",
    "query_module", "quotactl", "nfsservctl", "getpmsg", "putpmsg", "afs_syscall", "tuxcall",
    "security", "gettid", "readahead", "setxattr", "lsetxattr", "fsetxattr", "getxattr",
    "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr", "removexattr",
    "lremovexattr", "fremovexattr", "tkill", "time", "futex", "sched_setaffinity",
    "sched_getaffinity", "set_thread_area", "io_setup", "io_destroy", "io_getevents",
    "io_submit", "io_cancel", "get_thread_area", "lookup_dcookie", "epoll_create",
    "epoll_ctl_old", "epoll_wait_old", "remap_file_pages", "getdents64", "set_tid_address",
    "restart_syscall", "semtimedop", "fadvise64", "timer_create", "timer_settime",
    "timer_gettime", "timer_getoverrun", "timer_delete", "clock_settime", "clock_gettime",
    "clock_getres", "clock_nanosleep", "exit_group", "epoll_wait", "epoll_ctl", "tgkill",
    "utimes", "vserver", "mbind", "set_mempolicy", "get_mempolicy", "mq_open", "mq_unlink",
    "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr", "kexec_load", "waitid",
    "add_key", "request_key", "keyctl", "ioprio_set", "ioprio_get", "inotify_init",
    "inotify_add_watch", "inotify_rm_watch", "migrate_pages", "openat", "mkdirat", "mknodat",
    "fchownat", "futimesat", "newfstatat", "unlinkat", "renameat", "linkat", "symlinkat",
    "readlinkat", "fchmodat", "faccessat", "pselect6", "ppoll", "unshare", "set_robust_list",
    "get_robust_list", "splice", "tee", "sync_file_range", "vmsplice", "move_pages",
    "utimensat", "epoll_pwait", "signalfd", "timerfd_create", "eventfd", "fallocate",
    "timerfd_settime", "timerfd_gettime", "accept4", "signalfd4", "eventfd2", "epoll_create1",
    "dup3", "pipe2", "inotify_init1", "preadv", "pwritev", "rt_tgsigqueueinfo",
    "perf_event_open", "recvmmsg", "fanotify_init", "fanotify_mark", "prlimit64",
    "name_to_handle_at", "open_by_handle_at", "clock_adjtime", "syncfs", "sendmmsg", "setns",
    "getcpu", "process_vm_readv", "process_vm_writev", "kcmp", "finit_module",
    "sched_setattr", "sched_getattr", "renameat2", "seccomp", "getrandom", "memfd_create",
    "kexec_file_load", "bpf", "execveat", "userfaultfd", "membarrier", "mlock2",
    "copy_file_range", "preadv2", "pwritev2", "pkey_mprotect", "pkey_alloc", "pkey_free",
    "statx", "io_pgetevents", "rseq",
];

/// Names of the syscalls numbered from 424 on (the numbers 335..=423 are unused
/// on x86_64).
static SYSCALL_NAMES_424: &[&str] = &[
    "pidfd_send_signal", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "pidfd_open",
    "clone3", "close_range", "openat2", "pidfd_getfd", "faccessat2", "process_madvise",
    "epoll_pwait2", "mount_setattr", "quotactl_fd", "landlock_create_ruleset",
    "landlock_add_rule", "landlock_restrict_self", "memfd_secret", "process_mrelease",
    "futex_waitv", "set_mempolicy_home_node", "cachestat", "fchmodat2", "map_shadow_stack",
    "futex_wake", "futex_wait", "futex_requeue", "statmount", "listmount",
    "lsm_get_self_attr", "lsm_set_self_attr", "lsm_list_modules", "mseal",
];

/// The name of a call recorded with `kind` and `nr`, for messages.
pub fn call_name(kind: crate::Kind, nr: u32) -> &'static str {
    match kind {
        crate::Kind::Syscall if nr >= 424 => {
            SYSCALL_NAMES_424.get(nr as usize - 424).copied().unwrap_or("syscall")
        }
        crate::Kind::Syscall => syscall_name(nr),
        crate::Kind::Call => Call::from_u32(nr).map(Call::name).unwrap_or("call"),
        crate::Kind::Signal => "signal",
        crate::Kind::Start => "start",
        crate::Kind::Exec => "execve",
        crate::Kind::End => "end",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_kernel_numbering() {
        assert_eq!(syscall_name(0), "read");
        assert_eq!(syscall_name(59), "execve");
        assert_eq!(syscall_name(202), "futex");
        assert_eq!(syscall_name(257), "openat");
        assert_eq!(syscall_name(318), "getrandom");
        assert_eq!(syscall_name(334), "rseq");
        assert_eq!(call_name(crate::Kind::Syscall, 435), "clone3");
        assert_eq!(call_name(crate::Kind::Syscall, 436), "close_range");
        assert_eq!(call_name(crate::Kind::Syscall, 999), "syscall");
    }
}
