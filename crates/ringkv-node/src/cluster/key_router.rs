//! Which group serves a key, by this node's partition view, and admitting
//! key requests under that view.
//!
//! The view follows the meta group's partition state (`partitioning`'s sync
//! worker installs each new one). Key requests hold the routing gate shared
//! while they are served; a view of a new generation is swapped in under it
//! exclusively, so no request admitted under the old view is still running
//! when the new one is in use. A move of a re-shard job is admitted only
//! while this node routes by that very job. Leader lookup and forwarding are
//! `routing`'s.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, RwLock, RwLockReadGuard};

use super::partitioning::{KeyRoute, PartitionView};
use super::NodeError;
use crate::storage::GroupId;

/// Held while a key request (or a key move) is served under the view it was
/// admitted by.
pub type Admission<'a> = RwLockReadGuard<'a, ()>;

/// This node's partition view and its routing gate.
pub struct KeyRouter {
    view: ArcSwap<PartitionView>,
    /// The generation of `view`, for waiting on it.
    generation: watch::Sender<u64>,
    gate: RwLock<()>,
}

impl KeyRouter {
    pub fn new(view: PartitionView) -> Self {
        let generation = watch::channel(view.generation()).0;
        KeyRouter { view: ArcSwap::from_pointee(view), generation, gate: RwLock::new(()) }
    }

    /// The view keys route by now.
    pub fn view(&self) -> Arc<PartitionView> {
        self.view.load_full()
    }

    /// Where `key` lives now.
    pub fn route(&self, key: &[u8]) -> Result<KeyRoute, NodeError> {
        self.view().route(key)
    }

    /// Replaces the view with one of the same generation (only a job's
    /// progress changed): routing is the same, so nothing waits.
    pub fn refresh(&self, view: PartitionView) {
        debug_assert_eq!(view.generation(), self.view().generation());
        self.view.store(Arc::new(view));
    }

    /// Routes by `view` from now on, once every request admitted under the
    /// current view is done.
    pub async fn switch(&self, view: PartitionView) {
        let _gate = self.gate.write().await;
        let generation = view.generation();
        self.view.store(Arc::new(view));
        self.generation.send_replace(generation);
    }

    /// Waits, at most `timeout`, until keys route by `generation` or later.
    pub async fn wait_generation(&self, generation: u64, timeout: Duration) -> bool {
        let mut rx = self.generation.subscribe();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|g| *g >= generation)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Waits, at most `timeout`, until keys route by re-shard job `epoch`
    /// or a later one.
    pub async fn wait_epoch(&self, epoch: u64, timeout: Duration) -> bool {
        let mut rx = self.generation.subscribe();
        let wait = async {
            while self.view().state.epoch < epoch {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Admits a key request for `group` routed by generation `routed` (by
    /// a router that knows one), holding the gate until the returned guard
    /// drops. Refuses a request routed by an older view than this node's,
    /// waits (briefly, without the gate) for a newer one, and refuses a key
    /// that does not live in `group`. `write`: a write goes to the key's
    /// shard only; a read may also go to its old shard while a job runs.
    pub async fn admit(
        &self,
        routed: Option<u64>,
        group: GroupId,
        key: &[u8],
        write: bool,
    ) -> Result<Admission<'_>, NodeError> {
        if let Some(routed) = routed.filter(|r| *r > self.view().generation()) {
            if !self.wait_generation(routed, Duration::from_millis(500)).await {
                // The router retries until this node catches up.
                return Err(NodeError::WrongShard { generation: self.view().generation() });
            }
        }
        let gate = self.gate.read().await;
        let view = self.view();
        if routed.is_some_and(|r| r != view.generation()) {
            return Err(NodeError::WrongShard { generation: view.generation() });
        }
        let route = if write { view.route(key)? } else { view.read_route(key)? };
        if route.group == group || (!write && route.old.contains(&group)) {
            Ok(gate)
        } else {
            Err(NodeError::WrongShard { generation: view.generation() })
        }
    }

    /// Admits a key move of re-shard job `epoch` on the leader of its target
    /// shard, holding the gate until the returned guard drops: only while
    /// this node routes by that very job. So once this node routes by a
    /// later job (which swapped its view under the gate), no move of the
    /// earlier one lands here any more; the later job's mover scans after
    /// that.
    pub async fn admit_move(&self, epoch: u64) -> Result<Admission<'_>, NodeError> {
        if self.view().state.epoch < epoch {
            self.wait_epoch(epoch, Duration::from_millis(500)).await;
        }
        let gate = self.gate.read().await;
        let view = self.view();
        if view.job_epoch() == Some(epoch) {
            Ok(gate)
        } else {
            // A router retries (after catching up if this node is newer);
            // a mover stops, and the current job's mover takes over.
            Err(NodeError::WrongShard { generation: view.generation() })
        }
    }

    /// Whether a leader may take a move-out of job `epoch`: only once it
    /// routes by that job (else it could still serve a read routed without
    /// it, which would miss the moved key).
    pub fn knows_job(&self, epoch: u64) -> bool {
        self.view().state.epoch >= epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::shard_group;

    #[tokio::test]
    async fn a_key_is_admitted_only_to_its_own_shard_and_by_the_current_generation() {
        let router = KeyRouter::new(PartitionView::initial(4));
        let route = router.route(b"k").expect("route");
        let other = (0..4).map(shard_group).find(|g| *g != route.group).expect("another shard");
        assert!(router.admit(None, route.group, b"k", true).await.is_ok());
        assert!(router.admit(Some(0), route.group, b"k", false).await.is_ok());
        let wrong = router.admit(None, other, b"k", true).await.err();
        assert!(matches!(wrong, Some(NodeError::WrongShard { generation: 0 })), "{wrong:?}");
        // Routed by a generation this node has not reached: refused after
        // a short wait, with the generation it has.
        let ahead = router.admit(Some(1), route.group, b"k", true).await.err();
        assert!(matches!(ahead, Some(NodeError::WrongShard { generation: 0 })), "{ahead:?}");
        // No job runs, so no move is admitted.
        assert!(router.admit_move(1).await.is_err());
        assert!(router.knows_job(0) && !router.knows_job(1));
    }

    #[tokio::test]
    async fn a_switch_waits_for_every_admitted_request() {
        let router = Arc::new(KeyRouter::new(PartitionView::initial(4)));
        let group = router.route(b"k").expect("route").group;
        let admitted = router.admit(None, group, b"k", true).await.expect("admitted");
        let switching = {
            let router = router.clone();
            tokio::spawn(async move { router.switch(PartitionView::initial(4)).await })
        };
        // The switch cannot finish while the request holds the gate...
        tokio::task::yield_now().await;
        assert!(!switching.is_finished());
        drop(admitted);
        // ...and finishes once it is done.
        switching.await.expect("switched");
    }
}
