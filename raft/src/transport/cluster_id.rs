//! [`ClusterIdCell`]: the cluster UUID shared by the transport and the node that owns it.

use tokio::sync::watch;
use uuid::Uuid;

/// Result of [`ClusterIdCell::adopt`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adoption {
    /// The cell was unknown and now holds the id.
    Adopted,
    /// The cell already held this id.
    Same,
    /// The cell holds another id (returned).
    Conflict(Uuid),
}

/// The cluster UUID of this node: unknown (`None`) on a brand-new node until bootstrap creates it or
/// it is learned from an authenticated peer's frame.
///
/// The owner persists a learned id by watching [`ClusterIdCell::subscribe`]. The nil UUID is the
/// wire encoding of "unknown", so it is never stored.
#[derive(Debug)]
pub struct ClusterIdCell {
    tx: watch::Sender<Option<Uuid>>,
}

impl ClusterIdCell {
    /// A cell holding `initial` (a nil UUID counts as unknown).
    pub fn new(initial: Option<Uuid>) -> Self {
        let (tx, _rx) = watch::channel(initial.filter(|u| !u.is_nil()));
        Self { tx }
    }

    /// The current id, if known.
    pub fn get(&self) -> Option<Uuid> {
        *self.tx.borrow()
    }

    /// Sets (or replaces) the id and notifies watchers if it changed. A nil UUID is ignored.
    pub fn set(&self, id: Uuid) {
        if id.is_nil() {
            return;
        }
        self.tx.send_if_modified(|cur| {
            let changed = *cur != Some(id);
            *cur = Some(id);
            changed
        });
    }

    /// Sets the id only if none is known yet (what the transport does with a peer's id).
    pub fn adopt(&self, id: Uuid) -> Adoption {
        if id.is_nil() {
            return Adoption::Same;
        }
        let mut outcome = Adoption::Same;
        self.tx.send_if_modified(|cur| match *cur {
            None => {
                *cur = Some(id);
                outcome = Adoption::Adopted;
                true
            }
            Some(c) if c == id => false,
            Some(c) => {
                outcome = Adoption::Conflict(c);
                false
            }
        });
        outcome
    }

    /// A receiver that sees every change (for persisting a learned id).
    pub fn subscribe(&self) -> watch::Receiver<Option<Uuid>> {
        self.tx.subscribe()
    }

    /// Waits until an id is known and returns it.
    pub async fn wait_known(&self) -> Uuid {
        let mut rx = self.tx.subscribe();
        loop {
            if let Some(id) = *rx.borrow_and_update() {
                return id;
            }
            // The sender lives in `self`, so `changed` cannot fail while we borrow it.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Default for ClusterIdCell {
    fn default() -> Self {
        Self::new(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopt_sets_only_when_unknown() {
        let cell = ClusterIdCell::new(None);
        let rx = cell.subscribe();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(cell.adopt(a), Adoption::Adopted);
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(cell.adopt(a), Adoption::Same);
        assert_eq!(cell.adopt(b), Adoption::Conflict(a));
        assert_eq!(cell.get(), Some(a));
        cell.set(b);
        assert_eq!(cell.get(), Some(b));
    }

    #[test]
    fn nil_is_unknown() {
        let cell = ClusterIdCell::new(Some(Uuid::nil()));
        assert_eq!(cell.get(), None);
        cell.set(Uuid::nil());
        assert_eq!(cell.get(), None);
    }
}
