//! The QUIC transport between `ferryd` nodes: one mutual-TLS connection per
//! peer, protocol messages on one ordered stream each way (heartbeats and
//! lease grants as datagrams), record batches on one stream per
//! application and backup.
//!
//! Every stream starts with a [`StreamHead`] frame that says what it
//! carries. A frame that does not decode, of an unknown kind, or of another
//! major version closes the connection, with one log line naming the peer;
//! the peer's dialer connects again later. `docs/WIRE.md` describes the
//! bytes.
//!
//! To keep one connection per pair, a node dials the peers whose names sort
//! after its own and waits for the others to dial it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::wire::{
    self, Frame, FrameReader, WireError, KIND_IMAGE_CHUNK, KIND_RECORD_BATCH, KIND_REPLICATION,
};
use ferry_replication::Message;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::Peer;

/// The cap on a frame from a peer (a record batch carries at most a few
/// MiB; one record at most 1 MiB).
pub const MAX_PEER_FRAME: usize = 8 << 20;
/// Error code when a peer broke the protocol.
const CLOSE_PROTOCOL: u32 = 2;
/// Error code when a newer connection to the same peer replaced this one.
const CLOSE_REPLACED: u32 = 3;
/// Error code when the peer is not in this node's peer list.
const CLOSE_UNKNOWN: u32 = 4;

/// The first frame of every stream (kind [`KIND_REPLICATION`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamHead {
    /// The sender's protocol messages follow, each a [`PeerMessage`].
    Messages {
        /// The sender's node name (also in its certificate).
        node: String,
        /// Whether the sender is a witness.
        witness: bool,
    },
    /// Record batches of `app` follow (kind [`KIND_RECORD_BATCH`]), starting
    /// at `from_gseq` (the first batch may be empty).
    Records {
        /// The application.
        app: String,
        /// The gseq of the first record sent.
        from_gseq: u64,
        /// The application's service address, `IP/PREFIX@IFACE`.
        vip: Option<String>,
        /// The log the records continue starts with a checkpoint image,
        /// sent first (kind [`KIND_IMAGE_CHUNK`]); `from_gseq` is then one
        /// after the image's position.
        image: Option<ImageHead>,
    },
    /// Only a checkpoint image of `app` follows (kind [`KIND_IMAGE_CHUNK`]):
    /// from a primary, for a backup that has the log but whose replica
    /// would have to replay far more of it than the image leaves (the
    /// backup keeps its log and starts its replica from the image); from a
    /// backup, for a primary that asked for it ([`PeerMessage::SendImage`]).
    Image {
        /// The application.
        app: String,
        /// The image.
        image: ImageHead,
    },
}

/// A checkpoint image of the replica sent ahead of the records that follow
/// it, to a backup whose log would start before the sender's does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHead {
    /// The image was taken right after record `at`.
    pub at: u64,
    /// The start record (header and payload), which the sender's log may
    /// no longer hold.
    pub start: Vec<u8>,
    /// The image's files: name and length, in the order their bytes follow.
    pub files: Vec<(String, u64)>,
    /// Images it is incremental to that are not sent, the receiver having
    /// them already: position and [`crate::images::identity`].
    pub kept: Vec<(u64, u32)>,
}

/// A frame on a messages stream or in a datagram (kind [`KIND_REPLICATION`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// A message of the replication protocol.
    Protocol(Message),
    /// Backup → primary: stream the records of `app` from `from_gseq` on
    /// (on a new [`StreamHead::Records`] stream), and keep streaming.
    Fetch {
        /// The application.
        app: String,
        /// The first gseq wanted.
        from_gseq: u64,
        /// Where the backup's replica stands or could start from (the
        /// newer of its position and its newest image): a primary with an
        /// image far beyond it sends that too, on its own stream
        /// ([`StreamHead::Image`]).
        replica_at: u64,
        /// The images the backup has (position, identity), which an
        /// image sent to it need not carry again.
        have: Vec<(u64, u32)>,
    },
    /// Backup → primary: this backup has a new image of its replica, after
    /// record `at`.
    Checkpointed {
        /// The application.
        app: String,
        /// The image's position.
        at: u64,
        /// The bytes of its own files.
        bytes: u64,
        /// The images it is incremental to: position, identity
        /// ([`crate::images::identity`]) and bytes. Those the primary has
        /// are not sent again.
        chain: Vec<(u64, u32, u64)>,
    },
    /// Primary → backup: send the image after record `at` (on a
    /// [`StreamHead::Image`] stream): the primary keeps it, trims its log
    /// to it and gives it to late backups.
    SendImage {
        /// The application.
        app: String,
        /// The image's position.
        at: u64,
        /// The images the primary has (position, identity), which the
        /// image need not carry again.
        have: Vec<(u64, u32)>,
    },
}

/// What the transport reports to the core.
#[derive(Debug)]
pub enum PeerEvent {
    /// A connection to `peer` is up (replacing any older one).
    Up {
        /// The peer.
        peer: String,
    },
    /// The peer said hello: whether it is a witness.
    Hello {
        /// The peer.
        peer: String,
        /// A witness.
        witness: bool,
    },
    /// The connection to `peer` is gone.
    Down {
        /// The peer.
        peer: String,
    },
    /// A message from `from`.
    Message {
        /// The sender.
        from: String,
        /// The message.
        message: PeerMessage,
    },
    /// A record stream from `from` begins.
    Records(RecordStream),
}

/// A record stream from a primary, with what was read of it so far.
#[derive(Debug)]
pub struct RecordStream {
    /// The primary that sent it.
    pub from: String,
    /// The application.
    pub app: String,
    /// The first gseq it carries.
    pub from_gseq: u64,
    /// The service address.
    pub vip: Option<String>,
    /// The image sent ahead of the records, if any: its bytes are read
    /// with [`RecordStream::next_image_chunk`] before any batch.
    pub image: Option<ImageHead>,
    /// The stream carries only the image, for a backup that keeps its log
    /// ([`StreamHead::Image`]); `from_gseq` is then 0.
    pub image_only: bool,
    /// The stream.
    pub recv: RecvStream,
    /// The frame reader holding bytes read after the head.
    pub reader: FrameReader,
    /// The connection (closed on a bad frame).
    pub connection: Connection,
}

impl RecordStream {
    /// The next record batch; `Ok(None)` at the end of the stream. A bad
    /// frame closes the connection (logged) and is returned.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        self.next_of(KIND_RECORD_BATCH, "not a record batch").await
    }

    /// The next piece of the image's files; `Ok(None)` at the end of the
    /// stream. A frame of another kind closes the connection.
    pub async fn next_image_chunk(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        self.next_of(KIND_IMAGE_CHUNK, "not a piece of the image announced")
            .await
    }

    async fn next_of(&mut self, kind: u16, not: &str) -> Result<Option<Vec<u8>>, WireError> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) if frame.kind == kind => return Ok(Some(frame.body)),
                Ok(Some(frame)) => {
                    let e = WireError::Decode {
                        offset: frame.offset,
                        kind: frame.kind,
                        why: not.into(),
                    };
                    protocol_error(&self.connection, &self.from, "record stream", &e);
                    return Err(e);
                }
                Ok(None) => {}
                Err(e) => {
                    protocol_error(&self.connection, &self.from, "record stream", &e);
                    return Err(e);
                }
            }
            match self.recv.read_chunk(64 << 10, true).await {
                Ok(Some(chunk)) => self.reader.push(&chunk.bytes),
                Ok(None) => return Ok(None),
                Err(e) => {
                    debug!(peer = %self.from, app = %self.app, error = %e, "record stream ended");
                    return Ok(None);
                }
            }
        }
    }
}

struct Link {
    id: u64,
    connection: Connection,
    messages: mpsc::UnboundedSender<Vec<u8>>,
}

/// The transport: connections to the configured peers.
pub struct Transport {
    me: String,
    witness: bool,
    endpoint: quinn::Endpoint,
    peers: Vec<Peer>,
    links: Mutex<HashMap<String, Link>>,
    next_id: std::sync::atomic::AtomicU64,
    events: mpsc::UnboundedSender<PeerEvent>,
}

fn protocol_error(connection: &Connection, peer: &str, what: &str, error: &dyn std::fmt::Display) {
    warn!(peer, addr = %connection.remote_address(), error = %error, "closing the connection: bad frame on a {what}");
    connection.close(VarInt::from_u32(CLOSE_PROTOCOL), b"bad frame");
}

impl Transport {
    /// A transport on `endpoint` (already listening) for `peers`.
    pub fn new(
        me: &str,
        witness: bool,
        endpoint: quinn::Endpoint,
        peers: Vec<Peer>,
        events: mpsc::UnboundedSender<PeerEvent>,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            me: me.to_owned(),
            witness,
            endpoint,
            peers,
            links: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            events,
        })
    }

    /// Start accepting and dialling.
    pub fn start(self: &Arc<Self>) {
        let t = self.clone();
        tokio::spawn(async move { t.accept_loop().await });
        for peer in self.peers.iter().filter(|p| p.name > self.me) {
            let t = self.clone();
            let peer = peer.clone();
            tokio::spawn(async move { t.dial_loop(peer).await });
        }
    }

    /// Peers with a live connection.
    pub fn connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self.links.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }

    /// The connection to `peer`, if there is one.
    pub fn connection(&self, peer: &str) -> Option<Connection> {
        self.links
            .lock()
            .unwrap()
            .get(peer)
            .map(|l| l.connection.clone())
    }

    /// Send `message` to `peer`: heartbeats and grants as datagrams, the
    /// rest on the messages stream. Without a connection it is dropped (the
    /// protocol does not depend on delivery).
    pub fn send(&self, peer: &str, message: PeerMessage) {
        let frame = match wire::encode(KIND_REPLICATION, 0, &message) {
            Ok(f) => f,
            Err(e) => {
                warn!(peer, error = %e, "cannot encode a message");
                return;
            }
        };
        let links = self.links.lock().unwrap();
        let Some(link) = links.get(peer) else {
            debug!(peer, "no connection; message dropped");
            return;
        };
        let datagram = matches!(
            message,
            PeerMessage::Protocol(Message::Heartbeat { .. } | Message::LeaseGrant { .. })
        );
        if datagram
            && link
                .connection
                .max_datagram_size()
                .is_some_and(|max| frame.len() <= max)
            && link.connection.send_datagram(frame.clone().into()).is_ok()
        {
            return;
        }
        let _ = link.messages.send(frame);
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let t = self.clone();
            tokio::spawn(async move {
                let Ok(pc) = ferry_tls::accept(incoming).await else {
                    return; // logged by ferry_tls
                };
                if !t.peers.iter().any(|p| p.name == pc.node) {
                    warn!(peer = %pc.node, addr = %pc.connection.remote_address(), "refused peer: not in this node's peer list");
                    pc.connection
                        .close(VarInt::from_u32(CLOSE_UNKNOWN), b"not a configured peer");
                    return;
                }
                t.run_connection(pc.node, pc.connection).await;
            });
        }
    }

    async fn dial_loop(self: Arc<Self>, peer: Peer) {
        let mut backoff = Duration::from_millis(100);
        // A peer that does not answer is said once per outage, not at
        // every attempt; a refusal (a certificate problem) every time.
        let mut said_unreachable = false;
        loop {
            match self.dial(&peer).await {
                Ok(connection) => {
                    backoff = Duration::from_millis(100);
                    said_unreachable = false;
                    self.clone()
                        .run_connection(peer.name.clone(), connection)
                        .await;
                }
                Err(quinn::ConnectionError::TimedOut) => {
                    if !said_unreachable {
                        info!(peer = %peer.name, addr = %peer.addr, "peer unreachable; trying again");
                        said_unreachable = true;
                    }
                }
                Err(quinn::ConnectionError::LocallyClosed) => {} // said by dial
                Err(e) => {
                    warn!(peer = %peer.name, addr = %peer.addr, error = %e, "cannot connect to peer");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Connect to `peer`: the server must present a cluster certificate
    /// that names it (checked by the TLS configuration).
    async fn dial(&self, peer: &Peer) -> Result<Connection, quinn::ConnectionError> {
        let connecting = match self.endpoint.connect(peer.addr, &peer.name) {
            Ok(c) => c,
            Err(e) => {
                warn!(peer = %peer.name, addr = %peer.addr, error = %e, "cannot connect to peer");
                return Err(quinn::ConnectionError::LocallyClosed);
            }
        };
        let connection = connecting.await?;
        match ferry_tls::peer_node_name(&connection) {
            Some(name) if name == peer.name => Ok(connection),
            other => {
                warn!(peer = %peer.name, addr = %peer.addr, presented = ?other, "refused peer: its certificate does not name it");
                connection.close(VarInt::from_u32(CLOSE_UNKNOWN), b"wrong node");
                Err(quinn::ConnectionError::LocallyClosed)
            }
        }
    }

    /// Serve one authenticated connection until it closes.
    async fn run_connection(self: Arc<Self>, peer: String, connection: Connection) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut links = self.links.lock().unwrap();
            if let Some(old) = links.insert(
                peer.clone(),
                Link {
                    id,
                    connection: connection.clone(),
                    messages: tx,
                },
            ) {
                old.connection
                    .close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
            }
        }
        info!(peer, addr = %connection.remote_address(), "peer connected");
        let _ = self.events.send(PeerEvent::Up { peer: peer.clone() });
        tokio::spawn(write_messages(
            connection.clone(),
            peer.clone(),
            StreamHead::Messages {
                node: self.me.clone(),
                witness: self.witness,
            },
            rx,
        ));
        tokio::spawn(read_datagrams(
            connection.clone(),
            peer.clone(),
            self.events.clone(),
        ));
        let streams = tokio::spawn(accept_streams(
            connection.clone(),
            peer.clone(),
            self.events.clone(),
        ));
        let why = connection.closed().await;
        streams.abort();
        let current = {
            let mut links = self.links.lock().unwrap();
            if links.get(&peer).is_some_and(|l| l.id == id) {
                links.remove(&peer);
                true
            } else {
                false
            }
        };
        if current {
            info!(peer, reason = %why, "peer disconnected");
            let _ = self.events.send(PeerEvent::Down { peer });
        }
    }
}

async fn write_messages(
    connection: Connection,
    peer: String,
    head: StreamHead,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let result = async {
        let mut send: SendStream = connection.open_uni().await?;
        let head = wire::encode(KIND_REPLICATION, 0, &head).map_err(std::io::Error::other)?;
        send.write_all(&head).await?;
        while let Some(frame) = rx.recv().await {
            send.write_all(&frame).await?;
        }
        Ok::<(), anyhow::Error>(())
    }
    .await;
    if let Err(e) = result {
        debug!(peer, error = %e, "messages stream ended");
    }
}

async fn read_datagrams(
    connection: Connection,
    peer: String,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    while let Ok(datagram) = connection.read_datagram().await {
        let message = wire::read_datagram(&datagram, MAX_PEER_FRAME).and_then(|f| match f {
            Some(f) => decode_message(&f).map(Some),
            None => Ok(None),
        });
        match message {
            Ok(Some(message)) => {
                let _ = events.send(PeerEvent::Message {
                    from: peer.clone(),
                    message,
                });
            }
            Ok(None) => {} // an optional frame of a newer kind
            Err(e) => {
                protocol_error(&connection, &peer, "datagram", &e);
                return;
            }
        }
    }
}

fn decode_message(frame: &Frame) -> Result<PeerMessage, WireError> {
    if frame.kind != KIND_REPLICATION {
        return Err(WireError::Decode {
            offset: frame.offset,
            kind: frame.kind,
            why: "not a replication message".into(),
        });
    }
    frame.decode()
}

async fn accept_streams(
    connection: Connection,
    peer: String,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    while let Ok(recv) = connection.accept_uni().await {
        tokio::spawn(read_stream(
            connection.clone(),
            peer.clone(),
            recv,
            events.clone(),
        ));
    }
}

/// Read a stream's head, then its messages (a messages stream) or hand it
/// over (a record stream).
async fn read_stream(
    connection: Connection,
    peer: String,
    mut recv: RecvStream,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    let mut reader = FrameReader::with_max_body(MAX_PEER_FRAME);
    let mut head: Option<StreamHead> = None;
    loop {
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return protocol_error(&connection, &peer, "stream", &e),
            };
            match &head {
                None => {
                    let h: StreamHead = match frame.kind {
                        KIND_REPLICATION => match frame.decode() {
                            Ok(h) => h,
                            Err(e) => return protocol_error(&connection, &peer, "stream", &e),
                        },
                        _ => {
                            let e = format!(
                                "offset 0: a stream cannot start with a frame of kind {}",
                                frame.kind
                            );
                            return protocol_error(&connection, &peer, "stream", &e);
                        }
                    };
                    match h {
                        StreamHead::Messages { node, witness } => {
                            if node != peer {
                                let e = format!("the stream says it is from {node}");
                                return protocol_error(&connection, &peer, "stream", &e);
                            }
                            let _ = events.send(PeerEvent::Hello {
                                peer: peer.clone(),
                                witness,
                            });
                            head = Some(StreamHead::Messages { node, witness });
                        }
                        StreamHead::Records {
                            app,
                            from_gseq,
                            vip,
                            image,
                        } => {
                            let _ = events.send(PeerEvent::Records(RecordStream {
                                from: peer,
                                app,
                                from_gseq,
                                vip,
                                image,
                                image_only: false,
                                recv,
                                reader,
                                connection,
                            }));
                            return;
                        }
                        StreamHead::Image { app, image } => {
                            let _ = events.send(PeerEvent::Records(RecordStream {
                                from: peer,
                                app,
                                from_gseq: 0,
                                vip: None,
                                image: Some(image),
                                image_only: true,
                                recv,
                                reader,
                                connection,
                            }));
                            return;
                        }
                    }
                }
                Some(_) => match decode_message(&frame) {
                    Ok(message) => {
                        let _ = events.send(PeerEvent::Message {
                            from: peer.clone(),
                            message,
                        });
                    }
                    Err(e) => return protocol_error(&connection, &peer, "stream", &e),
                },
            }
        }
        match recv.read_chunk(64 << 10, true).await {
            Ok(Some(chunk)) => reader.push(&chunk.bytes),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Write one record stream's head.
pub async fn open_record_stream(
    connection: &Connection,
    head: &StreamHead,
) -> anyhow::Result<SendStream> {
    let mut send = connection.open_uni().await?;
    send.write_all(&wire::encode(KIND_REPLICATION, 0, head)?)
        .await?;
    Ok(send)
}

/// Bind the QUIC endpoint.
pub fn endpoint(
    identity: &ferry_tls::NodeIdentity,
    listen: SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::server(identity.quinn_server_config()?, listen)?;
    endpoint.set_default_client_config(identity.quinn_client_config()?);
    Ok(endpoint)
}
