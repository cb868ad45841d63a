//! The server: blocking sockets, one thread per open connection, and one
//! *sequencer* thread that owns the store.
//!
//! A connection thread reads request lines from its socket, hands every
//! batch of complete lines to the sequencer, waits for the answers and writes
//! them back in one `write`. The sequencer learns that a batch is waiting
//! from an 8-byte event the connection thread writes into a pipe; it applies
//! batches in the order their events come out of the pipe. So the order in
//! which the state changes is decided by `read`s of a pipe, and the bytes a
//! connection thread writes are decided by the bytes it read: a recording of
//! the program's system calls fixes both, and a replay reaches the same
//! state. The locks and condition variables between the threads only hand
//! data over; which thread takes a lock first never changes what happens.
//!
//! The data itself is handed over in memory, in the connection's slot. A
//! thread that waits for its slot (for a connection, or for answers) first
//! reads one 8-byte note from a pipe of its own, which the sequencer writes
//! after filling the slot: waiting in a system call, rather than on a
//! condition variable alone, lets a replay wake the thread as soon as its
//! turn comes. Every hand-over is still a flag that the receiving side checks
//! (and waits for on the condition variable if needed), never an assumption
//! drawn from an event or a note: a replay answers a `read` from the log in
//! its turn, which can come before the thread that wrote the bytes has
//! filled the slot (or even reached its `write`).
//!
//! Memory follows the same rule, because the C allocator's choices show up
//! as system calls (`mmap`, `mprotect`, `brk`) in the thread that makes
//! them: threads start one at a time, and only allocate while the thread
//! that started them waits; after that, the connection threads and the
//! accepting thread never allocate or free, and the sequencer allocates and
//! frees everything else.

use crate::protocol::{parse_request, Request, RequestError, Response, MAX_LINE};
use crate::store::Store;
use std::collections::VecDeque;
use std::io::{self, PipeReader, PipeWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;
use thiserror::Error;

/// How many bytes a connection thread asks for in one `read`.
const READ_CHUNK: usize = 16 * 1024;
/// A connection thread's buffers: a line of the longest length plus a read.
const CONN_BUFFER: usize = MAX_LINE + 1 + READ_CHUNK;
/// Stack of a connection thread.
const CONN_STACK: usize = 256 * 1024;
/// The size of one event in the sequencer's pipe (atomic: below `PIPE_BUF`).
const EVENT_LEN: usize = 8;
/// What a refused connection is told.
const TOO_MANY: &[u8] = b"ERR too many connections\n";

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// At most this many connections are served at once; the next one is
    /// answered `ERR too many connections` and closed.
    pub max_conns: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_conns: 1024 }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("cannot create the sequencer pipe: {0}")]
    Pipe(io::Error),
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        source: io::Error,
    },
    #[error("the sequencer pipe failed: {0}")]
    Sequencer(io::Error),
    #[error("accepting connections on {addr} failed: {source}")]
    Accept { addr: SocketAddr, source: io::Error },
}

/// A bound server, not yet serving.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// The listener accepted a connection: it waits in the accept queue.
    Accepted,
    /// This connection thread posted a batch of requests.
    Batch(u32),
    /// This connection thread closed its connection and is free.
    Closed(u32),
}

impl Event {
    fn encode(self) -> [u8; EVENT_LEN] {
        let (tag, id) = match self {
            Event::Accepted => (1u8, 0u32),
            Event::Batch(id) => (2, id),
            Event::Closed(id) => (3, id),
        };
        let mut e = [0u8; EVENT_LEN];
        e[0] = tag;
        e[4..].copy_from_slice(&id.to_le_bytes());
        e
    }

    fn decode(e: &[u8]) -> Option<Event> {
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        match e[0] {
            1 => Some(Event::Accepted),
            2 => Some(Event::Batch(id)),
            3 => Some(Event::Closed(id)),
            _ => None,
        }
    }
}

/// Write one event; the pipe keeps writes of at most `PIPE_BUF` bytes whole.
fn post(events: &PipeWriter, event: Event) -> io::Result<()> {
    let mut w = events;
    w.write_all(&event.encode())
}

/// A lock that a panicking holder did not leave unusable. No code here
/// panics while holding one, but a poisoned lock must not stop the server.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn wait<'a, T>(cv: &Condvar, g: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(g).unwrap_or_else(|e| e.into_inner())
}

/// Lock `m` once `ready` holds for what it guards, sleeping on `cv` until it
/// does. Every caller has just been told, by a `read`, that another thread
/// made `ready` true; natively it has. In a replay the `read` is answered
/// from the log in its turn, which may come before the other thread got
/// there.
fn wait_until<'a, T>(
    m: &'a Mutex<T>,
    cv: &Condvar,
    ready: impl Fn(&T) -> bool,
) -> MutexGuard<'a, T> {
    let mut g = lock(m);
    while !ready(&g) {
        g = wait(cv, g);
    }
    g
}

/// Connections accepted and not yet taken by the sequencer. Bounded, so the
/// accepting thread never allocates after start.
struct AcceptQueue {
    queue: Mutex<VecDeque<TcpStream>>,
    cv: Condvar,
    cap: usize,
}

/// What a connection thread and the sequencer share.
#[derive(Default)]
struct Slot {
    /// The connection thread has started (and made its allocations).
    started: bool,
    /// A connection for the thread to serve, from the sequencer.
    conn: Option<TcpStream>,
    /// Complete request lines, each ending with `\n` (the thread's memory).
    requests: Vec<u8>,
    /// The batch ends with a line longer than `MAX_LINE`.
    too_long: bool,
    /// `requests` holds a batch the sequencer has not taken yet.
    posted: bool,
    /// The answers to the batch (the sequencer's memory, lent to the thread).
    responses: Vec<u8>,
    /// `responses` holds the answers to the last batch posted.
    answered: bool,
    /// Close the connection once the answers are written.
    close: bool,
}

struct Conn {
    id: u32,
    slot: Mutex<Slot>,
    cv: Condvar,
    /// The sequencer's end of the thread's note pipe.
    notes: PipeWriter,
}

impl Conn {
    /// The sequencer changed the slot: wake the thread.
    fn note(&self) -> Result<(), ServerError> {
        self.cv.notify_all();
        let mut w = &self.notes;
        w.write_all(&[0u8; EVENT_LEN])
            .map_err(ServerError::Sequencer)
    }

    /// The thread's side: wait for the sequencer's next note, then until
    /// `ready` holds for the slot.
    fn wait_note(
        &self,
        notes: &mut PipeReader,
        ready: impl Fn(&Slot) -> bool,
    ) -> MutexGuard<'_, Slot> {
        let mut note = [0u8; EVENT_LEN];
        if let Err(e) = notes.read_exact(&mut note) {
            fatal(&format!("the note pipe failed: {e}"));
        }
        wait_until(&self.slot, &self.cv, ready)
    }
}

impl Server {
    /// Bind the listening socket.
    pub fn bind(addr: &str, config: Config) -> Result<Server, ServerError> {
        let listen_err = |source| ServerError::Listen {
            addr: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        Ok(Server {
            listener,
            addr,
            config,
        })
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until the process ends. Returns only on a fatal error.
    pub fn run(self) -> Result<std::convert::Infallible, ServerError> {
        let (events_rx, events_tx) = io::pipe().map_err(ServerError::Pipe)?;
        // One write end, shared: every event is a single `write`.
        let events_tx = Arc::new(events_tx);
        let max_conns = self.config.max_conns.max(1);
        let accepted = Arc::new(AcceptQueue {
            queue: Mutex::new(VecDeque::with_capacity(64)),
            cv: Condvar::new(),
            cap: 64,
        });
        let sequencer = Sequencer {
            store: Store::new(),
            events_rx,
            events_tx: Arc::clone(&events_tx),
            accepted: Arc::clone(&accepted),
            conns: Vec::new(),
            idle: Vec::new(),
            open: 0,
            max_conns,
            out: Vec::new(),
        };
        let started = Arc::new((Mutex::new(false), Condvar::new()));
        let seq_started = Arc::clone(&started);
        let sequencer = thread::Builder::new()
            .name("kv-sequencer".into())
            .spawn(move || sequencer.run(&seq_started))
            .map_err(|source| ServerError::Thread {
                what: "sequencer",
                source,
            })?;
        {
            let (m, cv) = &*started;
            let mut g = lock(m);
            while !*g {
                g = wait(cv, g);
            }
        }
        let accept_result = accept_loop(&self.listener, self.addr, &accepted, &events_tx);
        drop(events_tx);
        // The sequencer only ends on a fatal error.
        match sequencer.join() {
            Ok(Err(e)) => Err(e),
            _ => accept_result,
        }
    }
}

fn accept_loop(
    listener: &TcpListener,
    addr: SocketAddr,
    accepted: &AcceptQueue,
    events: &PipeWriter,
) -> Result<std::convert::Infallible, ServerError> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _peer)) => stream,
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset => continue,
                _ if matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105)) => {
                    // ENFILE, EMFILE, ENOMEM, ENOBUFS: out of resources for
                    // now. Connections wait in the backlog meanwhile.
                    eprintln!("ferry-kv: accept on {addr}: {e}; retrying in 100 ms");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
                _ => return Err(ServerError::Accept { addr, source: e }),
            },
        };
        let _ = stream.set_nodelay(true);
        {
            let mut q = lock(&accepted.queue);
            while q.len() >= accepted.cap {
                q = wait(&accepted.cv, q);
            }
            q.push_back(stream);
        }
        accepted.cv.notify_all();
        post(events, Event::Accepted).map_err(ServerError::Sequencer)?;
    }
}

/// The thread that owns the store and applies every request.
struct Sequencer {
    store: Store,
    events_rx: PipeReader,
    /// Given to each connection thread it starts.
    events_tx: Arc<PipeWriter>,
    accepted: Arc<AcceptQueue>,
    conns: Vec<Arc<Conn>>,
    /// Connection threads without a connection, reused last-freed first.
    idle: Vec<u32>,
    open: usize,
    max_conns: usize,
    out: Vec<u8>,
}

impl Sequencer {
    fn run(mut self, started: &(Mutex<bool>, Condvar)) -> Result<(), ServerError> {
        let mut buf = vec![0u8; 64 * EVENT_LEN];
        self.out.reserve(4096);
        {
            let (m, cv) = started;
            *lock(m) = true;
            cv.notify_all();
        }
        let mut have = 0;
        loop {
            let n = match self.events_rx.read(&mut buf[have..]) {
                Ok(0) => {
                    return Err(ServerError::Sequencer(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "every writer closed the pipe",
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Sequencer(e)),
            };
            have += n;
            let whole = have - have % EVENT_LEN;
            for e in buf[..whole].chunks_exact(EVENT_LEN) {
                match Event::decode(e) {
                    Some(event) => self.handle(event)?,
                    None => {
                        return Err(ServerError::Sequencer(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("unknown event {e:02x?}"),
                        )))
                    }
                }
            }
            buf.copy_within(whole..have, 0);
            have -= whole;
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), ServerError> {
        match event {
            Event::Accepted => {
                let stream = {
                    // The event is written after the push, but a replay
                    // may deliver it before the accepting thread got there.
                    let mut q =
                        wait_until(&self.accepted.queue, &self.accepted.cv, |q| !q.is_empty());
                    q.pop_front().expect("not empty")
                };
                self.accepted.cv.notify_all();
                self.assign(stream)?;
            }
            Event::Batch(id) => {
                if let Some(conn) = self.conns.get(id as usize).cloned() {
                    self.answer(&conn)?;
                }
            }
            Event::Closed(id) => {
                if (id as usize) < self.conns.len() {
                    self.idle.push(id);
                    self.open -= 1;
                }
            }
        }
        Ok(())
    }

    /// Give a new connection to a free connection thread, or refuse it.
    fn assign(&mut self, mut stream: TcpStream) -> Result<(), ServerError> {
        if self.open >= self.max_conns {
            let _ = stream.write_all(TOO_MANY);
            return Ok(());
        }
        let conn = match self.idle.pop() {
            Some(id) => Arc::clone(&self.conns[id as usize]),
            None => match self.start_conn_thread() {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("ferry-kv: cannot start a connection thread: {e}");
                    let _ = stream.write_all(TOO_MANY);
                    return Ok(());
                }
            },
        };
        self.open += 1;
        lock(&conn.slot).conn = Some(stream);
        conn.note()
    }

    /// Start one more connection thread and wait until it has started, so
    /// that no two threads ever start at the same time.
    fn start_conn_thread(&mut self) -> io::Result<Arc<Conn>> {
        let id = self.conns.len() as u32;
        let (notes_rx, notes) = io::pipe()?;
        let conn = Arc::new(Conn {
            id,
            slot: Mutex::new(Slot::default()),
            cv: Condvar::new(),
            notes,
        });
        let events = Arc::clone(&self.events_tx);
        let theirs = Arc::clone(&conn);
        thread::Builder::new()
            .name(format!("kv-conn-{id}"))
            .stack_size(CONN_STACK)
            .spawn(move || conn_thread(&theirs, events, notes_rx))?;
        let mut slot = lock(&conn.slot);
        while !slot.started {
            slot = wait(&conn.cv, slot);
        }
        drop(slot);
        self.conns.push(Arc::clone(&conn));
        Ok(conn)
    }

    /// Apply a posted batch and hand the answers back.
    fn answer(&mut self, conn: &Conn) -> Result<(), ServerError> {
        // As with `Accepted`: in a replay the event may come out of the pipe
        // before the thread that wrote it has filled its slot.
        let mut guard = wait_until(&conn.slot, &conn.cv, |s| s.posted);
        guard.posted = false;
        let slot = &mut *guard;
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let mut close = false;
        for line in slot.requests.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\n").unwrap_or(line);
            match parse_request(line) {
                Ok(Request::Quit) => {
                    respond(&mut out, &Response::Bye);
                    close = true;
                }
                Ok(request) => respond(&mut out, &self.store.apply(request)),
                Err(e @ RequestError::LineTooLong) => {
                    respond(&mut out, &Response::Err(e.to_string()));
                    close = true;
                }
                Err(e) => respond(&mut out, &Response::Err(e.to_string())),
            }
            if close {
                break;
            }
        }
        if slot.too_long && !close {
            respond(
                &mut out,
                &Response::Err(RequestError::LineTooLong.to_string()),
            );
            close = true;
        }
        // The answers go out in the sequencer's buffer; the thread's previous
        // buffer (also the sequencer's) comes back for the next batch.
        self.out = std::mem::replace(&mut slot.responses, out);
        slot.close = close;
        slot.answered = true;
        drop(guard);
        conn.note()
    }
}

fn respond(out: &mut Vec<u8>, r: &Response) {
    // Writing into a Vec cannot fail.
    let _ = writeln!(out, "{r}");
}

/// A connection thread: serve each connection the sequencer gives it.
fn conn_thread(conn: &Conn, events: Arc<PipeWriter>, mut notes: PipeReader) {
    // Every allocation this thread makes, it makes here, while the
    // sequencer waits for it to start.
    let mut pending: Vec<u8> = Vec::with_capacity(CONN_BUFFER);
    {
        let mut slot = lock(&conn.slot);
        slot.requests = Vec::with_capacity(CONN_BUFFER);
        slot.started = true;
    }
    conn.cv.notify_all();
    loop {
        let stream = conn.wait_note(&mut notes, |s| s.conn.is_some()).conn.take();
        if let Some(stream) = stream {
            serve(conn, &events, &mut notes, stream, &mut pending);
        }
        if let Err(e) = post(&events, Event::Closed(conn.id)) {
            fatal(&format!("the sequencer pipe failed: {e}"));
        }
    }
}

/// Serve one connection until it ends; dropping `stream` closes it.
fn serve(
    conn: &Conn,
    events: &PipeWriter,
    notes: &mut PipeReader,
    mut stream: TcpStream,
    pending: &mut Vec<u8>,
) {
    pending.clear();
    loop {
        let start = pending.len();
        pending.resize(start + READ_CHUNK, 0);
        let n = loop {
            match stream.read(&mut pending[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(n) => break n,
                Err(_) => break 0,
            }
        };
        pending.truncate(start + n);
        if n == 0 {
            return;
        }
        // `pending` holds no `\n` before `start`: complete lines end at the
        // last `\n` that just arrived.
        let end = match pending[start..].iter().rposition(|&b| b == b'\n') {
            Some(i) => start + i + 1,
            None => 0,
        };
        let too_long = pending.len() - end > MAX_LINE;
        if end == 0 && !too_long {
            continue;
        }
        {
            let mut slot = lock(&conn.slot);
            slot.requests.clear();
            slot.requests.extend_from_slice(&pending[..end]);
            slot.too_long = too_long;
            slot.answered = false;
            slot.posted = true;
        }
        conn.cv.notify_all();
        if let Err(e) = post(events, Event::Batch(conn.id)) {
            fatal(&format!("the sequencer pipe failed: {e}"));
        }
        let (responses, close) = {
            let mut slot = conn.wait_note(notes, |s| s.answered);
            (std::mem::take(&mut slot.responses), slot.close)
        };
        let written = stream.write_all(&responses);
        lock(&conn.slot).responses = responses;
        if written.is_err() || close {
            return;
        }
        pending.drain(..end);
    }
}

/// The server cannot go on: say why and end the process.
fn fatal(message: &str) -> ! {
    eprintln!("ferry-kv: {message}");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        for e in [Event::Accepted, Event::Batch(7), Event::Closed(u32::MAX)] {
            assert_eq!(Event::decode(&e.encode()), Some(e));
        }
        assert_eq!(Event::decode(&[9, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
