//! Socket load balancing over the service, backend and counter maps: which service an
//! address is, which backend serves a new connection, and why not.
//!
//! Shared by every socket attach point of a family (`connect4` now; `sendmsg4` next).
//! Values are copied out of the maps as soon as they are found; the maps are
//! `BPF_F_NO_PREALLOC`, so an element found stays readable (RCU) while it is copied even if
//! user space replaces it at that moment.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use fairlead_abi::{Backend4, Reason, Scope, Service4Key, ServiceValue};

use crate::maps::{BACKENDS4, COUNTERS, SERVICES4};

/// What to do with a connection.
pub(crate) enum Verdict4 {
    /// Not a service: leave the destination alone.
    Pass,
    /// A service that cannot serve the connection: refuse it.
    Reject,
    /// Send the connection to this backend.
    Translate(Backend4),
}

/// Balances a new connection to `key` (slot 0, external scope) for traffic that originates
/// on this node. Bumps exactly one counter for the outcome.
#[inline(always)]
pub(crate) fn balance4(key: Service4Key) -> Verdict4 {
    let Some((key, service)) = lookup_service4(key) else {
        bump(Reason::NotService);
        return Verdict4::Pass;
    };
    match select_backend4(key, &service) {
        Ok(backend) => {
            bump(Reason::ServiceHit);
            Verdict4::Translate(backend)
        }
        Err(reason) => {
            bump(reason);
            Verdict4::Reject
        }
    }
}

/// Slot 0 of the service at `key`, following the service to its internal-scope entry when
/// it has two scopes (this node's traffic is internal). Returns the key of the entry used.
#[inline(always)]
fn lookup_service4(key: Service4Key) -> Option<(Service4Key, ServiceValue)> {
    let service = copy_of(SERVICES4.get_ptr(key))?;
    if !service.has_flag(ServiceValue::FLAG_TWO_SCOPES) {
        return Some((key, service));
    }
    let internal_key = key.with_scope(Scope::Internal);
    if let Some(internal) = copy_of(SERVICES4.get_ptr(internal_key)) {
        Some((internal_key, internal))
    } else {
        bump(Reason::InternalScopeMissing);
        Some((key, service))
    }
}

/// Picks one of the `count` backend slots of `service` (at random, uniform) and returns its
/// backend, or the reason the connection must be refused.
#[inline(always)]
fn select_backend4(key: Service4Key, service: &ServiceValue) -> Result<Backend4, Reason> {
    // SAFETY: bpf_get_prandom_u32 takes no arguments and only returns a number.
    let random = unsafe { bpf_get_prandom_u32() };
    // `checked_rem` is `None` exactly when the service has no backends.
    let Some(index) = random.checked_rem(u32::from(service.count)) else {
        return Err(Reason::NoBackendReject);
    };
    // index < count <= u16::MAX, so neither the conversion nor `+ 1` can fail.
    let Ok(index) = u16::try_from(index) else {
        return Err(Reason::BackendSlotMissing);
    };
    let Some(slot) = copy_of(SERVICES4.get_ptr(key.with_slot(index + 1))) else {
        return Err(Reason::BackendSlotMissing);
    };
    if slot.backend_id == 0 {
        return Err(Reason::BackendSlotMissing);
    }
    copy_of(BACKENDS4.get_ptr(slot.backend_id)).ok_or(Reason::BackendMissing)
}

/// Adds one to the per-CPU counter of `reason`.
#[inline(always)]
pub(crate) fn bump(reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason.index()) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it points
        // to this CPU's u64 for the index, valid for the whole program run. Another program
        // preempting this one on the same CPU could at worst lose one increment.
        unsafe { *counter += 1 };
    }
}

/// Copies a map value out of the map.
#[inline(always)]
fn copy_of<T: Copy>(value: Option<*const T>) -> Option<T> {
    // SAFETY: a pointer returned by a map lookup is non-null, aligned and points to a live
    // element of the map's value type; hash map elements are freed under RCU, so it stays
    // valid until the program returns.
    value.map(|ptr| unsafe { ptr.read() })
}
