//! One operation at a time on a captured build VM's disk: a managed image, a gallery image
//! version and a VHD export (which holds an access SAS on the OS disk) all read the same
//! source, and nothing published says Compute allows them at once. The distributors of one
//! run take this lock, keyed by the VM's id, around their use of the source, so they are
//! ordered whatever order the pipeline starts them in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::OwnedMutexGuard;

type Locks = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

fn locks() -> &'static Locks {
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    LOCKS.get_or_init(Locks::default)
}

/// Waits until no other distributor uses the source `id`; the source is this caller's until
/// the guard drops.
pub(crate) async fn lock(id: &str) -> OwnedMutexGuard<()> {
    let m = {
        let mut all = locks().lock().unwrap_or_else(|e| e.into_inner());
        // Sources nobody holds or waits for are forgotten.
        all.retain(|_, m| Arc::strong_count(m) > 1);
        all.entry(id.to_ascii_lowercase()).or_default().clone()
    };
    m.lock_owned().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn users_of_one_source_take_turns_others_do_not_wait() {
        let a = lock("/vm/A").await;
        let other = tokio::time::timeout(Duration::from_millis(100), lock("/vm/b")).await;
        assert!(other.is_ok(), "another source is not held up");
        let same = tokio::time::timeout(Duration::from_millis(100), lock("/VM/a")).await;
        assert!(same.is_err(), "the same source waits");
        drop(a);
        assert!(tokio::time::timeout(Duration::from_millis(100), lock("/vm/a")).await.is_ok());
    }
}
