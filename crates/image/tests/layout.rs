//! `docs/IMAGE-FORMAT.md` gives the offset and size of every field of
//! every fixed-layout struct; this test holds the document to the code.

use ferry_image::manifest::{ManifestEntry, ManifestHeader, ReplayPosition};
use ferry_image::sections::*;
use ferry_image::{FileHeader, SectionHeader};
use std::collections::BTreeMap;
use zerocopy::FromZeros;

/// (field, offset, size) of every field, in order.
type Fields = Vec<(&'static str, usize, usize)>;

macro_rules! fields {
    ($t:ty { $($f:ident),* $(,)? }) => {{
        let v = <$t>::new_zeroed();
        let fields: Fields = vec![$(
            (stringify!($f), core::mem::offset_of!($t, $f), core::mem::size_of_val(&v.$f)),
        )*];
        // The list is complete: the fields add up to the struct.
        let total: usize = fields.iter().map(|f| f.2).sum();
        assert_eq!(total, core::mem::size_of::<$t>(), "{} fields missing", stringify!($t));
        (stringify!($t), (core::mem::size_of::<$t>(), fields))
    }};
}

fn code() -> BTreeMap<&'static str, (usize, Fields)> {
    BTreeMap::from([
        fields!(FileHeader {
            magic,
            major,
            minor,
            header_len,
            vpid,
            flags,
            seq,
            parent_seq,
            created_ns,
            reserved,
            crc
        }),
        fields!(SectionHeader {
            kind,
            flags,
            index,
            payload_len,
            payload_crc,
            reserved,
            crc
        }),
        fields!(ManifestHeader {
            magic,
            major,
            minor,
            header_len,
            seq,
            parent_seq,
            created_ns,
            process_count,
            entry_len,
            parent_dir_len,
            reserved,
            body_crc,
            crc
        }),
        fields!(ReplayPosition {
            flags,
            prefix_crc,
            records,
            gseq,
            reserved
        }),
        fields!(ManifestEntry {
            vpid,
            parent_vpid,
            file_len,
            file_crc,
            reserved
        }),
        fields!(ProcessInfo {
            vpid,
            parent_vpid,
            vpgid,
            vsid,
            umask,
            personality,
            flags,
            cwd_len,
            exe_len,
            argv_len,
            env_len,
            nice,
            comm
        }),
        fields!(Rlimit { cur, max }),
        fields!(ThreadInfo {
            vtid,
            flags,
            regs,
            sigmask,
            altstack_sp,
            altstack_size,
            altstack_flags,
            xsave_len,
            rseq_addr,
            rseq_len,
            rseq_sig,
            robust_list_head,
            robust_list_len,
            clear_child_tid,
            resume_rip,
            resume_rsp
        }),
        fields!(AddressSpace {
            start_code,
            end_code,
            start_data,
            end_data,
            start_brk,
            brk,
            start_stack,
            arg_start,
            arg_end,
            env_start,
            env_end,
            xcr0,
            xsave_size,
            vdso_crc,
            vdso_len,
            auxv_len,
            reserved
        }),
        fields!(UserRegs {
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            eflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs
        }),
        fields!(SigAction {
            handler,
            flags,
            restorer,
            mask
        }),
        fields!(PendingInfo { vtid, count }),
        fields!(MappingInfo {
            start,
            end,
            offset,
            device,
            inode,
            prot,
            flags,
            special,
            path_len
        }),
        fields!(PagesInfo {
            mapping_start,
            run_count
        }),
        fields!(PageRun { addr, count, kind }),
        fields!(FdInfo {
            fd,
            fd_flags,
            status_flags,
            kind,
            reserved0,
            body_len,
            shares,
            data_len
        }),
        fields!(RegularFile {
            offset,
            flags,
            path_len
        }),
        fields!(PipeEnd {
            pipe_id,
            end,
            fifo,
            capacity,
            path_len
        }),
        fields!(UnixPairEnd {
            pair_id,
            end,
            sock_type,
            shutdown,
            reserved
        }),
        fields!(SocketInfo {
            family,
            port,
            backlog,
            addr,
            scope_id,
            opt_count
        }),
        fields!(SockOpt {
            level,
            name,
            len,
            value
        }),
        fields!(EpollSet { count, flags }),
        fields!(EpollEntry { fd, events, data }),
        fields!(Eventfd {
            count,
            flags,
            reserved
        }),
        fields!(Timerfd {
            clock,
            flags,
            settime_flags,
            reserved,
            ticks,
            interval,
            value
        }),
        fields!(Timespec { sec, nsec }),
        fields!(Signalfd {
            mask,
            flags,
            reserved
        }),
        fields!(OtherFd { desc_len, reserved }),
        fields!(Itimer {
            interval_sec,
            interval_usec,
            value_sec,
            value_usec
        }),
        fields!(PosixTimer {
            id,
            clock,
            notify,
            signo,
            value,
            notify_vtid,
            reserved,
            interval,
            remaining
        }),
        fields!(End {
            sections,
            bytes,
            running_crc,
            reserved
        }),
    ])
}

/// The tables of the document: `### \`Name\` (N bytes)` then rows of
/// `| offset | size | \`field\` | meaning |`.
fn doc() -> BTreeMap<String, (usize, Fields)> {
    let text = include_str!("../../../docs/IMAGE-FORMAT.md");
    let mut out = BTreeMap::new();
    let mut current: Option<(String, usize, Fields)> = None;
    for line in text.lines().chain(std::iter::once("")) {
        if let Some(rest) = line.strip_prefix("### `") {
            if let Some((name, size, fields)) = current.take() {
                out.insert(name, (size, fields));
            }
            let (name, rest) = rest.split_once('`').expect("a struct name");
            let size = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(" bytes)"))
                .unwrap_or_else(|| panic!("### `{name}` gives its size"))
                .parse()
                .expect("a size");
            current = Some((name.to_string(), size, Vec::new()));
            continue;
        }
        let Some((_, _, fields)) = current.as_mut() else {
            continue;
        };
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[3].starts_with('`') {
            continue;
        }
        let (Ok(offset), Ok(size)) = (cells[1].parse(), cells[2].parse()) else {
            continue;
        };
        let name = cells[3].trim_matches('`');
        let name: &'static str = Box::leak(name.to_string().into_boxed_str());
        fields.push((name, offset, size));
    }
    if let Some((name, size, fields)) = current.take() {
        out.insert(name, (size, fields));
    }
    out
}

#[test]
fn the_document_gives_every_field_where_the_code_puts_it() {
    let code = code();
    let doc = doc();
    for (name, (size, fields)) in &code {
        let Some((dsize, dfields)) = doc.get(*name) else {
            panic!("docs/IMAGE-FORMAT.md has no table for {name}");
        };
        assert_eq!(dsize, size, "{name}: size");
        assert_eq!(dfields, fields, "{name}: fields");
    }
    for name in doc.keys() {
        assert!(
            code.contains_key(name.as_str()),
            "the document's {name} is not in the code"
        );
    }
}
