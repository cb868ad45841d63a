//! The control socket: `ferry run/status/failover/stop` talk to `ferryd`
//! here, one wire frame per request and per reply
//! ([`ferry_proto::control`]).
//!
//! The socket is created mode 0600, and a client is served only when its
//! uid (SO_PEERCRED) is root's or the daemon's own.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_proto::control::{
    Command, ErrorKind, Outcome, Reply, Request, CONTROL_VERSION, MAX_CONTROL_BODY,
};
use ferry_proto::wire::{self, FrameReader, KIND_CONTROL_REPLY, KIND_CONTROL_REQUEST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::core::{CoreHandle, CoreReq};

/// How long `run` waits for the peers and then for protection.
const PEER_WAIT: Duration = Duration::from_secs(5);
const PROTECT_WAIT: Duration = Duration::from_secs(10);

/// Bind the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot remove the old socket {}: {e}", path.display()),
    }
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener
        .map_err(|e| anyhow::anyhow!("cannot bind the control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| anyhow::anyhow!("cannot set the mode of {}: {e}", path.display()))?;
    Ok(listener)
}

/// Serve clients forever.
pub async fn serve(listener: UnixListener, core: CoreHandle) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let uid = stream.peer_cred().map(|c| c.uid()).ok();
        if !uid.is_some_and(|u| u == 0 || u == me) {
            warn!(uid = ?uid, "control client refused: not root or ferryd's own user");
            let mut stream = stream;
            let reply = Reply::error(
                ErrorKind::Failed,
                "permission denied: only root or ferryd's user may use the control socket",
            );
            if let Ok(f) = wire::encode(KIND_CONTROL_REPLY, 0, &reply) {
                let _ = stream.write_all(&f).await;
            }
            continue;
        }
        let core = core.clone();
        tokio::spawn(async move { client(stream, core).await });
    }
}

async fn client(mut stream: UnixStream, core: CoreHandle) {
    let mut reader = FrameReader::with_max_body(MAX_CONTROL_BODY);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let reply = match reader.next_frame() {
            Ok(Some(frame)) if frame.kind == KIND_CONTROL_REQUEST => {
                match frame.decode::<Request>() {
                    Ok(req) => handle(req, &core).await,
                    Err(e) => {
                        Reply::error(ErrorKind::BadRequest, format!("malformed request: {e}"))
                    }
                }
            }
            Ok(Some(frame)) => Reply::error(
                ErrorKind::BadRequest,
                format!("frame kind {} is not a control request", frame.kind),
            ),
            Ok(None) => match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    reader.push(&buf[..n]);
                    continue;
                }
            },
            Err(e) => {
                // The stream cannot be resynchronised after a bad frame:
                // answer, then close.
                let reply = Reply::error(ErrorKind::BadRequest, format!("malformed request: {e}"));
                debug!(error = %e, "malformed control request");
                if let Ok(f) = wire::encode(KIND_CONTROL_REPLY, 0, &reply) {
                    let _ = stream.write_all(&f).await;
                }
                return;
            }
        };
        let frame = match wire::encode(KIND_CONTROL_REPLY, 0, &reply) {
            Ok(f) => f,
            Err(e) => match wire::encode(
                KIND_CONTROL_REPLY,
                0,
                &Reply::error(ErrorKind::Failed, format!("cannot encode the reply: {e}")),
            ) {
                Ok(f) => f,
                Err(_) => return,
            },
        };
        if stream.write_all(&frame).await.is_err() {
            return;
        }
    }
}

fn is_error(r: &Reply) -> bool {
    matches!(r.outcome, Outcome::Error { .. })
}

async fn app_status(core: &CoreHandle, app: &str) -> Option<ferry_proto::control::AppStatus> {
    match core
        .call(CoreReq::Status(Some(app.to_owned())))
        .await
        .outcome
    {
        Outcome::Status(mut s) => s.apps.pop(),
        _ => None,
    }
}

async fn handle(req: Request, core: &CoreHandle) -> Reply {
    if req.version != CONTROL_VERSION {
        return Reply::error(
            ErrorKind::Version,
            format!(
                "control protocol version {} is not supported (ferryd speaks {CONTROL_VERSION})",
                req.version
            ),
        );
    }
    match req.command {
        Command::Status { app } => core.call(CoreReq::Status(app)).await,
        Command::Stop { app } => core.call(CoreReq::Stop { app }).await,
        Command::Run(run) => {
            let name = run.name.clone();
            let started = Instant::now();
            loop {
                let r = core.call(CoreReq::PeersReady).await;
                if !is_error(&r) {
                    break;
                }
                if started.elapsed() > PEER_WAIT {
                    return match r.outcome {
                        Outcome::Error { message, .. } => Reply::error(
                            ErrorKind::Failed,
                            format!("{name} not started: {message}"),
                        ),
                        _ => r,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let r = core.call(CoreReq::Run(run)).await;
            if is_error(&r) {
                return r;
            }
            let started = Instant::now();
            loop {
                let Some(s) = app_status(core, &name).await else {
                    return Reply::error(
                        ErrorKind::Failed,
                        format!("{name} stopped right after it started (see ferryd's log)"),
                    );
                };
                let backups: Vec<&str> = s
                    .backups
                    .iter()
                    .filter(|b| b.healthy)
                    .map(|b| b.node.as_str())
                    .collect();
                let async_ok = s.mode == "async" && !backups.is_empty();
                if s.protected || async_ok {
                    return Reply::new(Outcome::Done {
                        message: format!(
                            "{name} started (pid {}), {} mode, protected by {}",
                            s.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                            s.mode,
                            backups.join(", ")
                        ),
                    });
                }
                if started.elapsed() > PROTECT_WAIT {
                    return Reply::error(
                        ErrorKind::Failed,
                        format!(
                            "{name} started but is not protected after {} s: no backup has acknowledged its records",
                            PROTECT_WAIT.as_secs()
                        ),
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Command::Migrate { app, to, step } => core.call(CoreReq::Migrate { app, to, step }).await,
        Command::Failover { app, to } => {
            let r = core
                .call(CoreReq::Failover {
                    app: app.clone(),
                    to,
                })
                .await;
            if is_error(&r) {
                return r;
            }
            let started = Instant::now();
            loop {
                match app_status(core, &app).await {
                    None => return Reply::error(ErrorKind::Failed, format!("{app} was stopped")),
                    // After the handover the old primary knows the new
                    // one once it hears from it.
                    Some(s) if s.role != "primary" && s.primary.is_some() => {
                        return Reply::new(Outcome::Done {
                            message: format!(
                                "{app} handed over to {} (epoch {})",
                                s.primary.unwrap_or_default(),
                                s.epoch
                            ),
                        })
                    }
                    Some(s) if s.role != "primary" && started.elapsed() > Duration::from_secs(5) => {
                        return Reply::new(Outcome::Done {
                            message: format!(
                                "{app} handed over (epoch {}); the new primary has not been heard from yet",
                                s.epoch
                            ),
                        })
                    }
                    Some(_) => {}
                }
                if started.elapsed() > Duration::from_secs(5) {
                    return Reply::error(
                        ErrorKind::Failed,
                        format!("{app}: the switchover did not complete; still primary"),
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
