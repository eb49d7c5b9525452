//! The batched peer stream: one `Raft/Batches` gRPC stream per peer carries
//! the AppendEntries and Vote messages of every group on this node, as
//! TiKV's `BatchRaftMessage` and Dragonboat's `MessageBatch` do.
//!
//! - **Sending.** A message is queued on its peer's stream; the stream's
//!   task writes everything queued since its last write as one `RaftBatch`.
//!   There is no timer: an idle node sends each message at once, a busy one
//!   sends bigger batches, because messages queue while hyper writes.
//! - **Replies** come back on the response stream, batched the same way,
//!   and each is matched to its caller by the envelope id. The receiver
//!   handles every message on its own task (`api::raft_service`), so a slow
//!   group delays only its own replies.
//! - **Failures.** A broken stream fails every call waiting on it as
//!   UNAVAILABLE, and the next message opens a new one. A call that waits
//!   past its deadline gives up alone. A peer that does not know the
//!   stream (a node of an older version, during a rolling upgrade) is sent
//!   unary calls for a while instead.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use ringkv_client::proto::raft_client::RaftClient;
use ringkv_client::proto::{RaftBatch, RaftEnvelope, RaftMessage};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

use super::types::NodeId;

/// Most messages in one batch.
const MAX_BATCH_MESSAGES: usize = 256;
/// A batch stops growing past this many payload bytes (a single larger
/// message still goes, alone).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How long a peer that refused the stream as unimplemented gets unary
/// calls before the stream is tried again.
const UNARY_FOR: Duration = Duration::from_secs(30);
/// Metadata of a refusal for a cluster ID mismatch: the refusing node's
/// cluster ID (the unary calls carry it the same way).
pub const CLUSTER_ID_HEADER: &str = "ringkv-cluster-id";

/// The open streams to peers, shared by every group on the node.
#[derive(Default)]
pub struct PeerStreams {
    /// Peer id → its stream.
    streams: Mutex<HashMap<NodeId, OpenStream>>,
    /// Peers that answered the stream with UNIMPLEMENTED, and when.
    unary_only: Mutex<HashMap<NodeId, Instant>>,
}

/// One peer's stream: a queue its task drains into batches, and the calls
/// waiting for replies.
struct PeerStream {
    queue: mpsc::UnboundedSender<RaftEnvelope>,
    waiting: Arc<Waiting>,
    next_id: AtomicU64,
}

/// A stream with the address and TLS generation it was opened for.
type OpenStream = (String, u64, Arc<PeerStream>);

/// Calls waiting for a reply, by envelope id.
type Waiting = Mutex<HashMap<u64, oneshot::Sender<Result<RaftMessage, Unsent>>>>;

/// How a batched call ended without a reply from the peer's Raft.
#[derive(Debug)]
pub enum Unsent {
    /// The peer does not know the stream: send this message unary.
    Unimplemented(RaftMessage),
    /// Never written to the peer (the stream could not be opened, or broke
    /// first): safe to send again, even a write.
    NotSent(Status),
    /// Refused by the peer, or lost after it was written (the stream broke,
    /// the deadline passed): the peer may have acted on it.
    Failed(Status),
}

/// Removes a call from the waiting map however it ends, a dropped (timed
/// out, cancelled) caller included.
struct WaitingCall<'a> {
    waiting: &'a Waiting,
    id: u64,
}

impl Drop for WaitingCall<'_> {
    fn drop(&mut self) {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl PeerStreams {
    /// Whether messages to `peer` go over the stream (false for a while after
    /// it refused the stream as unimplemented).
    pub fn use_stream(&self, peer: NodeId) -> bool {
        let mut unary = self.unary_only.lock().unwrap_or_else(|p| p.into_inner());
        match unary.get(&peer) {
            Some(since) if since.elapsed() < UNARY_FOR => false,
            Some(_) => {
                unary.remove(&peer);
                true
            }
            None => true,
        }
    }

    /// Sends `request` (its id is set here) to `peer` on its stream, opened
    /// with `client` when there is none for `addr` and `generation`, and
    /// waits up to `timeout` for the reply.
    pub async fn call(
        &self,
        peer: NodeId,
        (addr, generation): (&str, u64),
        client: impl FnOnce() -> Result<RaftClient<Channel>, Status>,
        mut request: RaftEnvelope,
        timeout: Duration,
    ) -> Result<RaftMessage, Unsent> {
        let stream = self.stream_to(peer, addr, generation, client).map_err(Unsent::NotSent)?;
        request.id = stream.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        stream.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(request.id, tx);
        let _waiting = WaitingCall { waiting: &stream.waiting, id: request.id };
        if stream.queue.send(request).is_err() {
            // The stream ended between the lookup and the send; the next
            // call finds its queue closed and opens another.
            return Err(Unsent::NotSent(Status::unavailable("the stream to the peer closed")));
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Unsent::Failed(Status::unavailable("the stream to the peer broke before its reply"))),
            Err(_) => Err(Unsent::Failed(Status::deadline_exceeded(format!("no reply within {timeout:?}")))),
        };
        if let Err(Unsent::Unimplemented(_)) = &reply {
            self.unary_only.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, Instant::now());
        }
        reply
    }

    /// The stream to `peer`, opened when there is none for this address and
    /// TLS generation or the last one ended.
    fn stream_to(
        &self,
        peer: NodeId,
        addr: &str,
        generation: u64,
        client: impl FnOnce() -> Result<RaftClient<Channel>, Status>,
    ) -> Result<Arc<PeerStream>, Status> {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, g, s)) = streams.get(&peer) {
            if a == addr && *g == generation && !s.queue.is_closed() {
                return Ok(s.clone());
            }
        }
        let (queue, rx) = mpsc::unbounded_channel();
        let stream = Arc::new(PeerStream { queue, waiting: Arc::default(), next_id: AtomicU64::new(1) });
        tokio::spawn(run(client()?, rx, stream.waiting.clone()));
        streams.insert(peer, (addr.to_string(), generation, stream.clone()));
        Ok(stream)
    }
}

/// A stream's task: opens it, writes batches of what is queued, and hands
/// each reply to its caller. On any failure it closes the queue and fails
/// every waiting call, so the next message opens a new stream.
async fn run(mut client: RaftClient<Channel>, mut queue: mpsc::UnboundedReceiver<RaftEnvelope>, waiting: Arc<Waiting>) {
    // Capacity 1: a batch waits here while hyper writes the previous one,
    // and new messages queue behind it, so batches grow with the load.
    let (batches, body) = mpsc::channel::<RaftBatch>(1);
    let mut unsent = Vec::new();
    let failure = match client.batches(tokio_stream::wrappers::ReceiverStream::new(body)).await {
        Err(status) => status,
        Ok(replies) => {
            let mut replies = replies.into_inner();
            loop {
                tokio::select! {
                    next = queue.recv() => {
                        let Some(first) = next else { return };
                        // One turn of the scheduler first: tasks already
                        // runnable (other groups' replication, forwards)
                        // queue their messages into this batch.
                        tokio::task::yield_now().await;
                        let batch = RaftBatch { envelopes: drain(first, &mut queue, payload_len) };
                        let messages = batch.envelopes.len() as u64;
                        if let Err(mpsc::error::SendError(batch)) = batches.send(batch).await {
                            unsent = batch.envelopes;
                            break Status::unavailable("the stream to the peer closed");
                        }
                        metrics::counter!(crate::telemetry::RAFT_BATCHES_SENT).increment(1);
                        metrics::counter!(crate::telemetry::RAFT_BATCHED_MESSAGES).increment(messages);
                    }
                    reply = replies.message() => match reply {
                        Ok(Some(batch)) => {
                            let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
                            for envelope in batch.envelopes {
                                if let Some(caller) = waiting.remove(&envelope.id) {
                                    let _ = caller.send(reply_of(envelope).map_err(Unsent::Failed));
                                }
                            }
                        }
                        Ok(None) => break Status::unavailable("the peer ended the stream"),
                        Err(status) => break status,
                    },
                }
            }
        }
    };
    queue.close();
    // Calls never written fail as not sent (or, when the peer does not know
    // the stream, are handed back for a unary call); calls already written
    // fail as lost when their reply sender is dropped.
    let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
    while let Ok(envelope) = queue.try_recv() {
        unsent.push(envelope);
    }
    for envelope in unsent {
        if let Some(caller) = waiting.remove(&envelope.id) {
            let _ = caller.send(Err(match envelope.message {
                Some(m) if failure.code() == tonic::Code::Unimplemented => Unsent::Unimplemented(m),
                _ => Unsent::NotSent(Status::new(failure.code(), failure.message().to_string())),
            }));
        }
    }
    waiting.clear();
}

fn payload_len(e: &RaftEnvelope) -> usize {
    e.message.as_ref().map_or(0, |m| m.payload.len())
}

/// `first` and whatever else is queued, up to [`MAX_BATCH_MESSAGES`] and
/// [`MAX_BATCH_BYTES`].
pub fn drain<T>(first: T, queue: &mut mpsc::UnboundedReceiver<T>, size: impl Fn(&T) -> usize) -> Vec<T> {
    let mut bytes = size(&first);
    let mut out = vec![first];
    while out.len() < MAX_BATCH_MESSAGES && bytes < MAX_BATCH_BYTES {
        let Ok(next) = queue.try_recv() else { break };
        bytes += size(&next);
        out.push(next);
    }
    out
}

/// The receiver's side: replies as they are ready, batched like requests.
pub fn batched_replies(
    replies: mpsc::UnboundedReceiver<RaftEnvelope>,
) -> Pin<Box<dyn Stream<Item = Result<RaftBatch, Status>> + Send>> {
    Box::pin(futures::stream::unfold(replies, |mut replies| async move {
        let first = replies.recv().await?;
        // As for requests: replies ready in this scheduler turn join the batch.
        tokio::task::yield_now().await;
        let envelopes = drain(first, &mut replies, payload_len);
        Some((Ok(RaftBatch { envelopes }), replies))
    }))
}

/// The reply envelope for request `id`: the message, or the refusal as the
/// unary call would have returned it.
pub fn envelope_of(id: u64, result: Result<RaftMessage, Status>) -> RaftEnvelope {
    match result {
        Ok(message) => RaftEnvelope { id, message: Some(message), ..Default::default() },
        Err(status) => RaftEnvelope {
            id,
            error_code: status.code() as i32,
            error_message: status.message().to_string(),
            error_cluster_id: status
                .metadata()
                .get(CLUSTER_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        },
    }
}

/// What a reply envelope carries, as a unary call would have returned it.
fn reply_of(envelope: RaftEnvelope) -> Result<RaftMessage, Status> {
    if envelope.error_code != 0 {
        let mut status = Status::new(tonic::Code::from_i32(envelope.error_code), envelope.error_message);
        if let Ok(v) = envelope.error_cluster_id.parse() {
            if !envelope.error_cluster_id.is_empty() {
                status.metadata_mut().insert(CLUSTER_ID_HEADER, v);
            }
        }
        return Err(status);
    }
    envelope.message.ok_or_else(|| Status::internal("a batched reply without a message"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_client::proto::raft_server::{Raft, RaftServer};
    use ringkv_client::proto::RaftKind;
    use tonic::{Request, Response, Streaming};

    /// A peer that never answers group 1, answers every other group with
    /// its own message, and refuses group 9 as another cluster would.
    /// With `batches: false` it is a node that predates the stream.
    #[derive(Clone)]
    struct StubPeer {
        batches: bool,
    }

    type Unary = Result<Response<RaftMessage>, Status>;

    #[tonic::async_trait]
    impl Raft for StubPeer {
        async fn append_entries(&self, r: Request<RaftMessage>) -> Unary {
            Ok(Response::new(r.into_inner()))
        }
        async fn vote(&self, r: Request<RaftMessage>) -> Unary {
            Ok(Response::new(r.into_inner()))
        }
        async fn install_snapshot(&self, _: Request<RaftMessage>) -> Unary {
            Err(Status::unimplemented("stub"))
        }
        async fn change_membership(&self, _: Request<RaftMessage>) -> Unary {
            Err(Status::unimplemented("stub"))
        }
        async fn forward(&self, _: Request<RaftMessage>) -> Unary {
            Err(Status::unimplemented("stub"))
        }
        async fn shard_loads(&self, _: Request<RaftMessage>) -> Unary {
            Err(Status::unimplemented("stub"))
        }

        type BatchesStream = Pin<Box<dyn Stream<Item = Result<RaftBatch, Status>> + Send>>;

        async fn batches(&self, r: Request<Streaming<RaftBatch>>) -> Result<Response<Self::BatchesStream>, Status> {
            if !self.batches {
                return Err(Status::unimplemented("unknown method Batches"));
            }
            let mut inbound = r.into_inner();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Ok(Some(batch)) = inbound.message().await {
                    for e in batch.envelopes {
                        let group = e.message.as_ref().map_or(0, |m| m.group_id);
                        let reply = match group {
                            1 => continue,
                            9 => {
                                let mut s = Status::failed_precondition("cluster ID mismatch");
                                s.metadata_mut().insert(CLUSTER_ID_HEADER, "feedface".parse().expect("ascii"));
                                Err(s)
                            }
                            _ => Ok(e.message.clone().expect("message")),
                        };
                        let _ = tx.send(envelope_of(e.id, reply));
                    }
                }
            });
            Ok(Response::new(batched_replies(rx)))
        }
    }

    async fn serve(peer: StubPeer) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn opener(addr: &str) -> impl FnOnce() -> Result<RaftClient<Channel>, Status> {
        let endpoint = format!("http://{addr}");
        move || {
            let channel = Channel::from_shared(endpoint).map_err(|e| Status::internal(e.to_string()))?.connect_lazy();
            Ok(RaftClient::new(channel))
        }
    }

    fn message(group: u64, payload: &'static [u8]) -> RaftMessage {
        RaftMessage { group_id: group, from: 1, payload: payload.into(), cluster_id: "c".into() }
    }

    fn request(kind: RaftKind, group: u64, payload: &'static [u8]) -> RaftEnvelope {
        RaftEnvelope { kind: kind as i32, message: Some(message(group, payload)), ..Default::default() }
    }

    /// No bound in the test is a timing assumption: a reply either comes
    /// (the call returns at once) or the assertion below fails.
    const PATIENT: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_group_that_never_answers_does_not_hold_up_the_others() {
        let addr = serve(StubPeer { batches: true }).await;
        let streams = Arc::new(PeerStreams::default());
        let stuck = {
            let (streams, addr) = (streams.clone(), addr.clone());
            tokio::spawn(async move {
                let r = request(RaftKind::AppendEntries, 1, b"held");
                streams.call(2, (&addr, 0), opener(&addr), r, PATIENT).await.is_ok()
            })
        };
        let mut calls = Vec::new();
        for g in (2..40u64).filter(|g| *g != 9) {
            let (streams, addr) = (streams.clone(), addr.clone());
            calls.push(tokio::spawn(async move {
                let kind = if g % 2 == 0 { RaftKind::AppendEntries } else { RaftKind::Vote };
                streams.call(2, (&addr, 0), opener(&addr), request(kind, g, b"beat"), PATIENT).await
            }));
        }
        for (g, call) in (2..40u64).filter(|g| *g != 9).zip(calls) {
            match call.await.expect("call") {
                Ok(reply) => assert_eq!((reply.group_id, &reply.payload[..]), (g, &b"beat"[..])),
                Err(_) => panic!("group {g} got no reply while group 1 waited"),
            }
        }
        assert!(!stuck.is_finished(), "group 1 is never answered");
        stuck.abort();
    }

    #[tokio::test]
    async fn a_refusal_comes_back_as_the_unary_call_would_return_it() {
        let addr = serve(StubPeer { batches: true }).await;
        let streams = PeerStreams::default();
        match streams.call(2, (&addr, 0), opener(&addr), request(RaftKind::Vote, 9, b"x"), PATIENT).await {
            Err(Unsent::Failed(s)) => {
                assert_eq!(s.code(), tonic::Code::FailedPrecondition);
                assert_eq!(s.message(), "cluster ID mismatch");
                let theirs = s.metadata().get(CLUSTER_ID_HEADER).and_then(|v| v.to_str().ok());
                assert_eq!(theirs, Some("feedface"));
            }
            _ => panic!("group 9 is refused"),
        }
    }

    #[tokio::test]
    async fn a_peer_without_the_stream_gets_unary_calls() {
        let addr = serve(StubPeer { batches: false }).await;
        let streams = PeerStreams::default();
        assert!(streams.use_stream(2));
        let r = request(RaftKind::AppendEntries, 3, b"old");
        match streams.call(2, (&addr, 0), opener(&addr), r, PATIENT).await {
            Err(Unsent::Unimplemented(m)) => assert_eq!(&m.payload[..], b"old", "handed back for a unary call"),
            _ => panic!("an old peer refuses the stream as unimplemented"),
        }
        assert!(!streams.use_stream(2), "the next messages go unary");
    }

    #[tokio::test]
    async fn a_stream_to_a_dead_peer_fails_its_calls_and_the_next_call_reopens() {
        let streams = PeerStreams::default();
        // Nothing listens here.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        match streams.call(2, (&dead, 0), opener(&dead), request(RaftKind::Vote, 3, b"x"), PATIENT).await {
            Err(Unsent::NotSent(s)) => assert_eq!(s.code(), tonic::Code::Unavailable, "{s}"),
            other => panic!("a dead peer fails the call as never sent: {other:?}"),
        }
        // The peer comes up at another address (as after a restart); the
        // closed stream is replaced.
        let addr = serve(StubPeer { batches: true }).await;
        let reply = streams.call(2, (&addr, 0), opener(&addr), request(RaftKind::Vote, 3, b"y"), PATIENT).await;
        assert!(matches!(reply, Ok(r) if &r.payload[..] == b"y"));
    }
}
