//! Failpoints: named places where a test can make a branch die on purpose, as `kill -9` would,
//! at an instant it could never hit reliably from outside (between a commit and the send it
//! allows, in the middle of a commit...).
//!
//! `SNAPBANK_FAILPOINT=<name>` aborts the process the first time the code passes `<name>`;
//! `<name>:<n>` the n-th time. Unset (always, outside tests), a failpoint costs one load of a
//! cached value.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The failpoint armed for this process, and after how many passes it fires.
struct Armed {
    name: String,
    after: u64,
    passes: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("SNAPBANK_FAILPOINT").ok()?;
            let (name, after) = match spec.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                after: after.max(1),
                passes: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Passes failpoint `name`: aborts the process here if it is the armed one and its count is
/// reached.
pub fn hit(name: &str) {
    let Some(armed) = armed() else {
        return;
    };
    if armed.name == name && armed.passes.fetch_add(1, Ordering::Relaxed) + 1 == armed.after {
        log::error!("failpoint {name}: aborting the process, as a crash would");
        std::process::abort();
    }
}
