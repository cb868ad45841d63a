//! Control requests and replies survive the wire, and a reader refuses what
//! is not one.

use ferry_proto::control::*;
use ferry_proto::wire::{self, FrameReader, KIND_CONTROL_REPLY, KIND_CONTROL_REQUEST};

#[test]
fn requests_and_replies_round_trip() {
    let req = Request::new(Command::Run(RunRequest {
        name: "kv".into(),
        argv: vec![b"ferry-kv".to_vec(), b"--listen".to_vec()],
        env: vec![b"PATH=/bin".to_vec()],
        cwd: b"/".to_vec(),
        vip: Some("10.0.0.1/24@eth0".into()),
        mode: RunMode::Async,
    }));
    let frame = wire::encode(KIND_CONTROL_REQUEST, 0, &req).unwrap();
    let mut r = FrameReader::with_max_body(MAX_CONTROL_BODY);
    r.push(&frame);
    let f = r.next_frame().unwrap().unwrap();
    assert_eq!(f.kind, KIND_CONTROL_REQUEST);
    assert_eq!(f.decode::<Request>().unwrap(), req);
    assert_eq!(req.version, CONTROL_VERSION);

    let reply = Reply::error(ErrorKind::BadRequest, "no application x");
    let frame = wire::encode(KIND_CONTROL_REPLY, 0, &reply).unwrap();
    let mut r = FrameReader::new();
    r.push(&frame);
    assert_eq!(
        r.next_frame().unwrap().unwrap().decode::<Reply>().unwrap(),
        reply
    );
}

#[test]
fn a_body_that_is_not_a_request_does_not_decode() {
    let frame = wire::encode_raw(KIND_CONTROL_REQUEST, 0, &[0xff; 5]).unwrap();
    let mut r = FrameReader::new();
    r.push(&frame);
    let e = r
        .next_frame()
        .unwrap()
        .unwrap()
        .decode::<Request>()
        .unwrap_err();
    assert!(e.to_string().contains("does not decode"), "{e}");
}
