//! The key-value state and the requests that read and change it. No I/O, no
//! clock, no randomness: the same requests in the same order give the same
//! state and the same responses.

use crate::digest::{entry_hash, StateDigest};
use crate::protocol::{Request, Response};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct Entry {
    version: u64,
    value: String,
    hash: u128,
}

/// The state: a map from key to (version, value), and the version counter.
#[derive(Clone, Debug, Default)]
pub struct Store {
    map: BTreeMap<String, Entry>,
    counter: u64,
    digest: StateDigest,
}

impl Store {
    /// An empty store; the first write gets version 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The version the last write got (0 before any write).
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no key.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The version and value of a key.
    pub fn get(&self, key: &str) -> Option<(u64, &str)> {
        self.map.get(key).map(|e| (e.version, e.value.as_str()))
    }

    /// The `DIGEST` of the whole state.
    pub fn digest(&self) -> String {
        self.digest.hex(self.counter)
    }

    /// Set a key; returns the write's version.
    pub fn set(&mut self, key: &str, value: &str) -> u64 {
        self.set_owned(key.to_owned(), value.to_owned())
    }

    fn set_owned(&mut self, key: String, value: String) -> u64 {
        self.counter += 1;
        let version = self.counter;
        let hash = entry_hash(key.as_bytes(), version, value.as_bytes());
        self.digest.add_hash(hash);
        let entry = Entry {
            version,
            value,
            hash,
        };
        if let Some(old) = self.map.get_mut(&key) {
            self.digest.remove_hash(old.hash);
            *old = entry;
        } else {
            self.map.insert(key, entry);
        }
        version
    }

    /// Delete a key; returns the write's version, or `None` if it was missing
    /// (which is not a write).
    pub fn del(&mut self, key: &str) -> Option<u64> {
        let old = self.map.remove(key)?;
        self.digest.remove_hash(old.hash);
        self.counter += 1;
        Some(self.counter)
    }

    /// Apply one request and return its response (`QUIT` is answered `BYE`;
    /// closing the connection is the caller's business).
    pub fn apply(&mut self, request: Request) -> Response {
        match request {
            Request::Set { key, value } => Response::Ok(self.set_owned(key, value)),
            Request::Get { key } => match self.get(&key) {
                Some((version, value)) => Response::Value {
                    version,
                    value: value.to_owned(),
                },
                None => Response::Missing,
            },
            Request::Del { key } => match self.del(&key) {
                Some(version) => Response::Ok(version),
                None => Response::Missing,
            },
            Request::Count => Response::Count(self.map.len() as u64),
            Request::Digest => Response::Digest(self.digest()),
            Request::Ping => Response::Pong,
            Request::Quit => Response::Bye,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_writes_only() {
        let mut s = Store::new();
        assert_eq!(s.set("a", "1"), 1);
        assert_eq!(s.set("b", "2"), 2);
        assert_eq!(s.set("a", "3"), 3);
        assert_eq!(s.get("a"), Some((3, "3")));
        assert_eq!(s.del("zz"), None);
        assert_eq!(s.counter(), 3);
        assert_eq!(s.del("b"), Some(4));
        assert_eq!(s.len(), 1);
        assert_eq!(s.apply(Request::Count), Response::Count(1));
    }

    #[test]
    fn digest_follows_the_state() {
        let mut a = Store::new();
        let empty = a.digest();
        a.set("k", "v");
        let one = a.digest();
        assert_ne!(empty, one);
        a.set("k", "w");
        assert_ne!(a.digest(), one);
        // The same entries, written in another order, with the same versions
        // and counter: the same digest.
        let mut b = Store::new();
        b.set("x", "1");
        b.set("y", "2");
        let mut c = Store::new();
        c.set("x", "1");
        c.set("y", "2");
        c.set("z", "3");
        c.del("z");
        assert_ne!(b.digest(), c.digest(), "the counter is part of the state");
        let mut expected = StateDigest::new();
        expected.add(b"y", 2, b"2");
        expected.add(b"x", 1, b"1");
        assert_eq!(b.digest(), expected.hex(2));
    }
}
