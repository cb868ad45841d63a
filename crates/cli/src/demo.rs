//! `ferry demo`: record a program whose output changes on every run, replay
//! it, and show that the replay reproduces the recording.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

use crate::exit::{report, BAD_INPUT, PROGRAM_FAILED, SUCCESS};

/// The example: every line differs from one run to the next.
pub const SCRIPT: &str = r#"echo random=$RANDOM; date +%N; head -c 8 /dev/urandom | od -An -tx1; cat /proc/self/stat | cut -d" " -f22"#;

fn program() -> [&'static str; 3] {
    ["bash", "-c", SCRIPT]
}

fn indent(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let mut s = String::new();
    for line in text.lines() {
        s.push_str("    | ");
        s.push_str(line);
        s.push('\n');
    }
    if s.is_empty() {
        s.push_str("    (no output)\n");
    }
    s
}

fn run_native() -> anyhow::Result<Vec<u8>> {
    let [cmd, args @ ..] = program();
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run bash (the demo needs bash and coreutils)")?;
    if !out.status.success() {
        bail!("the example program failed natively ({})", out.status);
    }
    Ok(out.stdout)
}

fn run_ferry(exe: &Path, verb: &str, log: &Path) -> anyhow::Result<Output> {
    Command::new(exe)
        .arg(verb)
        .arg("--log")
        .arg(log)
        .arg("--")
        .args(program())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {} {verb}", exe.display()))
}

/// Lines that differ between two outputs, for the verdict.
pub fn line_diff(recorded: &[u8], replayed: &[u8]) -> String {
    let a: Vec<&str> = std::str::from_utf8(recorded)
        .unwrap_or("")
        .lines()
        .collect();
    let b: Vec<&str> = std::str::from_utf8(replayed)
        .unwrap_or("")
        .lines()
        .collect();
    let mut s = String::new();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i), b.get(i));
        if x != y {
            if let Some(x) = x {
                s.push_str(&format!("    - line {}: {x}\n", i + 1));
            }
            if let Some(y) = y {
                s.push_str(&format!("    + line {}: {y}\n", i + 1));
            }
        }
    }
    if s.is_empty() && recorded != replayed {
        s.push_str("    (the outputs differ in bytes that are not visible as text)\n");
    }
    s
}

/// Run the demo; returns the exit code.
pub fn run() -> anyhow::Result<u8> {
    let exe = std::env::current_exe().context("cannot find the ferry executable")?;
    if let Err(e) = ferry_host::shim::locate() {
        return Ok(report(BAD_INPUT, e));
    }
    println!(
        "Ferry records every value a program takes from the operating system, and replays it."
    );
    println!("The example prints a shell random number, the clock's nanoseconds, 8 bytes of");
    println!("/dev/urandom and its own start time:\n");
    println!("    bash -c '{SCRIPT}'\n");

    println!("1. Run it twice, natively:");
    let first = run_native()?;
    let second = run_native()?;
    print!("{}", indent(&first));
    println!("    then");
    print!("{}", indent(&second));
    if first == second {
        println!("   (the two runs happened to agree)\n");
    } else {
        println!("   The two runs differ, as expected.\n");
    }

    let dir = tempfile::Builder::new()
        .prefix("ferry-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let log = dir.path().join("demo.flog");
    println!(
        "2. Record it:  ferry record --log {} -- bash -c '…'",
        log.display()
    );
    let rec = run_ferry(&exe, "record", &log)?;
    print!("{}", indent(&rec.stdout));
    if !rec.status.success() {
        println!("\nVerdict: the recording failed ({}).", rec.status);
        return Ok(if rec.status.code() == Some(i32::from(BAD_INPUT)) {
            BAD_INPUT
        } else {
            PROGRAM_FAILED
        });
    }
    let bytes = std::fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let summary = ferry_proto::log::validate(&bytes)
        .with_context(|| format!("{} is not a sound log", log.display()))?;
    println!(
        "   The log holds {} records in {} bytes.\n",
        summary.records,
        bytes.len()
    );

    println!(
        "3. Replay it:  ferry replay --log {} -- bash -c '…'",
        log.display()
    );
    let rep = run_ferry(&exe, "replay", &log)?;
    print!("{}", indent(&rep.stdout));
    println!();

    let same = rep.status.success() && rep.stdout == rec.stdout;
    if same {
        println!(
            "Verdict: the replay printed exactly what the recording printed ({} bytes), although",
            rec.stdout.len()
        );
        println!(
            "every native run prints something new. The log is {} bytes, {} records.",
            bytes.len(),
            summary.records
        );
    } else {
        println!("Verdict: the replay does NOT match the recording.");
        if !rep.status.success() {
            println!("   ferry replay ended with {}.", rep.status);
        }
        print!("{}", line_diff(&rec.stdout, &rep.stdout));
    }
    dir.close()
        .context("cannot remove the demo's temporary directory")?;
    Ok(if same { SUCCESS } else { PROGRAM_FAILED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_changed_lines() {
        let d = line_diff(b"a\nb\nc\n", b"a\nX\n");
        assert_eq!(d, "    - line 2: b\n    + line 2: X\n    - line 3: c\n");
        assert_eq!(line_diff(b"same\n", b"same\n"), "");
    }
}
