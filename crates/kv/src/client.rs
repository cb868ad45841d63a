//! A client for the ferry-kv protocol, with timeouts and an optional
//! reconnecting mode.
//!
//! Every error says whether the request may have been applied
//! ([`ClientError::outcome_unknown`]): a write that was sent and whose answer
//! never came may or may not be in the server's state.

use crate::protocol::{parse_response, Request, RequestError, Response, MAX_KEY, MAX_VALUE};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The longest response line a client accepts.
const MAX_RESPONSE: u64 = (MAX_VALUE + MAX_KEY + 64) as u64;

/// How a reconnecting client gets its connection back.
#[derive(Clone, Copy, Debug)]
pub struct Reconnect {
    /// Give up when the connection is not back after this long.
    pub deadline: Duration,
    /// The first wait between attempts; it doubles after each failure.
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            deadline: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// What went wrong with a request.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid {request} request: {source}")]
    Invalid {
        request: &'static str,
        source: RequestError,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("cannot reconnect to {addr} within {deadline:?}: {last}")]
    GaveUp {
        addr: String,
        deadline: Duration,
        last: io::Error,
    },
    #[error("{request} to {addr}: sending failed: {source}")]
    Send {
        addr: String,
        request: &'static str,
        source: io::Error,
    },
    #[error("{request} to {addr}: no answer within {timeout:?}")]
    Timeout {
        addr: String,
        request: &'static str,
        timeout: Duration,
    },
    #[error("{request} to {addr}: receiving the answer failed: {source}")]
    Receive {
        addr: String,
        request: &'static str,
        source: io::Error,
    },
    #[error("{request} to {addr}: the server closed the connection before answering")]
    Closed { addr: String, request: &'static str },
    #[error("{request} to {addr}: the server answered ERR {reason}")]
    Refused {
        addr: String,
        request: &'static str,
        reason: String,
    },
    #[error("{request} to {addr}: unexpected answer {line:?}")]
    Unexpected {
        addr: String,
        request: &'static str,
        line: String,
    },
}

impl ClientError {
    /// The request was (at least partly) sent and the connection broke or
    /// timed out before its answer: a write may or may not have been applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Send { .. }
                | ClientError::Timeout { .. }
                | ClientError::Receive { .. }
                | ClientError::Closed { .. }
        )
    }

    /// The request was certainly not applied: it was never sent, or the
    /// server refused it.
    pub fn not_applied(&self) -> bool {
        !self.outcome_unknown() && !matches!(self, ClientError::Unexpected { .. })
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A connection to a ferry-kv server.
///
/// After a transport error the connection is dropped; the next request
/// connects again (once, or with backoff up to a deadline in reconnecting
/// mode). In reconnecting mode, reads (`GET`, `COUNT`, `DIGEST`, `PING`) are
/// retried until the deadline; writes are not retried, because a write that
/// was sent may have been applied: the error says so.
pub struct Client {
    addr: String,
    timeout: Duration,
    reconnect: Option<Reconnect>,
    conn: Option<Conn>,
    out: Vec<u8>,
    line: Vec<u8>,
    connects: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .field("reconnect", &self.reconnect)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl Client {
    /// Connect once; `timeout` bounds the connect and every read and write.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let mut c = Client::new(addr, timeout, None);
        c.ensure_connected()?;
        Ok(c)
    }

    /// Connect with backoff up to the policy's deadline, and reconnect the
    /// same way whenever the connection breaks (the server may come back on
    /// the same address, after a takeover).
    pub fn connect_reconnecting(
        addr: &str,
        timeout: Duration,
        policy: Reconnect,
    ) -> Result<Client, ClientError> {
        let mut c = Client::new(addr, timeout, Some(policy));
        c.ensure_connected()?;
        Ok(c)
    }

    fn new(addr: &str, timeout: Duration, reconnect: Option<Reconnect>) -> Client {
        Client {
            addr: addr.to_owned(),
            timeout,
            reconnect,
            conn: None,
            out: Vec::new(),
            line: Vec::new(),
            connects: 0,
        }
    }

    /// The server's address, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How many connections this client has opened (1 plus its reconnections).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Whether a connection is open now.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Drop the connection; the next request opens a new one.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    fn open(&self) -> io::Result<Conn> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolved to nothing");
        let addrs: Vec<SocketAddr> = self.addr.to_socket_addrs()?.collect();
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    s.set_read_timeout(Some(self.timeout))?;
                    s.set_write_timeout(Some(self.timeout))?;
                    s.set_nodelay(true)?;
                    let writer = s.try_clone()?;
                    return Ok(Conn {
                        reader: BufReader::with_capacity(64 * 1024, s),
                        writer,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Make sure a connection is open: one attempt, or attempts with backoff
    /// until the reconnect deadline.
    fn ensure_connected(&mut self) -> Result<(), ClientError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let Some(policy) = self.reconnect else {
            let conn = self.open().map_err(|source| ClientError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
            self.conn = Some(conn);
            self.connects += 1;
            return Ok(());
        };
        let start = Instant::now();
        let mut backoff = policy.initial_backoff;
        loop {
            match self.open() {
                Ok(conn) => {
                    self.conn = Some(conn);
                    self.connects += 1;
                    return Ok(());
                }
                Err(last) => {
                    let left = policy.deadline.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Err(ClientError::GaveUp {
                            addr: self.addr.clone(),
                            deadline: policy.deadline,
                            last,
                        });
                    }
                    thread::sleep(backoff.min(left));
                    backoff = (backoff * 2).min(policy.max_backoff);
                }
            }
        }
    }

    /// Send requests in one write and read their answers, in order. Nothing
    /// is retried. A `QUIT` among them ends the connection after its `BYE`.
    pub fn pipeline(&mut self, requests: &[Request]) -> Result<Vec<Response>, ClientError> {
        let mut answers = Vec::with_capacity(requests.len());
        self.pipeline_into(requests, &mut answers)?;
        Ok(answers)
    }

    /// [`Client::pipeline`], appending the answers to `answers`.
    pub fn pipeline_into(
        &mut self,
        requests: &[Request],
        answers: &mut Vec<Response>,
    ) -> Result<(), ClientError> {
        let Some(first) = requests.first() else {
            return Ok(());
        };
        for r in requests {
            r.validate().map_err(|source| ClientError::Invalid {
                request: r.name(),
                source,
            })?;
        }
        self.ensure_connected()?;
        self.out.clear();
        for r in requests {
            r.encode(&mut self.out);
        }
        self.send(first.name())?;
        for r in requests {
            answers.push(self.receive(r.name())?);
            if matches!(r, Request::Quit) {
                self.conn = None;
            }
        }
        Ok(())
    }

    fn send(&mut self, request: &'static str) -> Result<(), ClientError> {
        let conn = self.conn.as_mut().expect("connected");
        if let Err(source) = conn.writer.write_all(&self.out) {
            self.conn = None;
            if is_timeout(&source) {
                return Err(ClientError::Timeout {
                    addr: self.addr.clone(),
                    request,
                    timeout: self.timeout,
                });
            }
            return Err(ClientError::Send {
                addr: self.addr.clone(),
                request,
                source,
            });
        }
        Ok(())
    }

    fn receive(&mut self, request: &'static str) -> Result<Response, ClientError> {
        let conn = self.conn.as_mut().expect("connected");
        self.line.clear();
        let got = (&mut conn.reader)
            .take(MAX_RESPONSE)
            .read_until(b'\n', &mut self.line);
        let addr = || self.addr.clone();
        let broken = match got {
            Ok(_) if self.line.last() == Some(&b'\n') => None,
            Ok(0) => Some(ClientError::Closed {
                addr: addr(),
                request,
            }),
            Ok(_) if self.line.len() as u64 >= MAX_RESPONSE => Some(ClientError::Unexpected {
                addr: addr(),
                request,
                line: format!("a line longer than {MAX_RESPONSE} bytes"),
            }),
            Ok(_) => Some(ClientError::Closed {
                addr: addr(),
                request,
            }),
            Err(e) if is_timeout(&e) => Some(ClientError::Timeout {
                addr: addr(),
                request,
                timeout: self.timeout,
            }),
            Err(source) => Some(ClientError::Receive {
                addr: addr(),
                request,
                source,
            }),
        };
        if let Some(e) = broken {
            self.conn = None;
            return Err(e);
        }
        let line = &self.line[..self.line.len() - 1];
        let text = String::from_utf8_lossy(line);
        match parse_response(&text) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.conn = None;
                Err(ClientError::Unexpected {
                    addr: self.addr.clone(),
                    request,
                    line: text.chars().take(200).collect(),
                })
            }
        }
    }

    /// Send one request and read its answer. In reconnecting mode a request
    /// that is not a write is retried until the deadline.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let retry = match self.reconnect {
            Some(policy) if !request.is_write() => Some(policy),
            _ => None,
        };
        let start = Instant::now();
        loop {
            let mut answers = Vec::with_capacity(1);
            match self.pipeline_into(std::slice::from_ref(request), &mut answers) {
                Ok(()) => return Ok(answers.pop().expect("one answer")),
                Err(e) => match retry {
                    Some(policy) if e.outcome_unknown() && start.elapsed() < policy.deadline => {
                        continue
                    }
                    _ => return Err(e),
                },
            }
        }
    }

    fn refused(&self, request: &Request, response: Response) -> ClientError {
        match response {
            Response::Err(reason) => ClientError::Refused {
                addr: self.addr.clone(),
                request: request.name(),
                reason,
            },
            other => ClientError::Unexpected {
                addr: self.addr.clone(),
                request: request.name(),
                line: other.to_string(),
            },
        }
    }

    /// `SET key value`: the write's version.
    pub fn set(&mut self, key: &str, value: &str) -> Result<u64, ClientError> {
        let r = Request::Set {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        match self.call(&r)? {
            Response::Ok(v) => Ok(v),
            other => Err(self.refused(&r, other)),
        }
    }

    /// `GET key`: its version and value, or `None`.
    pub fn get(&mut self, key: &str) -> Result<Option<(u64, String)>, ClientError> {
        let r = Request::Get {
            key: key.to_owned(),
        };
        match self.call(&r)? {
            Response::Value { version, value } => Ok(Some((version, value))),
            Response::Missing => Ok(None),
            other => Err(self.refused(&r, other)),
        }
    }

    /// `DEL key`: the write's version, or `None` if the key was missing.
    pub fn del(&mut self, key: &str) -> Result<Option<u64>, ClientError> {
        let r = Request::Del {
            key: key.to_owned(),
        };
        match self.call(&r)? {
            Response::Ok(v) => Ok(Some(v)),
            Response::Missing => Ok(None),
            other => Err(self.refused(&r, other)),
        }
    }

    /// `COUNT`: the number of keys.
    pub fn count(&mut self) -> Result<u64, ClientError> {
        match self.call(&Request::Count)? {
            Response::Count(n) => Ok(n),
            other => Err(self.refused(&Request::Count, other)),
        }
    }

    /// `DIGEST`: the digest of the whole state.
    pub fn digest(&mut self) -> Result<String, ClientError> {
        match self.call(&Request::Digest)? {
            Response::Digest(hex) => Ok(hex),
            other => Err(self.refused(&Request::Digest, other)),
        }
    }

    /// `PING`.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::Ping)? {
            Response::Pong => Ok(()),
            other => Err(self.refused(&Request::Ping, other)),
        }
    }

    /// `QUIT`, and close.
    pub fn quit(mut self) -> Result<(), ClientError> {
        if self.conn.is_none() {
            return Ok(());
        }
        match self.pipeline(&[Request::Quit])?.pop() {
            Some(Response::Bye) => Ok(()),
            Some(other) => Err(self.refused(&Request::Quit, other)),
            None => Ok(()),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
