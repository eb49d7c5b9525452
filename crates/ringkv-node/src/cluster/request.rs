//! The context a key request is served in, passed explicitly down the
//! routing path: the routing generation its key was routed by, and a note of
//! which node served it. (Both used to travel in task-locals, which any
//! spawned task or `select!` branch silently dropped.)

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::NodeId;

/// Which node served a request: this one, or the leader or replica it was
/// forwarded to. Written by the routing path, read by the API once the
/// request is done.
#[derive(Debug, Default)]
pub struct ServedBy(AtomicU64);

impl ServedBy {
    /// The node that served the request; `None` when none did.
    pub fn get(&self) -> Option<NodeId> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }
}

/// What a request carries while it is routed and served.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The routing generation the key was routed by. A replica refuses the
    /// request if it routes by another one. `None`: not routed by key
    /// (background work, or a sender that routed by no partition view).
    routed: Option<u64>,
    /// Where to note the serving node, if anyone asks.
    served_by: Option<&'a ServedBy>,
}

impl RequestContext<'static> {
    /// Background work of this node: routed by no generation, and nobody
    /// asks who served it.
    pub const INTERNAL: Self = RequestContext { routed: None, served_by: None };

    /// A request another node forwarded here, routed by the sender's
    /// generation (`None` when the sender routed it by none).
    pub fn forwarded(routed: Option<u64>) -> Self {
        RequestContext { routed, served_by: None }
    }
}

impl<'a> RequestContext<'a> {
    /// A client's request; `served_by` learns which node served it.
    pub fn client(served_by: &'a ServedBy) -> Self {
        RequestContext { routed: None, served_by: Some(served_by) }
    }

    /// The same request, routed by partition view `generation`.
    pub(super) fn routed_by(self, generation: u64) -> Self {
        RequestContext { routed: Some(generation), ..self }
    }

    /// The routing generation the request was routed by, if any.
    pub(super) fn routed(&self) -> Option<u64> {
        self.routed
    }

    /// Notes that node `id` served the request.
    pub(super) fn served_by(&self, id: NodeId) {
        if let Some(s) = self.served_by {
            s.0.store(id, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_client_request_learns_who_served_it() {
        let served = ServedBy::default();
        assert_eq!(served.get(), None, "nobody served it yet");
        let ctx = RequestContext::client(&served).routed_by(7);
        assert_eq!(ctx.routed(), Some(7));
        ctx.served_by(3);
        assert_eq!(served.get(), Some(3));
        // Background work and forwarded requests note nothing anywhere.
        RequestContext::INTERNAL.served_by(4);
        RequestContext::forwarded(Some(2)).served_by(5);
        assert_eq!(served.get(), Some(3));
        assert_eq!(RequestContext::forwarded(Some(2)).routed(), Some(2));
        assert_eq!(RequestContext::INTERNAL.routed(), None);
    }
}
