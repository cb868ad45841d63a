//! `ferry`: run a program so that it survives the failure of its host.
//!
//! This binary records a program under the shim (`ferry record`), replays a
//! recording (`ferry replay`), runs a program under the shim in its own
//! process (`ferry exec`) and shows record and replay on an example
//! (`ferry demo`).
//! Exit codes are in [`exit`].

mod cert;
mod checkpoint;
mod client;
mod demo;
mod exec;
mod exit;
mod migrate;
mod record;
mod replay;
mod restore;
mod standby;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::exit::EXIT_CODES_HELP;

/// `ferry demo`'s options.
#[derive(Debug, clap::Args)]
struct DemoArgs {
    /// Record and replay an example program instead (no hosts, no root).
    #[arg(long)]
    record_replay: bool,
}

/// `ferry chaos`'s arguments: all passed to ferry-chaos.
#[derive(Debug, clap::Args)]
struct ChaosArgs {
    /// ferry-chaos's arguments.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<std::ffi::OsString>,
}

/// Replace this process with ferry-chaos, found next to ferry.
fn chaos(args: ChaosArgs) -> u8 {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("ferry-chaos")))
        .filter(|p| p.is_file());
    let Some(exe) = exe else {
        return exit::report(
            exit::BAD_INPUT,
            "ferry-chaos is not installed next to ferry (build the workspace: cargo build --workspace --bins)",
        );
    };
    // The Rust runtime ignores SIGPIPE, and an ignored signal stays ignored
    // across exec: give ferry-chaos the default back.
    // SAFETY: setting a disposition; this process execs right after.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let err = std::process::Command::new(&exe).args(&args.args).exec();
    exit::report(
        exit::BAD_INPUT,
        format!("cannot run {}: {err}", exe.display()),
    )
}

/// Keep an unmodified Linux program running across host failures.
#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    long_about = "Keep an unmodified Linux program running across host failures.\n\n\
        Ferry loads a shim into the program (LD_PRELOAD) that records every value the \
        program takes from the operating system, so that the run can be replayed exactly.\n\n\
        The shim is $FERRY_PRELOAD if set, else libferry_preload.so next to this executable.",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    /// ferryd's control socket (for run, status, failover, stop).
    #[arg(long, global = true, value_name = "SOCK", default_value = client::DEFAULT_CONTROL)]
    control: std::path::PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run CMD under the shim and write everything it takes from the OS to a log.
    #[command(
        long_about = "Run CMD under the shim and write everything it takes from the operating system \
            (inputs, clocks, random bytes, the order of threads) to a log file.\n\n\
            The program runs in the foreground with its own stdin, stdout and stderr, with \
            address-space randomisation off. Ctrl-C goes to the program; ferry waits until \
            the program and every process it started have ended.",
        after_help = concat!(
            "Example:\n  ferry record --log /tmp/date.flog -- date +%N\n\n",
            "Exit codes:\n",
            "  0  the program exited with status 0\n",
            "  1  the program exited non-zero or was killed by a signal\n",
            "  2  bad usage, command or shim not found, log not writable, shim failure"
        )
    )]
    Record(record::RecordArgs),
    /// Replay a log: run CMD again, answering its OS calls from the log.
    #[command(
        long_about = "Replay a log written by `ferry record`: run the same command again, in the \
            recorded working directory and with the recorded environment, and answer every \
            call it makes to the operating system from the log. The program's stdout and \
            stderr are written again; network output is checked and suppressed.\n\n\
            CMD and ARGS must be exactly those recorded. Ferry itself prints nothing on \
            stdout; when the replay reaches the end of the log it exits 0.",
        after_help = concat!(
            "Example:\n  ferry replay --log /tmp/date.flog -- date +%N\n\n",
            "Exit codes:\n",
            "  0  the program replayed to the end of the log\n",
            "  2  bad usage, unreadable or corrupt log (the offset is named), shim missing\n",
            "  3  the replay diverged from the log (the record is named)"
        )
    )]
    Replay(replay::ReplayArgs),
    /// Exec into CMD under the shim, in this process: same pid, nothing logged.
    #[command(
        long_about = "Replace ferry with CMD, running under the shim, in the same process: CMD \
            keeps ferry's process id, so it is ready to be checkpointed by that pid, and \
            its exit status is CMD's own.\n\n\
            Nothing is recorded or replicated: the shim intercepts every call the program \
            makes and runs it unchanged (passthrough). The program runs with its own stdin, \
            stdout and stderr, and with address-space randomisation off.",
        after_help = concat!(
            "Example:\n  ferry exec -- sh -c 'echo $$'\n\n",
            "Exit codes:\n",
            "  the program's own, once it is running\n",
            "  2  bad usage, command or shim not found, the program could not be started"
        )
    )]
    Exec(exec::ExecArgs),
    /// Checkpoint a process started with `ferry exec`; it keeps running.
    #[command(
        long_about = "Write an image of a running process, started with `ferry exec`, into DIR: \
            its memory, threads, signal state and descriptors, taken from inside by the shim \
            while every thread is stopped for a moment. The program keeps running. \
            `ferry restore --image DIR` starts it again from that point, here or on another \
            host with the same files. The image is whole only once DIR/manifest.fimg exists: \
            an interrupted checkpoint leaves none. The format is docs/IMAGE-FORMAT.md.",
        after_help = concat!(
            "Example:\n  ferry exec -- ./server & ferry checkpoint $! --image /var/tmp/server.img\n",
            "  ferry checkpoint $! --image /var/tmp/server.2 --parent /var/tmp/server.img\n\n",
            "Exit codes:\n",
            "  0  the image is written\n",
            "  1  the checkpoint failed in the process (one line says why: PARENT is not its last image, …), or the process died meanwhile\n",
            "  2  bad usage, no such process, not under the shim, DIR already holds an image"
        )
    )]
    Checkpoint(checkpoint::CheckpointArgs),
    /// Start a checkpointed process again from its image, in the foreground.
    #[command(
        long_about = "Restore the process checkpointed into DIR by `ferry checkpoint`: this \
            command becomes it, with its memory at the same addresses, its threads, registers, \
            signal state, descriptors, limits and timers, and carries on where the checkpoint \
            was taken. The program keeps its virtual pid and tids. Descriptors 0 to 2 are this \
            command's own; files the image names must exist here (regular files are reopened \
            by path, unlinked ones come back from the image). The exit status is the \
            program's. Works on this host or another one with the same kernel and files.",
        after_help = concat!(
            "Example:\n  ferry restore --image /var/tmp/server.img\n\n",
            "Exit codes:\n",
            "  the program's own, once it runs\n",
            "  1  the restore failed after the point of no return (one line says at what)\n",
            "  2  bad usage, a missing, corrupt or truncated image, state this host cannot give back"
        )
    )]
    Restore(restore::RestoreArgs),
    /// The whole story on this machine: hosts, three ferryd, a protected
    /// key-value server, the primary host killed, nothing lost.
    #[command(
        long_about = "Build four hosts on this machine (network namespaces on a bridge, \
            10.99.0.0/24), start ferryd on three of them (two replicas and a witness), run the \
            key-value server ferry-kv protected by Ferry behind a service address, write \
            through a client, kill every process of the primary host and cut its link, show \
            the backup taking over, and read back every write the server acknowledged. \
            Everything is removed at the end. Needs root and iproute2, and ferryd and \
            ferry-kv next to ferry.\n\n\
            With --record-replay: record and replay a shell pipeline whose output changes on \
            every run (needs only bash and coreutils).",
        after_help = concat!(
            "Exit codes:\n",
            "  0  no acknowledged write was lost (--record-replay: the replay reproduced the recording)\n",
            "  1  writes were lost (the replay differed)\n",
            "  2  the demo cannot run here (not root, ip, ferryd, ferry-kv or the shim missing)"
        )
    )]
    Demo(DemoArgs),
    /// Run the fault-injection harness (ferry-chaos, next to ferry).
    #[command(
        long_about = "Run ferry-chaos, the fault-injection harness: it builds hosts in network \
            namespaces, runs ferryd and the key-value server, injects faults and checks that \
            no acknowledged write was lost and that two primaries never served at once. \
            Everything after `chaos` is passed to it; `ferry chaos --help` shows its options \
            (docs/HARNESS.md has the scenarios).",
        disable_help_flag = true
    )]
    Chaos(ChaosArgs),
    /// Create the cluster's certificate authority and node certificates.
    #[command(
        long_about = "Create the cluster's certificate authority and the certificate of each node. \
            The daemons authenticate each other with these (mutual TLS): a peer whose \
            certificate is not from the cluster CA is refused.\n\n\
            Copy DIR/ca.crt and a node's own NAME.crt and NAME.key to that node \
            (/etc/ferry/certs/); keep ca.key only where certificates are issued.",
        after_help = concat!(
            "Examples:\n  ferry cert init --dir ./certs\n  ferry cert issue --dir ./certs --node alpha\n\n",
            "Exit codes:\n  0  done\n  2  bad usage, a file already exists, an unreadable or invalid CA"
        )
    )]
    Cert(cert::CertArgs),
    /// Start CMD under the local ferryd as a protected application.
    #[command(
        long_about = "Start CMD on this node, under the local ferryd, as the primary of a new \
            application, replicated to the other nodes of the cluster. The caller's arguments, \
            environment and working directory are sent to ferryd; the program keeps running \
            under ferryd after this command returns, which it does once a backup has \
            acknowledged the program's records (or with the reason it could not).",
        after_help = concat!(
            "Example:\n  ferry run --name kv -- ferry-kv --listen 0.0.0.0:7070\n\n",
            "Exit codes:\n",
            "  0  started and protected\n",
            "  1  not started or not protected (the reason is printed), or ferryd unreachable\n",
            "  2  bad usage or a bad request (name taken, command not found, bad --vip)"
        )
    )]
    Run(client::RunArgs),
    /// Show each application's role, epoch, progress and protection on this node.
    #[command(
        after_help = "Exit codes:\n  0  shown\n  1  ferryd unreachable\n  2  no such application"
    )]
    Status(client::StatusArgs),
    /// Hand an application's primary role to a backup, losing nothing.
    #[command(
        after_help = "Exit codes:\n  0  handed over\n  1  not possible now (the reason is printed)\n  2  no such application"
    )]
    Failover(client::FailoverArgs),
    /// Move a running application to another node, reversibly: the target
    /// catches up while the program serves, then takes over after a short
    /// stop; the old primary keeps replaying until --commit.
    #[command(
        after_help = "Run it on the primary to start a migration and to cancel one still catching up;\non the new primary for --rollback (move back) and --commit (make it final).\n\nExit codes:\n  0  moved (the downtime is printed), rolled back, or committed\n  1  not possible now, or not done within --timeout (the reason is printed)\n  2  no such application, or bad usage"
    )]
    Migrate(migrate::MigrateArgs),
    /// Stop an application on every node.
    #[command(
        after_help = "Exit codes:\n  0  stopped\n  1  not possible here (not the primary)\n  2  no such application"
    )]
    Stop(client::StopArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Cmd::Record(args) => record::run(args),
        Cmd::Replay(args) => replay::run(args),
        Cmd::Exec(args) => exec::run(args),
        Cmd::Checkpoint(args) => checkpoint::run(args),
        Cmd::Restore(args) => restore::run(args),
        Cmd::Cert(args) => cert::run(args),
        Cmd::Run(args) => client::run(&cli.control, args),
        Cmd::Status(args) => client::status(&cli.control, args),
        Cmd::Failover(args) => client::failover(&cli.control, args),
        Cmd::Stop(args) => client::stop(&cli.control, args),
        Cmd::Migrate(args) => migrate::run(&cli.control, args),
        Cmd::Chaos(args) => chaos(args),
        Cmd::Demo(args) => {
            let result = if args.record_replay {
                demo::run()
            } else {
                standby::run()
            };
            result.unwrap_or_else(|e| exit::report(exit::BAD_INPUT, format!("demo: {e:#}")))
        }
    };
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn command_must_follow_double_dash() {
        assert!(Cli::try_parse_from(["ferry", "record", "--log", "x", "echo", "hi"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "record", "--log", "x"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "record", "--", "echo"]).is_err());
        let cli =
            Cli::try_parse_from(["ferry", "replay", "--log", "x", "--", "echo", "--log", "-v"])
                .unwrap();
        let Cmd::Replay(a) = cli.command else {
            panic!("not replay")
        };
        assert_eq!(a.command, ["echo", "--log", "-v"]);
    }

    #[test]
    fn exec_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from(["ferry", "exec", "--", "sh", "-c", "echo $$"]).unwrap();
        let Cmd::Exec(a) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(a.command, ["sh", "-c", "echo $$"]);
        assert!(Cli::try_parse_from(["ferry", "exec", "sh"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "exec"]).is_err());
    }

    #[test]
    fn client_commands_parse() {
        let cli = Cli::try_parse_from([
            "ferry",
            "--control",
            "/tmp/s",
            "run",
            "--name",
            "kv",
            "--mode",
            "async",
            "--vip",
            "10.0.0.1/24@eth0",
            "--",
            "ferry-kv",
            "--listen",
            "x",
        ])
        .unwrap();
        assert_eq!(cli.control, std::path::Path::new("/tmp/s"));
        let Cmd::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.command, ["ferry-kv", "--listen", "x"]);
        assert_eq!(a.mode, client::ModeArg::Async);
        assert!(Cli::try_parse_from(["ferry", "run", "--name", "kv", "ferry-kv"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "run", "--", "ferry-kv"]).is_err());
        let cli = Cli::try_parse_from(["ferry", "status", "--json"]).unwrap();
        assert_eq!(cli.control, std::path::Path::new(client::DEFAULT_CONTROL));
        let cli = Cli::try_parse_from(["ferry", "failover", "kv", "--to", "b", "--control", "/s"])
            .unwrap();
        let Cmd::Failover(a) = cli.command else {
            panic!("not failover")
        };
        assert_eq!((a.app.as_str(), a.to.as_deref()), ("kv", Some("b")));
        assert!(Cli::try_parse_from(["ferry", "stop"]).is_err());
    }

    #[test]
    fn usage_errors_exit_2() {
        let e = Cli::try_parse_from(["ferry", "record"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(exit::BAD_INPUT, 2);
    }
}
