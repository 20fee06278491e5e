//! Readiness of the components that serve from the model. Each component
//! holds a [`Ready`] flag and sets it when it serves the current model; the
//! binary's `/ready` endpoint is ready when every enabled component is.
//!
//! The flag also carries the model generation the component serves
//! ([`Ready::serving`]), so that `fairlead status` can show, per component,
//! which version of the model is in force: in `fairlead node` every part
//! serves from one model, and equal generations mean equal views.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// No generation served yet.
const NONE: u64 = u64::MAX;

/// A cheap, cloneable readiness flag, false until set, with the model
/// generation served.
#[derive(Clone, Debug)]
pub struct Ready(Arc<State>);

#[derive(Debug)]
struct State {
    ready: AtomicBool,
    generation: AtomicU64,
}

impl Default for Ready {
    fn default() -> Self {
        Self(Arc::new(State {
            ready: AtomicBool::new(false),
            generation: AtomicU64::new(NONE),
        }))
    }
}

impl Ready {
    /// A flag that is not ready.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    /// Reads the flag.
    #[must_use]
    pub fn get(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// Records that the component now serves model `generation` (call it
    /// after every applied snapshot, synced or not).
    pub fn serving(&self, generation: u64) {
        self.0.generation.store(generation, Ordering::Release);
    }

    /// The model generation served, if any has been.
    #[must_use]
    pub fn generation(&self) -> Option<u64> {
        match self.0.generation.load(Ordering::Acquire) {
            NONE => None,
            generation => Some(generation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag_and_the_generation() {
        let ready = Ready::new();
        let seen = ready.clone();
        assert!(!seen.get());
        assert_eq!(seen.generation(), None);
        ready.serving(0);
        assert_eq!(seen.generation(), Some(0));
        ready.serving(7);
        ready.set(true);
        assert!(seen.get());
        assert_eq!(seen.generation(), Some(7));
    }
}
