//! The text protocol, shared by the server and the clients (docs/KV.md).
//!
//! One request per line, one response line per request (a `QUIT` is answered
//! with `BYE` and the connection closes). Tokens are separated by spaces.
//! Keys and values are printable ASCII without spaces.

use std::fmt;
use thiserror::Error;

/// The longest key, in bytes.
pub const MAX_KEY: usize = 256;
/// The longest value, in bytes.
pub const MAX_VALUE: usize = 64 * 1024;
/// The longest request line, in bytes, without its `\n`: room for
/// `SET <key> <value>` with the longest key and value, and a little slack.
pub const MAX_LINE: usize = 66 * 1024;

/// A request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `SET key value` → `OK version`.
    Set { key: String, value: String },
    /// `GET key` → `VALUE version value` or `MISSING`.
    Get { key: String },
    /// `DEL key` → `OK version` or `MISSING`.
    Del { key: String },
    /// `COUNT` → `COUNT n`.
    Count,
    /// `DIGEST` → `DIGEST hex`.
    Digest,
    /// `PING` → `PONG`.
    Ping,
    /// `QUIT` → `BYE`, then the server closes the connection.
    Quit,
}

impl Request {
    /// The command word, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Set { .. } => "SET",
            Request::Get { .. } => "GET",
            Request::Del { .. } => "DEL",
            Request::Count => "COUNT",
            Request::Digest => "DIGEST",
            Request::Ping => "PING",
            Request::Quit => "QUIT",
        }
    }

    /// Whether the request changes the state (so its outcome matters when the
    /// connection breaks before the answer).
    pub fn is_write(&self) -> bool {
        matches!(self, Request::Set { .. } | Request::Del { .. })
    }

    /// Check the key and value limits, as the server will.
    pub fn validate(&self) -> Result<(), RequestError> {
        match self {
            Request::Set { key, value } => {
                check_key(key.as_bytes())?;
                check_value(value.as_bytes())
            }
            Request::Get { key } | Request::Del { key } => check_key(key.as_bytes()),
            _ => Ok(()),
        }
    }

    /// Append the request line, with its `\n`, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Set { key, value } => {
                out.extend_from_slice(b"SET ");
                out.extend_from_slice(key.as_bytes());
                out.push(b' ');
                out.extend_from_slice(value.as_bytes());
            }
            Request::Get { key } => {
                out.extend_from_slice(b"GET ");
                out.extend_from_slice(key.as_bytes());
            }
            Request::Del { key } => {
                out.extend_from_slice(b"DEL ");
                out.extend_from_slice(key.as_bytes());
            }
            other => out.extend_from_slice(other.name().as_bytes()),
        }
        out.push(b'\n');
    }
}

/// Why a request line was refused. The server answers `ERR <this>`.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RequestError {
    #[error("empty request")]
    Empty,
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("{command} takes {expected}")]
    Arity {
        command: &'static str,
        expected: &'static str,
    },
    #[error("key longer than {MAX_KEY} bytes")]
    KeyTooLong,
    #[error("value longer than {MAX_VALUE} bytes")]
    ValueTooLong,
    #[error("{what} has byte 0x{byte:02x} at offset {offset}: only printable ASCII without spaces is allowed")]
    BadByte {
        what: &'static str,
        byte: u8,
        offset: usize,
    },
    #[error("empty {0}")]
    EmptyToken(&'static str),
    #[error("line too long")]
    LineTooLong,
}

fn check_token(what: &'static str, bytes: &[u8]) -> Result<(), RequestError> {
    match bytes.iter().position(|b| !b.is_ascii_graphic()) {
        Some(offset) => Err(RequestError::BadByte {
            what,
            byte: bytes[offset],
            offset,
        }),
        None => Ok(()),
    }
}

fn check_key(key: &[u8]) -> Result<(), RequestError> {
    if key.len() > MAX_KEY {
        return Err(RequestError::KeyTooLong);
    }
    if key.is_empty() {
        return Err(RequestError::EmptyToken("key"));
    }
    check_token("key", key)
}

fn check_value(value: &[u8]) -> Result<(), RequestError> {
    if value.len() > MAX_VALUE {
        return Err(RequestError::ValueTooLong);
    }
    if value.is_empty() {
        return Err(RequestError::EmptyToken("value"));
    }
    check_token("value", value)
}

fn text(bytes: &[u8]) -> String {
    // Only called on tokens that passed `check_token`: plain ASCII.
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parse one request line (without its `\n`; a trailing `\r` is ignored).
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(RequestError::LineTooLong);
    }
    let mut tokens = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let Some(command) = tokens.next() else {
        return Err(RequestError::Empty);
    };
    let args: [Option<&[u8]>; 3] = [tokens.next(), tokens.next(), tokens.next()];
    let arity = |command, expected| Err(RequestError::Arity { command, expected });
    match command {
        b"SET" => match args {
            [Some(key), Some(value), None] => {
                check_key(key)?;
                check_value(value)?;
                Ok(Request::Set {
                    key: text(key),
                    value: text(value),
                })
            }
            _ => arity("SET", "a key and a value"),
        },
        b"GET" | b"DEL" => match args {
            [Some(key), None, None] => {
                check_key(key)?;
                let key = text(key);
                Ok(if command == b"GET" {
                    Request::Get { key }
                } else {
                    Request::Del { key }
                })
            }
            _ if command == b"GET" => arity("GET", "one key"),
            _ => arity("DEL", "one key"),
        },
        b"COUNT" | b"DIGEST" | b"PING" | b"QUIT" => {
            let request = match command {
                b"COUNT" => Request::Count,
                b"DIGEST" => Request::Digest,
                b"PING" => Request::Ping,
                _ => Request::Quit,
            };
            match args[0] {
                None => Ok(request),
                Some(_) => arity(request.name(), "no argument"),
            }
        }
        other => {
            let mut shown: String = other
                .iter()
                .take(32)
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
                .collect();
            if other.len() > 32 {
                shown.push('…');
            }
            Err(RequestError::UnknownCommand(shown))
        }
    }
}

/// A response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `OK version`: a write was applied with this version.
    Ok(u64),
    /// `VALUE version value`.
    Value { version: u64, value: String },
    /// `MISSING`.
    Missing,
    /// `COUNT n`.
    Count(u64),
    /// `DIGEST hex`.
    Digest(String),
    /// `PONG`.
    Pong,
    /// `BYE`: the answer to `QUIT`.
    Bye,
    /// `ERR reason`.
    Err(String),
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Response::Ok(v) => write!(f, "OK {v}"),
            Response::Value { version, value } => write!(f, "VALUE {version} {value}"),
            Response::Missing => f.write_str("MISSING"),
            Response::Count(n) => write!(f, "COUNT {n}"),
            Response::Digest(hex) => write!(f, "DIGEST {hex}"),
            Response::Pong => f.write_str("PONG"),
            Response::Bye => f.write_str("BYE"),
            Response::Err(reason) => write!(f, "ERR {reason}"),
        }
    }
}

/// A response line the client could not understand.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("unexpected response line {0:?}")]
pub struct BadResponse(pub String);

/// Parse one response line (without its `\n`).
pub fn parse_response(line: &str) -> Result<Response, BadResponse> {
    let bad = || BadResponse(line.chars().take(200).collect());
    let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
    let (word, rest) = match line.split_once(' ') {
        Some((w, r)) => (w, Some(r)),
        None => (line, None),
    };
    match (word, rest) {
        ("OK", Some(v)) => Ok(Response::Ok(number(v)?)),
        ("VALUE", Some(rest)) => {
            let (version, value) = rest.split_once(' ').ok_or_else(bad)?;
            Ok(Response::Value {
                version: number(version)?,
                value: value.to_owned(),
            })
        }
        ("MISSING", None) => Ok(Response::Missing),
        ("COUNT", Some(n)) => Ok(Response::Count(number(n)?)),
        ("DIGEST", Some(hex)) => Ok(Response::Digest(hex.to_owned())),
        ("PONG", None) => Ok(Response::Pong),
        ("BYE", None) => Ok(Response::Bye),
        ("ERR", Some(reason)) => Ok(Response::Err(reason.to_owned())),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Request {
        Request::Set {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn parses_every_command() {
        assert_eq!(parse_request(b"SET a b"), Ok(set("a", "b")));
        assert_eq!(parse_request(b"SET  a   b \r"), Ok(set("a", "b")));
        assert_eq!(
            parse_request(b"GET k"),
            Ok(Request::Get { key: "k".into() })
        );
        assert_eq!(
            parse_request(b"DEL k"),
            Ok(Request::Del { key: "k".into() })
        );
        assert_eq!(parse_request(b"COUNT"), Ok(Request::Count));
        assert_eq!(parse_request(b"DIGEST"), Ok(Request::Digest));
        assert_eq!(parse_request(b"PING"), Ok(Request::Ping));
        assert_eq!(parse_request(b"QUIT"), Ok(Request::Quit));
    }

    #[test]
    fn refuses_bad_requests() {
        assert_eq!(parse_request(b""), Err(RequestError::Empty));
        assert_eq!(parse_request(b"   "), Err(RequestError::Empty));
        assert!(matches!(
            parse_request(b"set a b"),
            Err(RequestError::UnknownCommand(_))
        ));
        assert!(matches!(
            parse_request(b"SET a"),
            Err(RequestError::Arity { .. })
        ));
        assert!(matches!(
            parse_request(b"SET a b c"),
            Err(RequestError::Arity { .. })
        ));
        assert!(matches!(
            parse_request(b"GET"),
            Err(RequestError::Arity { .. })
        ));
        assert!(matches!(
            parse_request(b"PING x"),
            Err(RequestError::Arity { .. })
        ));
        let long_key = vec![b'k'; MAX_KEY + 1];
        let mut line = b"GET ".to_vec();
        line.extend_from_slice(&long_key);
        assert_eq!(parse_request(&line), Err(RequestError::KeyTooLong));
        let mut line = b"SET k ".to_vec();
        line.extend(std::iter::repeat_n(b'v', MAX_VALUE + 1));
        assert_eq!(parse_request(&line), Err(RequestError::ValueTooLong));
        assert!(matches!(
            parse_request(b"SET k\x01 v"),
            Err(RequestError::BadByte { what: "key", .. })
        ));
        assert!(matches!(
            parse_request(b"SET k v\xff"),
            Err(RequestError::BadByte { what: "value", .. })
        ));
        let line = vec![b'x'; MAX_LINE + 1];
        assert_eq!(parse_request(&line), Err(RequestError::LineTooLong));
    }

    #[test]
    fn the_longest_request_fits_a_line() {
        let r = set(&"k".repeat(MAX_KEY), &"v".repeat(MAX_VALUE));
        let mut line = Vec::new();
        r.encode(&mut line);
        assert!(line.len() - 1 <= MAX_LINE);
        assert_eq!(parse_request(&line[..line.len() - 1]), Ok(r));
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::Ok(7),
            Response::Value {
                version: 3,
                value: "x".into(),
            },
            Response::Missing,
            Response::Count(0),
            Response::Digest("00ff".into()),
            Response::Pong,
            Response::Bye,
            Response::Err("line too long".into()),
        ] {
            assert_eq!(parse_response(&r.to_string()), Ok(r));
        }
        assert!(parse_response("OK x").is_err());
        assert!(parse_response("VALUE 3").is_err());
        assert!(parse_response("").is_err());
    }
}
