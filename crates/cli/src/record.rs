//! `ferry record`: run a program under the shim and drain the ring into a log.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_proto::log::{end_record, start_record, LogWriter, StartInfo};
use ferry_proto::{padded, RecordHeader, MAX_PAYLOAD, RECORD_HEADER_LEN};
use ferry_ring::{Mode, Region, CTL_CONSUMER_GONE, CTL_FAILED};

use crate::exit::{report, report_error, ExitCodeOf, BAD_INPUT, PROGRAM_FAILED, SUCCESS};
use ferry_host::region::{self, PollFutex, SharedRegion, SysFutex};
use ferry_host::resolve::{resolve, ResolveError};
use ferry_host::shim::{self, ShimNotFound};
use ferry_host::spawn::{spawn, Launch, SpawnError};
use ferry_host::status::Termination;
use ferry_host::sys::{self, IgnoredSignals, Reaped, SysError};

/// What `ferry record` was asked to do.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The log file to write (created, or truncated if it exists).
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,
    /// Print a one-line summary on stderr when the recording is done.
    #[arg(short, long)]
    pub verbose: bool,
    /// The program and its arguments, after `--`. CMD is searched in PATH.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Why `ferry record` could not record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The shim is missing.
    #[error(transparent)]
    Shim(#[from] ShimNotFound),
    /// The command is not on PATH.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The current directory is gone.
    #[error("cannot read the current directory: {0}")]
    Cwd(#[source] io::Error),
    /// The shared region could not be set up.
    #[error(transparent)]
    Region(#[from] region::RegionError),
    /// The log could not be created.
    #[error("cannot create the log {}: {source}", path.display())]
    CreateLog {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The log could not be written (the program was stopped).
    #[error("cannot write the log {}: {source}", path.display())]
    WriteLog {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The program could not be started.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A system call of ferry itself failed.
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl ExitCodeOf for RecordError {
    fn exit_code(&self) -> u8 {
        BAD_INPUT
    }
}

/// Run `ferry record`; returns the exit code.
pub fn run(args: RecordArgs) -> u8 {
    match record(&args) {
        Ok(code) => code,
        Err(e) => report_error(&e),
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn record(args: &RecordArgs) -> Result<u8, RecordError> {
    let argv: Vec<Vec<u8>> = args.command.iter().map(|a| a.as_bytes().to_vec()).collect();
    let cmd_shown = args.command[0].to_string_lossy().into_owned();
    let cwd = std::env::current_dir().map_err(RecordError::Cwd)?;
    let path = resolve(&args.command[0], std::env::var_os("PATH").as_deref(), &cwd)?;
    let shim_path = shim::locate()?;
    let env = shim::program_env(&shim_path, std::env::vars_os());
    let launch = Launch::new(&path, &argv, &env, None)?;

    let shared = SharedRegion::create(Mode::Record)?;
    let region = shared.region();

    let create_err = |source| RecordError::CreateLog {
        path: args.log.clone(),
        source,
    };
    let file = File::create(&args.log).map_err(create_err)?;
    let mut writer =
        LogWriter::new(BufWriter::with_capacity(LOG_BUFFER, file), now_ns()).map_err(create_err)?;
    let start = StartInfo {
        argv,
        env,
        cwd: cwd.as_os_str().as_bytes().to_vec(),
    };
    let (h, payload) = start_record(&start);
    writer.append(&h, &payload).map_err(create_err)?;
    writer.get_mut().flush().map_err(create_err)?;

    sys::set_child_subreaper()?;
    let signals = IgnoredSignals::ignore_interrupts()?;
    let root = match spawn(&launch, region, shared.fd(), &signals, &Default::default()) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = finish_file(&mut writer);
            return Err(e.into());
        }
    };

    let mut drain = Drain {
        region,
        writer,
        buf: Vec::new(),
        records: 0,
        write_error: None,
        stopped: false,
    };
    let root_status = drain.run(root)?;
    let Drain {
        mut writer,
        records,
        write_error,
        ..
    } = drain;

    if let Some(source) = write_error {
        return Err(RecordError::WriteLog {
            path: args.log.clone(),
            source,
        });
    }
    let write_err = |source| RecordError::WriteLog {
        path: args.log.clone(),
        source,
    };
    if region.has(CTL_FAILED) {
        finish_file(&mut writer).map_err(write_err)?;
        return Ok(report(BAD_INPUT, region::message(&region)));
    }
    let Some(status) = root_status else {
        finish_file(&mut writer).map_err(write_err)?;
        return Ok(report(
            PROGRAM_FAILED,
            format!("{cmd_shown}: its exit status was lost"),
        ));
    };
    let (h, payload) = end_record(
        region.control().next_gseq.load(Ordering::Acquire),
        i64::from(status),
    );
    writer.append(&h, &payload).map_err(write_err)?;
    finish_file(&mut writer).map_err(write_err)?;

    if args.verbose {
        let size = std::fs::metadata(&args.log).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "ferry: recorded {} records ({size} bytes) in {}",
            records + 2,
            args.log.display()
        );
    }
    let t = Termination::from_raw(status);
    if t.success() {
        Ok(SUCCESS)
    } else {
        Ok(report(PROGRAM_FAILED, format!("{cmd_shown} {t}")))
    }
}

/// Flush the log and make it durable.
fn finish_file(writer: &mut LogWriter<BufWriter<File>>) -> io::Result<()> {
    writer.get_mut().flush()?;
    writer.get_mut().get_ref().sync_all()
}

/// Bytes of log gathered before a write: the records of a batch are written
/// from the ring at once when there are at least this many.
const LOG_BUFFER: usize = 64 << 10;

/// Bytes of records the consumer seals and writes before it releases their
/// room in the ring.
const DRAIN_BATCH: usize = 1 << 20;

/// The consumer side of the ring in record mode.
struct Drain {
    region: Region,
    writer: LogWriter<BufWriter<File>>,
    buf: Vec<u8>,
    /// Records written after the start record.
    records: u64,
    /// The first failure to write the log; the program is stopped then.
    write_error: Option<io::Error>,
    /// The ring can no longer be read (a record with impossible lengths).
    stopped: bool,
}

impl Drain {
    /// Drain the ring until every process of the program has ended and the
    /// ring is empty; returns the root's raw wait status.
    fn run(&mut self, root: i32) -> Result<Option<i32>, SysError> {
        let mut root_status = None;
        loop {
            self.drain_ring();
            let mut no_children = false;
            loop {
                match sys::reap_nohang()? {
                    Reaped::Child { pid, status } => {
                        if pid == root {
                            root_status = Some(status);
                        }
                    }
                    Reaped::NoneReady => break,
                    Reaped::NoChildren => {
                        no_children = true;
                        break;
                    }
                }
            }
            if no_children {
                if self.stopped || self.region.peek().is_none() {
                    return Ok(root_status);
                }
                continue;
            }
            if self.write_error.is_none() {
                if let Err(e) = self.writer.get_mut().flush() {
                    self.log_failed(e);
                }
            }
            if self.write_error.is_some() || self.stopped {
                region::kill_program(&self.region);
            }
            self.region.wait_for_records(&PollFutex, Some(50));
        }
    }

    /// Move every published record from the ring to the log. The records
    /// are sealed in the ring, where they lie (the shim leaves the checksum
    /// to its consumer: it would cost the program's thread on every call),
    /// written to the log straight from there, and released from the ring a
    /// batch at a time.
    fn drain_ring(&mut self) {
        // Read the producer's position once per batch, not once per record.
        let region = self.region;
        let head = region.head();
        let mut pos = region.consume_pos();
        while !self.stopped && pos < head {
            let start = pos;
            let lap_end = Region::lap_end(pos).min(head);
            let mut batch = 0u64;
            let mut wraps = None;
            while pos < head && pos - start < DRAIN_BATCH as u64 {
                let Some(h) = self.region.header_at(pos, head) else {
                    break;
                };
                let payload_len = h.payload_len as usize;
                if payload_len > MAX_PAYLOAD || h.len as usize != RECORD_HEADER_LEN + payload_len {
                    // The ring cannot be walked past a record of unknown size.
                    let index = self.records + batch + 1;
                    self.fail(&format!(
                        "the shim published record #{index} (gseq {}) with impossible lengths (len {}, payload {})",
                        h.gseq, h.len, h.payload_len
                    ));
                    self.stopped = true;
                    self.region.raise(CTL_CONSUMER_GONE, &SysFutex);
                    break;
                }
                let len = h.len as usize;
                if pos + padded(len) as u64 > lap_end {
                    // This record wraps around the end of the ring.
                    wraps = Some(len);
                    break;
                }
                // SAFETY: the consumer's own published bytes, inside one lap,
                // released only below (consume_to), after the last use.
                let rec = unsafe { region.unconsumed_mut(pos, padded(len)) };
                rec[len..].fill(0);
                RecordHeader::seal_bytes(&mut rec[..len]);
                pos += padded(len) as u64;
                batch += 1;
            }
            if pos > start {
                // SAFETY: as above: the bytes just sealed, not yet released.
                let bytes = unsafe { region.unconsumed_mut(start, (pos - start) as usize) };
                self.write_sealed(bytes);
            }
            if let Some(len) = wraps {
                self.buf.clear();
                self.buf.resize(padded(len), 0);
                self.region.copy_record(pos, &mut self.buf[..len]);
                RecordHeader::seal_bytes(&mut self.buf[..len]);
                let buf = std::mem::take(&mut self.buf);
                self.write_sealed(&buf);
                self.buf = buf;
                pos += padded(len) as u64;
                batch += 1;
            }
            self.region.consume_to(pos, batch, &SysFutex);
            self.records += batch;
        }
    }

    /// Append sealed, padded records to the log (nothing once writing failed).
    fn write_sealed(&mut self, bytes: &[u8]) {
        if self.write_error.is_none() {
            if let Err(e) = self.writer.append_sealed(bytes) {
                self.log_failed(e);
            }
        }
    }

    /// Report a broken shim through the region.
    fn fail(&self, msg: &str) {
        self.region.set_message(msg.as_bytes());
        self.region.raise(CTL_FAILED, &SysFutex);
    }

    /// The log cannot be written: stop the program, keep the first error.
    fn log_failed(&mut self, e: io::Error) {
        self.fail(&format!("cannot write the log: {e}"));
        self.write_error.get_or_insert(e);
        region::kill_program(&self.region);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_gets_the_shim_first() {
        let env = shim::program_env(
            std::path::Path::new("/x/libferry_preload.so"),
            std::env::vars_os(),
        );
        let preloads: Vec<_> = env
            .iter()
            .filter(|e| e.starts_with(b"LD_PRELOAD="))
            .collect();
        assert_eq!(preloads.len(), 1);
        assert!(preloads[0].starts_with(b"LD_PRELOAD=/x/libferry_preload.so"));
    }
}
