//! A TCP server recorded while real clients talk to it, then replayed with no
//! client at all: the replay must print the same output and exit 0.

use ferry_tests::{
    assert_exit, assert_same_stdout, parse_listening, tcp_clients, Ferry, Running, Workdir, TIMEOUT,
};

const CLIENTS: [&str; 3] = ["alpha", "bravo", "charlie"];

#[test]
fn tcp_server_replays_without_clients() {
    let work = Workdir::new("tcp");
    let ferry = Ferry::new(&work);
    let exe = work.compile("tcp_server");
    let log = work.file("tcp_server.log");
    let count = CLIENTS.len().to_string();
    let argv = [exe.as_os_str(), count.as_ref()];

    let mut server = Running::spawn(
        "ferry record tcp_server",
        ferry.command("record", &log, &argv),
    );
    let port = parse_listening(&server.wait_for_line("listening ", TIMEOUT));
    let answers = tcp_clients(port, &CLIENTS);
    let record = server.finish(TIMEOUT);
    assert_exit(&record, 0);

    // What the server printed is what the clients saw.
    let out = record.stdout_text();
    for (i, (line, answer)) in CLIENTS.iter().zip(&answers).enumerate() {
        assert!(
            out.contains(&format!("client {i} received {line}\n"))
                && out.contains(&format!("client {i} sent {answer}\n")),
            "the server's output does not show client {i} ({line:?} -> {answer:?}).\n{}",
            record.describe()
        );
    }
    assert!(
        out.ends_with(&format!("served {}\n", CLIENTS.len())),
        "{}",
        record.describe()
    );

    let replay = ferry.replay(&log, &argv);
    assert_exit(&replay, 0);
    assert_same_stdout(&record, &replay);
}
