//! Log lines that thousands of subscriptions may each give at once (10,000 tenants whose
//! credentials expired together, a sink that fails for all): of each kind, the first line in
//! a window is written, the others are counted, and the next line written says how many
//! were held back. A handful of lines, not 10,000 a second; `/subscriptions` still names
//! every subscription and its reason.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// One line of a kind per this long, at most.
const WINDOW: Duration = Duration::from_secs(10);

/// Per kind: when its last line was written, and how many were held back since.
fn kinds() -> &'static Mutex<HashMap<&'static str, (Instant, u64)>> {
    static KINDS: OnceLock<Mutex<HashMap<&'static str, (Instant, u64)>>> = OnceLock::new();
    KINDS.get_or_init(Mutex::default)
}

/// Whether a line of `kind` may be written now: `Some(held_back)`, the lines of this kind
/// held back since the last one written (to say with it), or `None` to hold this one back.
pub fn admit(kind: &'static str) -> Option<u64> {
    admit_at(kind, Instant::now())
}

fn admit_at(kind: &'static str, now: Instant) -> Option<u64> {
    let mut kinds = kinds().lock().unwrap_or_else(|e| e.into_inner());
    match kinds.get_mut(kind) {
        Some((last, held)) if now.duration_since(*last) < WINDOW => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            *last = now;
            Some(std::mem::take(held))
        }
        None => {
            kinds.insert(kind, (now, 0));
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_window_and_the_next_counts_what_was_held_back() {
        let start = Instant::now();
        assert_eq!(admit_at("test-kind", start), Some(0));
        for _ in 0..9_999 {
            assert_eq!(admit_at("test-kind", start + Duration::from_secs(1)), None);
        }
        assert_eq!(admit_at("other-kind", start), Some(0), "kinds apart");
        assert_eq!(admit_at("test-kind", start + WINDOW), Some(9_999));
        assert_eq!(admit_at("test-kind", start + WINDOW * 3), Some(0));
    }
}
