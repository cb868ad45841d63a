//! A program left running by a daemon that died: found again through the
//! file that names it, and killed before a new one starts.
//!
//! The file holds `PID STARTTIME`: the root's pid, which is also its process
//! group, and its start time in clock ticks after boot (field 22 of
//! `/proc/PID/stat`), so that a pid reused by another process is never
//! killed.

use std::path::Path;
use std::time::{Duration, Instant};

/// The start time of process `pid`, if it exists.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Write `pid_file` for a program whose root (and group leader) is `pid`.
/// A failure is not fatal: the program runs, only unremembered.
pub fn remember(pid_file: &Path, pid: i32) {
    if let Some(start) = start_time(pid) {
        let _ = std::fs::write(pid_file, format!("{pid} {start}\n"));
    }
}

/// Kill the program `pid_file` names, if it still runs, and its process
/// group; wait up to two seconds for its root to go. Then remove the file.
pub fn kill(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let mut words = text.split_whitespace();
    let pid: Option<i32> = words.next().and_then(|w| w.parse().ok());
    let start: Option<u64> = words.next().and_then(|w| w.parse().ok());
    if let (Some(pid), Some(start)) = (pid, start) {
        if pid > 1 && start_time(pid) == Some(start) {
            // SAFETY: kill has no memory preconditions; the group and the
            // process are the ones the file names, checked by start time.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
            let begun = Instant::now();
            while start_time(pid) == Some(start) && begun.elapsed() < Duration::from_secs(2) {
                // A zombie (our own child) keeps its stat: reap it if so.
                // SAFETY: waitpid on a pid with a null status pointer.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_remembered_group_is_killed_and_a_reused_pid_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("program.pid");
        let child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // `kill` reaps it (it is our child here); the handle is not waited.
        std::mem::forget(child);
        remember(&file, pid);
        assert!(file.exists());
        kill(&file);
        // Killed, and reaped by `kill` (it is our child here).
        assert_eq!(start_time(pid), None, "the remembered program still runs");
        assert!(!file.exists());

        // The same pid with another start time is someone else: left alone.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        std::fs::write(&file, format!("{} 1\n", other.id())).unwrap();
        kill(&file);
        assert!(other.try_wait().unwrap().is_none(), "a stranger was killed");
        other.kill().unwrap();
        other.wait().unwrap();
    }
}
