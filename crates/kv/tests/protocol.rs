//! The protocol over real connections: every command, every error path, and
//! input that must never crash the server.

mod common;

use common::{start_server, Raw};
use ferry_kv::protocol::{MAX_KEY, MAX_LINE, MAX_VALUE};
use ferry_kv::server::Config;
use proptest::prelude::*;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// One server for the tests of this file that do not need their own.
fn shared() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| start_server(Config::default()))
}

fn version(answer: &str) -> u64 {
    answer
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("not OK: {answer}"))
        .parse()
        .unwrap()
}

#[test]
fn every_command() {
    let addr = start_server(Config::default());
    let mut c = Raw::connect(addr);
    assert_eq!(c.ask("PING"), "PONG");
    assert_eq!(c.ask("COUNT"), "COUNT 0");
    let empty = c.ask("DIGEST");
    assert!(
        empty.starts_with("DIGEST ") && empty.len() == 7 + 64,
        "{empty}"
    );
    assert_eq!(c.ask("GET a"), "MISSING");
    assert_eq!(c.ask("SET a 1"), "OK 1");
    assert_eq!(c.ask("SET b 2"), "OK 2");
    assert_eq!(c.ask("SET a 3"), "OK 3");
    assert_eq!(c.ask("GET a"), "VALUE 3 3");
    assert_eq!(c.ask("COUNT"), "COUNT 2");
    let two = c.ask("DIGEST");
    assert_ne!(two, empty);
    assert_eq!(c.ask("DEL b"), "OK 4");
    assert_eq!(
        c.ask("DEL b"),
        "MISSING",
        "deleting a missing key is not a write"
    );
    assert_eq!(c.ask("SET c 5"), "OK 5");
    assert_eq!(c.ask("COUNT"), "COUNT 2");
    // A trailing \r and extra spaces are tolerated.
    assert_eq!(c.ask("GET  c \r"), "VALUE 5 5");
    assert_eq!(c.ask("QUIT"), "BYE");
    c.assert_closed();
}

#[test]
fn versions_are_global_and_visible_to_all() {
    let addr = shared();
    let mut a = Raw::connect(addr);
    let mut b = Raw::connect(addr);
    let v1 = version(&a.ask("SET vg-x 1"));
    let v2 = version(&b.ask("SET vg-y 2"));
    assert!(v2 > v1);
    assert_eq!(b.ask("GET vg-x"), format!("VALUE {v1} 1"));
}

#[test]
fn errors_leave_the_connection_usable() {
    let mut c = Raw::connect(shared());
    let long_key = "k".repeat(MAX_KEY + 1);
    let long_value = "v".repeat(MAX_VALUE + 1);
    let cases: Vec<(String, &str)> =
        vec![
        (String::new(), "ERR empty request"),
        ("   ".into(), "ERR empty request"),
        ("HELLO".into(), "ERR unknown command \"HELLO\""),
        ("set a b".into(), "ERR unknown command \"set\""),
        ("SET".into(), "ERR SET takes a key and a value"),
        ("SET a".into(), "ERR SET takes a key and a value"),
        ("SET a b c".into(), "ERR SET takes a key and a value"),
        ("GET".into(), "ERR GET takes one key"),
        ("GET a b".into(), "ERR GET takes one key"),
        ("DEL".into(), "ERR DEL takes one key"),
        ("COUNT x".into(), "ERR COUNT takes no argument"),
        ("DIGEST x".into(), "ERR DIGEST takes no argument"),
        ("PING x".into(), "ERR PING takes no argument"),
        ("QUIT x".into(), "ERR QUIT takes no argument"),
        (format!("GET {long_key}"), "ERR key longer than 256 bytes"),
        (format!("SET k {long_value}"), "ERR value longer than 65536 bytes"),
        (
            "SET k\u{7f} v".into(),
            "ERR key has byte 0x7f at offset 1: only printable ASCII without spaces is allowed",
        ),
        (
            "SET k v\tw".into(),
            "ERR value has byte 0x09 at offset 1: only printable ASCII without spaces is allowed",
        ),
    ];
    for (request, expected) in &cases {
        assert_eq!(&c.ask(request), expected, "request {request:?}");
        assert_eq!(c.ask("PING"), "PONG", "after {request:?}");
    }
    // Bytes that are not UTF-8 at all.
    c.send(b"GET \xff\xfe\n");
    assert_eq!(
        c.line().unwrap(),
        "ERR key has byte 0xff at offset 0: only printable ASCII without spaces is allowed"
    );
    c.send(b"\xc3\x28 x\n");
    assert_eq!(c.line().unwrap(), "ERR unknown command \"?(\"");
    c.send(b"\0\n");
    assert_eq!(c.line().unwrap(), "ERR unknown command \"?\"");
    assert_eq!(c.ask("PING"), "PONG");
}

#[test]
fn the_longest_key_and_value_are_accepted() {
    let mut c = Raw::connect(shared());
    let key = "K".repeat(MAX_KEY);
    let value = "V".repeat(MAX_VALUE);
    let v = version(&c.ask(&format!("SET {key} {value}")));
    assert_eq!(c.ask(&format!("GET {key}")), format!("VALUE {v} {value}"));
}

#[test]
fn a_line_over_the_cap_ends_the_connection() {
    // In one write, with its newline.
    let mut c = Raw::connect(shared());
    let mut line = vec![b'x'; MAX_LINE + 1];
    line.push(b'\n');
    c.send(b"PING\n");
    c.send(&line);
    assert_eq!(c.line().unwrap(), "PONG");
    assert_eq!(c.line().unwrap(), "ERR line too long");
    c.assert_closed();

    // Without a newline, dribbled in small writes: the server stops reading
    // once the line is over the cap.
    let mut c = Raw::connect(shared());
    let chunk = vec![b'y'; 4096];
    let mut sent = 0;
    while sent <= MAX_LINE {
        c.send(&chunk);
        sent += chunk.len();
    }
    assert_eq!(c.line().unwrap(), "ERR line too long");
    c.assert_closed();

    // A line of exactly the cap is only an unknown command.
    let mut c = Raw::connect(shared());
    let mut line = vec![b'z'; MAX_LINE];
    line.push(b'\n');
    c.send(&line);
    assert!(c.line().unwrap().starts_with("ERR unknown command"));
    assert_eq!(c.ask("PING"), "PONG");
}

#[test]
fn quit_stops_at_once_and_drops_the_rest() {
    let mut c = Raw::connect(shared());
    c.send(b"SET q-a 1\nQUIT\nSET q-b 2\n");
    assert!(c.line().unwrap().starts_with("OK "));
    assert_eq!(c.line().unwrap(), "BYE");
    c.assert_closed();
    let mut d = Raw::connect(shared());
    assert_eq!(d.ask("GET q-b"), "MISSING");
}

#[test]
fn an_unterminated_last_line_is_ignored() {
    let mut c = Raw::connect(shared());
    c.send(b"SET ut-a 1\nSET ut-b 2");
    let answers = c.finish();
    assert_eq!(answers.len(), 1, "{answers:?}");
    let mut d = Raw::connect(shared());
    assert_eq!(d.ask("GET ut-b"), "MISSING");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut c = Raw::connect(shared());
    let mut batch = Vec::new();
    for i in 0..2000 {
        batch.extend_from_slice(format!("SET pipe-{i} {i}\nGET pipe-{i}\n").as_bytes());
    }
    // Written from another thread: the answers come back while it writes.
    let mut writer = c.stream.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&batch).unwrap();
    });
    let mut last = 0;
    for i in 0..2000 {
        let v = version(&c.line().unwrap());
        assert!(v > last);
        last = v;
        assert_eq!(c.line().unwrap(), format!("VALUE {v} {i}"));
    }
    t.join().unwrap();
}

#[test]
fn connections_over_the_limit_are_refused() {
    let addr = start_server(Config { max_conns: 2 });
    let mut a = Raw::connect(addr);
    let mut b = Raw::connect(addr);
    assert_eq!(a.ask("PING"), "PONG");
    assert_eq!(b.ask("PING"), "PONG");
    let mut c = Raw::connect(addr);
    assert_eq!(c.line().unwrap(), "ERR too many connections");
    c.assert_closed();
    // A freed place is given to the next connection, by a reused thread.
    assert_eq!(a.ask("QUIT"), "BYE");
    a.assert_closed();
    let mut d = loop {
        let mut d = Raw::connect(addr);
        d.send(b"PING\n");
        match d.line().as_deref() {
            Some("PONG") => break d,
            // The QUIT may not have been counted yet.
            Some("ERR too many connections") => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(d.ask("SET lim 1"), "OK 1");
    assert_eq!(b.ask("GET lim"), "VALUE 1 1");
}

/// A response line is one of the protocol's.
fn is_response(line: &str) -> bool {
    [
        "OK ", "VALUE ", "MISSING", "COUNT ", "DIGEST ", "PONG", "BYE", "ERR ",
    ]
    .iter()
    .any(|p| line.starts_with(p))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Garbage of any kind gets answers of the protocol's kinds, one per line
    /// (at most), and the server keeps serving.
    #[test]
    fn garbage_never_crashes(bytes in proptest::collection::vec(any::<u8>(), 0..3000),
                             words in proptest::collection::vec(
                                 prop::sample::select(vec!["SET", "GET", "DEL", "COUNT", "DIGEST",
                                     "PING", " ", "\n", "\r\n", "k", "v", "\u{0}", "\u{7f}"]), 0..200)) {
        let mut input = bytes;
        input.extend(words.concat().into_bytes());
        let lines = input.iter().filter(|&&b| b == b'\n').count();
        let mut c = Raw::connect(shared());
        c.send(&input);
        let answers = c.finish();
        prop_assert!(answers.len() <= lines, "{} answers to {} lines", answers.len(), lines);
        for a in &answers {
            prop_assert!(is_response(a), "not a response: {a:?}");
        }
        let mut d = Raw::connect(shared());
        prop_assert_eq!(d.ask("PING"), "PONG");
    }

    /// Valid requests cut into arbitrary pieces get the same answers as when
    /// sent whole.
    #[test]
    fn requests_split_anywhere(cuts in proptest::collection::vec(1usize..40, 1..30)) {
        let mut c = Raw::connect(shared());
        let text = b"SET split-a 1\nGET split-a\nPING\nCOUNTX\nDEL split-a\nGET split-a\n";
        let mut at = 0;
        for n in cuts {
            let end = (at + n).min(text.len());
            c.send(&text[at..end]);
            at = end;
        }
        c.send(&text[at..]);
        let answers = c.finish();
        prop_assert_eq!(answers.len(), 6);
        let v = version(&answers[0]);
        prop_assert_eq!(&answers[1], &format!("VALUE {v} 1"));
        prop_assert_eq!(&answers[2], "PONG");
        prop_assert_eq!(&answers[3], "ERR unknown command \"COUNTX\"");
        prop_assert!(answers[4].starts_with("OK ") || answers[4] == "MISSING");
        prop_assert_eq!(&answers[5], "MISSING");
    }
}
