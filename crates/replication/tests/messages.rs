//! Edge cases of message handling, one node (or a tiny cluster with instant
//! delivery) at a time.

use std::collections::{BTreeMap, VecDeque};

use ferry_replication::{
    Action, CommandError, Config, EpochStart, Input, LogPosition, Member, Message, Mode, Node,
    PersistedApp, Refusal, RestoredApp, Role, MS,
};

const APP: &str = "app";

fn members() -> Vec<Member> {
    vec![
        Member::replica("a"),
        Member::replica("b"),
        Member::witness("w"),
    ]
}

fn config(name: &str) -> Config {
    let peers: Vec<&str> = ["a", "b", "w"].into_iter().filter(|p| *p != name).collect();
    Config::new(name, &peers, name == "w")
}

fn msg(from: &str, message: Message) -> Input {
    Input::Message {
        from: from.to_owned(),
        message,
    }
}

fn sends(actions: &[Action]) -> Vec<(String, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, message } => Some((to.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

fn refusals(actions: &[Action]) -> Vec<Refusal> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Refused { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

fn vote_answer(actions: &[Action]) -> Option<bool> {
    sends(actions).into_iter().find_map(|(_, m)| match m {
        Message::Vote { granted, .. } => Some(granted),
        _ => None,
    })
}

fn heartbeat(epoch: u64, sent: u64, floor: LogPosition) -> Message {
    Message::Heartbeat {
        app: APP.into(),
        epoch,
        sent,
        logged: floor.gseq,
        released: floor.gseq,
        floor,
        epoch_start: 1,
        mode: Mode::Sync,
        members: members(),
        migration: None,
    }
}

fn vote_request(epoch: u64, candidate: &str, last_epoch: u64, durable: u64) -> Message {
    Message::VoteRequest {
        app: APP.into(),
        epoch,
        pre: false,
        candidate: candidate.into(),
        last_epoch,
        durable,
        transfer_from: None,
    }
}

/// Nodes with instant delivery: every send is handled at the same time.
struct Cluster {
    nodes: BTreeMap<String, Node>,
    down: Vec<String>,
    log: Vec<(String, Action)>,
}

impl Cluster {
    fn new() -> Cluster {
        let nodes = ["a", "b", "w"]
            .into_iter()
            .map(|n| (n.to_owned(), Node::new(config(n))))
            .collect();
        Cluster {
            nodes,
            down: Vec::new(),
            log: Vec::new(),
        }
    }

    fn run(&mut self, now: u64, who: &str, actions: Vec<Action>) {
        let mut queue: VecDeque<(String, Action)> =
            actions.into_iter().map(|a| (who.to_owned(), a)).collect();
        while let Some((from, action)) = queue.pop_front() {
            if let Action::Send { to, message } = &action {
                if !self.down.contains(to) && !self.down.contains(&from) {
                    let node = self.nodes.get_mut(to).expect("known");
                    let out = node.handle(now, msg(&from, message.clone()));
                    queue.extend(out.into_iter().map(|a| (to.clone(), a)));
                }
            }
            self.log.push((from, action));
        }
    }

    fn input(&mut self, now: u64, who: &str, input: Input) {
        let out = self.nodes.get_mut(who).expect("known").handle(now, input);
        self.run(now, who, out);
    }

    fn tick(&mut self, now: u64) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            if !self.down.contains(&n) {
                let out = self.nodes.get_mut(&n).expect("known").tick(now);
                self.run(now, &n, out);
            }
        }
    }

    fn status(&self, who: &str) -> ferry_replication::AppStatus {
        self.nodes[who].status(APP).expect("known app")
    }

    fn actions_of(&self, who: &str) -> Vec<&Action> {
        self.log
            .iter()
            .filter(|(n, _)| n == who)
            .map(|(_, a)| a)
            .collect()
    }
}

fn started() -> Cluster {
    let mut c = Cluster::new();
    c.input(
        0,
        "a",
        Input::StartApp {
            app: APP.into(),
            mode: Mode::Sync,
            members: members(),
        },
    );
    c
}

#[test]
fn start_opens_the_gate_once_a_majority_grants() {
    let mut c = Cluster::new();
    c.down.push("b".into());
    c.down.push("w".into());
    c.input(
        0,
        "a",
        Input::StartApp {
            app: APP.into(),
            mode: Mode::Sync,
            members: members(),
        },
    );
    assert!(!c.status("a").gate_open, "no grant yet, no gate");
    c.down.clear();
    c.tick(50 * MS);
    let a = c.status("a");
    assert_eq!(a.role, Role::Primary);
    assert!(a.gate_open);
    // The gate's deadline is the grant's send time plus lease * (1 - drift).
    let until = c
        .actions_of("a")
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::OpenGate { until, .. } => Some(*until),
            _ => None,
        })
        .expect("gate opened");
    assert_eq!(until, 50 * MS + 495 * MS);
    assert_eq!(c.status("w").role, Role::Witness);
    assert_eq!(c.status("b").role, Role::Backup);
}

#[test]
fn the_gate_closes_a_heartbeat_before_the_lease_ends() {
    let mut c = started();
    c.tick(50 * MS);
    assert!(c.status("a").gate_open);
    c.down.push("b".into());
    c.down.push("w".into());
    // No more grants. Lease end: 50 + 495 = 545 ms.
    let mut closed_at = None;
    let mut t = 60 * MS;
    while t < 600 * MS {
        let out = c.nodes.get_mut("a").expect("a").tick(t);
        if out.iter().any(|a| matches!(a, Action::CloseGate { .. })) {
            closed_at = Some(t);
            break;
        }
        t += 10 * MS;
    }
    let closed_at = closed_at.expect("gate closed");
    assert!(
        closed_at < 545 * MS && closed_at + 50 * MS >= 545 * MS,
        "closed at {closed_at}"
    );
}

#[test]
fn sync_release_waits_for_the_backup() {
    let mut c = started();
    c.tick(50 * MS);
    // b must join and resync first.
    let resync = c.log.iter().find_map(|(n, a)| match a {
        Action::Resync {
            from_gseq,
            from_node,
            ..
        } if n == "b" => Some((*from_gseq, from_node.clone())),
        _ => None,
    });
    assert_eq!(resync, Some((1, "a".to_owned())));
    c.input(
        60 * MS,
        "b",
        Input::Resynced {
            app: APP.into(),
            gseq: 0,
        },
    );
    c.input(
        61 * MS,
        "a",
        Input::RecordsLogged {
            app: APP.into(),
            gseq: 10,
        },
    );
    assert!(c.status("a").protected);
    assert_eq!(
        c.status("a").acked,
        0,
        "nothing released before the backup has it"
    );
    c.input(
        62 * MS,
        "b",
        Input::Durable {
            app: APP.into(),
            gseq: 7,
        },
    );
    assert_eq!(c.status("a").acked, 7);
    c.input(
        63 * MS,
        "b",
        Input::Durable {
            app: APP.into(),
            gseq: 10,
        },
    );
    assert_eq!(c.status("a").acked, 10);
    assert_eq!(c.status("a").lag, 0);
}

#[test]
fn without_a_backup_the_primary_releases_once_a_majority_holds_the_floor() {
    let mut c = started();
    c.tick(50 * MS);
    c.down.push("b".into());
    c.input(60 * MS, "a", Input::PeerDisconnected { peer: "b".into() });
    c.input(
        61 * MS,
        "a",
        Input::RecordsLogged {
            app: APP.into(),
            gseq: 20,
        },
    );
    assert!(!c.status("a").protected);
    // The next heartbeat announces the floor; the witness's grant releases.
    c.tick(71 * MS);
    let a = c.status("a");
    assert_eq!(a.acked, 20, "{a:?}");
    assert_eq!(c.status("w").release_floor.gseq, 20);
    // The floor was persisted before the grant went out.
    let w = c.actions_of("w");
    let persist = w
        .iter()
        .position(|a| matches!(a, Action::Persist { state, .. } if state.release_floor.gseq == 20));
    let grant = w.iter().position(|a| {
        matches!(a, Action::Send { message: Message::LeaseGrant { floor, .. }, .. } if floor.gseq == 20)
    });
    assert!(persist.expect("persisted") < grant.expect("granted"));
}

#[test]
fn lower_epoch_is_refused_and_told_the_current_one() {
    let mut w = Node::new(config("w"));
    w.handle(0, msg("b", heartbeat(3, 0, LogPosition::default())));
    let out = w.handle(MS, msg("a", heartbeat(2, 0, LogPosition::default())));
    assert_eq!(
        refusals(&out),
        vec![Refusal::StaleEpoch { got: 2, current: 3 }]
    );
    let stale = sends(&out);
    assert!(
        matches!(&stale[..], [(to, Message::Stale { epoch: 3, primary: Some(p), .. })] if to == "a" && p == "b")
    );
    // No grant for the old primary.
    assert!(!stale
        .iter()
        .any(|(_, m)| matches!(m, Message::LeaseGrant { .. })));
}

#[test]
fn a_deposed_primary_steps_down_on_a_stale_answer() {
    let mut c = started();
    c.tick(50 * MS);
    let out = c.nodes.get_mut("a").expect("a").handle(
        60 * MS,
        msg(
            "w",
            Message::Stale {
                app: APP.into(),
                epoch: 2,
                primary: Some("b".into()),
            },
        ),
    );
    assert!(out.iter().any(|a| matches!(a, Action::CloseGate { .. })));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Demote { epoch: 2, .. })));
    let a = c.status("a");
    assert_eq!((a.role, a.epoch, a.gate_open), (Role::Backup, 2, false));
}

#[test]
fn one_vote_per_epoch() {
    let mut w = Node::new(config("w"));
    w.handle(0, msg("a", heartbeat(1, 0, LogPosition::default())));
    let t = 600 * MS;
    let out = w.handle(t, msg("b", vote_request(2, "b", 1, 10)));
    assert_eq!(vote_answer(&out), Some(true));
    assert!(out.iter().any(|a| matches!(a, Action::Persist { state, .. } if state.epoch == 2 && state.voted_for.as_deref() == Some("b"))));
    let out = w.handle(t + MS, msg("a", vote_request(2, "a", 1, 10)));
    assert_eq!(vote_answer(&out), Some(false));
    assert_eq!(
        refusals(&out),
        vec![Refusal::AlreadyVoted {
            epoch: 2,
            voted_for: "b".into()
        }]
    );
    // Asking again for the same candidate is fine (a lost answer).
    let out = w.handle(t + 2 * MS, msg("b", vote_request(2, "b", 1, 10)));
    assert_eq!(vote_answer(&out), Some(true));
}

#[test]
fn no_vote_while_a_lease_is_promised() {
    let mut w = Node::new(config("w"));
    w.handle(100 * MS, msg("a", heartbeat(1, 7, LogPosition::default())));
    let promise_end = 100 * MS + 505 * MS;
    let out = w.handle(promise_end - 1, msg("b", vote_request(2, "b", 1, 0)));
    assert!(matches!(
        refusals(&out)[..],
        [Refusal::LeasePromised { .. }]
    ));
    let out = w.handle(promise_end, msg("b", vote_request(2, "b", 1, 0)));
    assert_eq!(vote_answer(&out), Some(true));
}

#[test]
fn no_vote_for_a_candidate_behind_the_voter_or_the_floor() {
    // A backup with 100 durable records refuses a candidate with 50.
    let mut b = Node::restore(
        config("b"),
        vec![RestoredApp {
            app: APP.into(),
            state: PersistedApp {
                epoch: 1,
                voted_for: Some("a".into()),
                release_floor: LogPosition::default(),
                members: members(),
                mode: Mode::Sync,
                history: vec![EpochStart {
                    epoch: 1,
                    first_gseq: 1,
                }],
                migration: None,
            },
            durable: 100,
        }],
    );
    let t = 10_000 * MS;
    b.tick(0);
    let out = b.handle(t, msg("a", vote_request(2, "a", 1, 50)));
    assert!(matches!(
        refusals(&out)[..],
        [Refusal::CandidateBehind { .. }]
    ));
    // A later epoch in the candidate's log beats a longer older one.
    let out = b.handle(t, msg("a", vote_request(3, "a", 2, 60)));
    assert_eq!(vote_answer(&out), Some(true));

    // A witness that holds a floor refuses a candidate before it.
    let mut w = Node::new(config("w"));
    w.handle(
        0,
        msg("a", heartbeat(1, 0, LogPosition { epoch: 1, gseq: 80 })),
    );
    let out = w.handle(t, msg("b", vote_request(2, "b", 1, 79)));
    assert!(matches!(
        refusals(&out)[..],
        [Refusal::BelowReleaseFloor { .. }]
    ));
    let out = w.handle(t, msg("b", vote_request(2, "b", 1, 80)));
    assert_eq!(vote_answer(&out), Some(true));
}

#[test]
fn a_witness_never_stands_and_is_never_elected() {
    let mut w = Node::new(config("w"));
    w.handle(0, msg("a", heartbeat(1, 0, LogPosition::default())));
    for i in 1..200 {
        let out = w.tick(i * 50 * MS);
        assert!(sends(&out).is_empty(), "a witness sent {:?}", sends(&out));
        assert_eq!(w.status(APP).expect("known").role, Role::Witness);
    }
    let mut b = Node::new(config("b"));
    b.handle(0, msg("a", heartbeat(1, 0, LogPosition::default())));
    let out = b.handle(10_000 * MS, msg("w", vote_request(2, "w", 1, 1_000)));
    assert_eq!(refusals(&out), vec![Refusal::Witness]);
    // And a witness runs no program.
    let out = w.handle(
        10_000 * MS,
        Input::StartApp {
            app: "other".into(),
            mode: Mode::Sync,
            members: members(),
        },
    );
    assert!(out.iter().any(|a| matches!(
        a,
        Action::CommandFailed {
            error: CommandError::Witness,
            ..
        }
    )));
}

#[test]
fn a_restarted_node_keeps_its_vote_and_waits_out_old_promises() {
    let state = PersistedApp {
        epoch: 4,
        voted_for: Some("a".into()),
        release_floor: LogPosition::default(),
        members: members(),
        mode: Mode::Sync,
        history: Vec::new(),
        migration: None,
    };
    let mut w = Node::restore(
        config("w"),
        vec![RestoredApp {
            app: APP.into(),
            state,
            durable: 0,
        }],
    );
    let boot = 1_000 * MS;
    w.tick(boot);
    // Same epoch, other candidate: refused, restart or not.
    let out = w.handle(boot + 50 * MS, msg("b", vote_request(4, "b", 0, 0)));
    assert!(matches!(refusals(&out)[..], [Refusal::AlreadyVoted { .. }]));
    // Next epoch: refused until a promise made before the restart has run out.
    let out = w.handle(boot + 100 * MS, msg("b", vote_request(5, "b", 0, 0)));
    assert!(matches!(
        refusals(&out)[..],
        [Refusal::RecentlyRestarted { .. }]
    ));
    let out = w.handle(boot + 505 * MS, msg("b", vote_request(5, "b", 0, 0)));
    assert_eq!(vote_answer(&out), Some(true));
    // Epochs never go back.
    let out = w.handle(
        boot + 600 * MS,
        msg("a", heartbeat(4, 0, LogPosition::default())),
    );
    assert!(matches!(
        refusals(&out)[..],
        [Refusal::StaleEpoch { got: 4, current: 5 }]
    ));
    assert_eq!(w.status(APP).expect("known").epoch, 5);
}

#[test]
fn pre_votes_change_nothing() {
    let mut w = Node::new(config("w"));
    let t = 10_000 * MS;
    let out = w.handle(
        t,
        msg(
            "b",
            Message::VoteRequest {
                app: APP.into(),
                epoch: 7,
                pre: true,
                candidate: "b".into(),
                last_epoch: 0,
                durable: 0,
                transfer_from: None,
            },
        ),
    );
    // Unknown app: nothing to vote on.
    assert_eq!(refusals(&out), vec![Refusal::UnknownApp]);
    w.handle(t, msg("a", heartbeat(1, 0, LogPosition::default())));
    let out = w.handle(
        t + 600 * MS,
        msg(
            "b",
            Message::VoteRequest {
                app: APP.into(),
                epoch: 2,
                pre: true,
                candidate: "b".into(),
                last_epoch: 0,
                durable: 0,
                transfer_from: None,
            },
        ),
    );
    assert_eq!(vote_answer(&out), Some(true));
    assert!(!out.iter().any(|a| matches!(a, Action::Persist { .. })));
    assert_eq!(w.status(APP).expect("known").epoch, 1);
}

#[test]
fn a_join_is_answered_from_where_the_logs_part() {
    // b is primary of epoch 2, promoted at 900; a was primary of epoch 1 and
    // logged up to 1000.
    let mut b = Node::restore(
        config("b"),
        vec![RestoredApp {
            app: APP.into(),
            state: PersistedApp {
                epoch: 1,
                voted_for: Some("a".into()),
                release_floor: LogPosition::default(),
                members: members(),
                mode: Mode::Sync,
                history: vec![EpochStart {
                    epoch: 1,
                    first_gseq: 1,
                }],
                migration: None,
            },
            durable: 900,
        }],
    );
    let mut t = 0;
    b.tick(t);
    // Elect b: the witness votes.
    let mut promoted = false;
    while !promoted && t < 5_000 * MS {
        t += 10 * MS;
        let mut pending = sends(&b.tick(t));
        while let Some((to, m)) = pending.pop() {
            if to != "w" {
                continue;
            }
            // The witness votes, then grants the new epoch's lease.
            let answer = match m {
                Message::VoteRequest { epoch, pre, .. } => Message::Vote {
                    app: APP.into(),
                    epoch,
                    pre,
                    granted: true,
                    current: 1,
                },
                Message::Heartbeat {
                    epoch, sent, floor, ..
                } => Message::LeaseGrant {
                    app: APP.into(),
                    epoch,
                    echo: sent,
                    floor,
                    durable: None,
                    healthy: true,
                    replayed: None,
                },
                _ => continue,
            };
            {
                let out = b.handle(t, msg("w", answer));
                promoted |= out.iter().any(|a| {
                    matches!(
                        a,
                        Action::Promote {
                            epoch: 2,
                            base: 900,
                            ..
                        }
                    )
                });
                pending.extend(sends(&out));
            }
        }
    }
    assert!(promoted);
    b.handle(
        t,
        Input::RecordsLogged {
            app: APP.into(),
            gseq: 950,
        },
    );
    let out = b.handle(
        t,
        msg(
            "a",
            Message::Join {
                app: APP.into(),
                epoch: 1,
                durable: 1000,
                history: vec![EpochStart {
                    epoch: 1,
                    first_gseq: 1,
                }],
            },
        ),
    );
    let reply = sends(&out).into_iter().find_map(|(_, m)| match m {
        Message::JoinReply {
            from_gseq, history, ..
        } => Some((from_gseq, history)),
        _ => None,
    });
    let (from, history) = reply.expect("join answered despite the lower epoch");
    assert_eq!(from, 901);
    assert_eq!(
        history.last(),
        Some(&EpochStart {
            epoch: 2,
            first_gseq: 901
        })
    );
}

#[test]
fn planned_failover_hands_over_without_waiting_for_the_lease() {
    let mut c = started();
    c.tick(50 * MS);
    c.input(
        60 * MS,
        "b",
        Input::Resynced {
            app: APP.into(),
            gseq: 0,
        },
    );
    c.input(
        61 * MS,
        "a",
        Input::RecordsLogged {
            app: APP.into(),
            gseq: 30,
        },
    );
    c.input(
        62 * MS,
        "b",
        Input::Durable {
            app: APP.into(),
            gseq: 25,
        },
    );
    c.input(
        63 * MS,
        "a",
        Input::Failover {
            app: APP.into(),
            to: None,
        },
    );
    assert!(!c.status("a").gate_open, "the gate closes at once");
    assert!(c
        .actions_of("a")
        .iter()
        .any(|a| matches!(a, Action::PauseApp { .. })));
    c.input(
        64 * MS,
        "a",
        Input::Paused {
            app: APP.into(),
            gseq: 32,
        },
    );
    assert_eq!(
        c.status("a").role,
        Role::Primary,
        "waits for the target to have everything"
    );
    c.input(
        65 * MS,
        "b",
        Input::Durable {
            app: APP.into(),
            gseq: 32,
        },
    );
    // Handed over and promoted at once: the witness votes despite its promise.
    let b = c.status("b");
    assert_eq!((b.role, b.epoch, b.durable), (Role::Primary, 2, 32));
    let a = c.status("a");
    assert_eq!((a.role, a.epoch), (Role::Backup, 2));
    c.tick(100 * MS);
    assert!(c.status("b").gate_open);
    // a rejoins from right after its last record: nothing to fetch again.
    let resync = c.log.iter().rev().find_map(|(n, a)| match a {
        Action::Resync {
            from_gseq,
            from_node,
            ..
        } if n == "a" => Some((*from_gseq, from_node.clone())),
        _ => None,
    });
    assert_eq!(resync, Some((33, "b".to_owned())));
}

#[test]
fn failover_needs_a_healthy_backup() {
    let mut c = started();
    c.tick(50 * MS);
    // b has not resynchronised yet.
    c.input(
        51 * MS,
        "a",
        Input::Failover {
            app: APP.into(),
            to: None,
        },
    );
    assert!(c.actions_of("a").iter().any(|a| matches!(
        a,
        Action::CommandFailed {
            error: CommandError::NoHealthyBackup { .. },
            ..
        }
    )));
    c.input(
        52 * MS,
        "a",
        Input::Failover {
            app: APP.into(),
            to: Some("w".into()),
        },
    );
    assert!(c.actions_of("a").iter().any(|a| matches!(
        a,
        Action::CommandFailed {
            error: CommandError::BadTarget { .. },
            ..
        }
    )));
    assert!(c.status("a").gate_open);
}

#[test]
fn a_switchover_that_stalls_gives_the_role_back() {
    let mut c = started();
    c.tick(50 * MS);
    c.input(
        60 * MS,
        "b",
        Input::Resynced {
            app: APP.into(),
            gseq: 0,
        },
    );
    c.input(
        61 * MS,
        "a",
        Input::RecordsLogged {
            app: APP.into(),
            gseq: 30,
        },
    );
    c.input(
        62 * MS,
        "a",
        Input::Failover {
            app: APP.into(),
            to: None,
        },
    );
    c.input(
        63 * MS,
        "a",
        Input::Paused {
            app: APP.into(),
            gseq: 30,
        },
    );
    // b never gets the records.
    let mut t = 63 * MS;
    while t < 1_200 * MS {
        t += 40 * MS;
        c.tick(t);
    }
    assert!(c
        .actions_of("a")
        .iter()
        .any(|a| matches!(a, Action::ResumeApp { .. })));
    assert!(c.actions_of("a").iter().any(|a| matches!(
        a,
        Action::CommandFailed {
            error: CommandError::FailoverTimedOut { .. },
            ..
        }
    )));
    let a = c.status("a");
    assert_eq!((a.role, a.epoch), (Role::Primary, 1));
    assert!(a.gate_open);
}

#[test]
fn a_corrupt_backup_is_unhealthy_asks_to_resync_and_stands_for_nothing() {
    let mut c = started();
    c.tick(50 * MS);
    c.input(
        60 * MS,
        "b",
        Input::Resynced {
            app: APP.into(),
            gseq: 0,
        },
    );
    c.input(
        61 * MS,
        "a",
        Input::RecordsLogged {
            app: APP.into(),
            gseq: 40,
        },
    );
    c.input(
        62 * MS,
        "b",
        Input::Durable {
            app: APP.into(),
            gseq: 40,
        },
    );
    c.input(
        63 * MS,
        "b",
        Input::CorruptLog {
            app: APP.into(),
            intact_up_to: 12,
        },
    );
    let b = c.status("b");
    assert!(!b.healthy);
    assert_eq!(b.durable, 12);
    assert_eq!(
        b.release_floor.gseq, 40,
        "what it held may have been released"
    );
    assert!(!c.status("a").protected);
    let resync = c.log.iter().rev().find_map(|(n, a)| match a {
        Action::Resync { from_gseq, .. } if n == "b" => Some(*from_gseq),
        _ => None,
    });
    assert_eq!(resync, Some(13));
    // The primary goes silent: b never stands while unhealthy.
    c.down.push("a".into());
    let mut t = 63 * MS;
    while t < 5_000 * MS {
        t += 40 * MS;
        c.tick(t);
    }
    assert!(!c.actions_of("b").iter().any(|a| matches!(
        a,
        Action::Send {
            message: Message::VoteRequest { .. },
            ..
        }
    )));
    assert_eq!(c.status("b").role, Role::Backup);
}

#[test]
fn start_app_checks_its_arguments() {
    let mut a = Node::new(config("a"));
    let out = a.handle(
        0,
        Input::StartApp {
            app: APP.into(),
            mode: Mode::Sync,
            members: vec![Member::replica("b"), Member::witness("w")],
        },
    );
    assert!(matches!(
        out[..],
        [Action::CommandFailed {
            error: CommandError::BadMembers { .. },
            ..
        }]
    ));
    let out = a.handle(
        0,
        Input::StartApp {
            app: APP.into(),
            mode: Mode::Sync,
            members: vec![Member::replica("a"), Member::replica("zz")],
        },
    );
    assert!(matches!(
        out[..],
        [Action::CommandFailed {
            error: CommandError::BadMembers { .. },
            ..
        }]
    ));
    a.handle(
        0,
        Input::StartApp {
            app: APP.into(),
            mode: Mode::Sync,
            members: members(),
        },
    );
    let out = a.handle(
        0,
        Input::StartApp {
            app: APP.into(),
            mode: Mode::Sync,
            members: members(),
        },
    );
    assert!(matches!(
        out[..],
        [Action::CommandFailed {
            error: CommandError::AlreadyExists { .. },
            ..
        }]
    ));
}

#[test]
fn messages_from_strangers_are_refused() {
    let mut w = Node::new(config("w"));
    let out = w.handle(0, msg("mallory", heartbeat(1, 0, LogPosition::default())));
    assert_eq!(refusals(&out), vec![Refusal::UnknownPeer]);
    assert!(w.status(APP).is_none());
}

#[test]
fn two_primaries_in_one_epoch_are_refused() {
    let mut w = Node::new(config("w"));
    w.handle(0, msg("a", heartbeat(1, 0, LogPosition::default())));
    let out = w.handle(MS, msg("b", heartbeat(1, 0, LogPosition::default())));
    assert!(matches!(
        refusals(&out)[..],
        [Refusal::ConflictingPrimary { .. }]
    ));
    assert!(!sends(&out)
        .iter()
        .any(|(_, m)| matches!(m, Message::LeaseGrant { .. })));
}

#[test]
fn a_log_found_corrupt_mid_election_voids_the_candidacy() {
    let mut b = Node::restore(
        config("b"),
        vec![RestoredApp {
            app: APP.into(),
            state: PersistedApp {
                epoch: 1,
                voted_for: Some("a".into()),
                release_floor: LogPosition::default(),
                members: members(),
                mode: Mode::Sync,
                history: vec![EpochStart {
                    epoch: 1,
                    first_gseq: 1,
                }],
                migration: None,
            },
            durable: 100,
        }],
    );
    b.tick(0);
    let mut t = 0;
    let pre = loop {
        t += 10 * MS;
        assert!(t < 5_000 * MS, "b never stood");
        let out = b.tick(t);
        if let Some(epoch) = sends(&out).into_iter().find_map(|(_, m)| match m {
            Message::VoteRequest {
                epoch, pre: true, ..
            } => Some(epoch),
            _ => None,
        }) {
            break epoch;
        }
    };
    b.handle(
        t + MS,
        Input::CorruptLog {
            app: APP.into(),
            intact_up_to: 40,
        },
    );
    let out = b.handle(
        t + 2 * MS,
        msg(
            "w",
            Message::Vote {
                app: APP.into(),
                epoch: pre,
                pre: true,
                granted: true,
                current: 1,
            },
        ),
    );
    assert!(sends(&out).is_empty(), "{out:?}");
    for i in 0..100 {
        let out = b.tick(t + (3 + i * 40) * MS);
        assert!(!sends(&out)
            .iter()
            .any(|(_, m)| matches!(m, Message::VoteRequest { .. })));
    }
    assert_eq!(b.status(APP).expect("known").role, Role::Backup);
}
