//! Socket load balancing over the service, backend, affinity, reverse-NAT and counter maps:
//! which service an address is, which backend serves a new connection (or datagram), and
//! why not. Written once for both families ([`Family`]).
//!
//! Values are copied out of the maps as soon as they are found; the hash maps are
//! `BPF_F_NO_PREALLOC`, so an element found stays readable (RCU) while it is copied even if
//! user space replaces it at that moment.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::SockAddrContext,
};
use fairlead_abi::{
    AffinityKey, AffinityValue, Be16, Be32, Reason, RevNatId, Scope, Service4Key, Service6Key,
    ServiceValue,
};

use crate::{
    family::Family,
    maps::{AFFINITY, COUNTERS, NODE_ADDR4, NODE_ADDR6, SERVICES4, SERVICES6},
};

/// The service key of a connection to `address:port`: the exact frontend, or the NodePort
/// (stored with the unspecified address) when `address` is one of the node's own (a node
/// address, loopback) and no frontend has that exact address.
#[inline(always)]
pub(crate) fn frontend_key4(address: Be32, port: Be16, protocol: u8) -> Service4Key {
    let exact = Service4Key::new(address, port, protocol, Scope::External, 0);
    if SERVICES4.get_ptr(exact).is_some() {
        return exact;
    }
    let loopback = address.raw().to_ne_bytes()[0] == 127;
    if loopback || NODE_ADDR4.get_ptr(address).is_some() {
        Service4Key::new(Be32::from_raw(0), port, protocol, Scope::External, 0)
    } else {
        exact
    }
}

/// What to do with a connection or datagram.
pub(crate) enum Verdict<B> {
    /// Not a service: leave the destination alone.
    Pass,
    /// A service that cannot serve it: refuse.
    Reject,
    /// Send it to this backend of the service frontend `rev_nat_id`.
    Translate {
        /// The backend.
        backend: B,
        /// The frontend's rev-NAT id.
        rev_nat_id: RevNatId,
    },
}

/// Who is asking, for affinity and for choosing a backend.
#[derive(Clone, Copy)]
pub(crate) struct Client {
    /// The client's network namespace cookie: the affinity identity.
    pub(crate) netns: u64,
    /// A number to choose a slot with: random for TCP (every connection on its own), a hash
    /// of the socket cookie for UDP, so that the datagrams of one socket keep going to one
    /// backend while the service does not change.
    pub(crate) selector: u32,
}

/// [`frontend_key4`] for IPv6: node addresses and `::1` reach the NodePort `[::]:port`.
#[inline(always)]
pub(crate) fn frontend_key6(address: [u8; 16], port: Be16, protocol: u8) -> Service6Key {
    let exact = Service6Key::new(address, port, protocol, Scope::External, 0);
    if SERVICES6.get_ptr(exact).is_some() {
        return exact;
    }
    let loopback = u128::from_be_bytes(address) == 1;
    if loopback || NODE_ADDR6.get_ptr(address).is_some() {
        Service6Key::new([0; 16], port, protocol, Scope::External, 0)
    } else {
        exact
    }
}

/// Balances a connection to `key` (slot 0, external scope) from this node. Bumps exactly
/// one outcome counter (and possibly fallback counters).
#[inline(always)]
pub(crate) fn balance<F: Family>(key: F::ServiceKey, client: Client) -> Verdict<F::Backend> {
    let Some((key, service)) = lookup_service::<F>(key) else {
        bump(Reason::NotService);
        return Verdict::Pass;
    };
    if service.count == 0 {
        bump(if service.has_flag(ServiceValue::FLAG_LOCAL_ONLY) {
            Reason::NoLocalBackendReject
        } else {
            Reason::NoBackendReject
        });
        return Verdict::Reject;
    }
    let affine = service.has_flag(ServiceValue::FLAG_SESSION_AFFINITY);
    let now = now_secs();
    let affinity_key = AffinityKey::new(client.netns, service.rev_nat_id, F::FAMILY);
    if affine && let Some(backend) = affinity_backend::<F>(&affinity_key, &service, now) {
        bump(Reason::AffinityHit);
        return Verdict::Translate {
            backend,
            rev_nat_id: service.rev_nat_id,
        };
    }
    let chosen = select_backend::<F>(key, &service, client.selector).or_else(|_| {
        // User space may be rewriting this service: read slot 0 again and choose once more
        // before refusing.
        bump(Reason::SelectionRetried);
        match copy_of(F::services().get_ptr(key)) {
            Some(fresh) if fresh.count > 0 => select_backend::<F>(key, &fresh, client.selector),
            Some(_) => Err(Reason::NoBackendReject),
            None => Err(Reason::BackendSlotMissing),
        }
    });
    match chosen {
        Ok((backend_id, backend)) => {
            if affine {
                let value = AffinityValue::new(backend_id, now);
                if AFFINITY.insert(affinity_key, value, 0).is_err() {
                    bump(Reason::AffinityUpdateFailed);
                }
            }
            bump(Reason::ServiceHit);
            Verdict::Translate {
                backend,
                rev_nat_id: service.rev_nat_id,
            }
        }
        Err(reason) => {
            bump(reason);
            Verdict::Reject
        }
    }
}

/// The client's affine backend, if its entry is fresh and the backend still serves the
/// service (a backend id belongs to one frontend, whose rev-NAT id it carries). Refreshes
/// the entry's time on a hit.
#[inline(always)]
fn affinity_backend<F: Family>(
    key: &AffinityKey,
    service: &ServiceValue,
    now: u32,
) -> Option<F::Backend> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: a pointer from a successful lookup points to a live element of the map's value
    // type, valid until the program returns.
    let value = unsafe { entry.read() };
    let backend = if value.is_fresh(now, service.affinity_timeout_secs) {
        copy_of(F::backends().get_ptr(value.backend_id))
            .filter(|b| F::backend_rev_nat(b) == service.rev_nat_id)
    } else {
        None
    };
    if let Some(backend) = backend {
        if value.last_used_secs != now {
            // SAFETY: as above; a racing writer can at worst store another time.
            unsafe { (*entry).last_used_secs = now };
        }
        Some(backend)
    } else {
        bump(Reason::AffinityStale);
        None
    }
}

/// Slot 0 of the service at `key`, following the service to its internal-scope entry when
/// it has two scopes (this node's traffic is internal). Returns the key of the entry used.
#[inline(always)]
fn lookup_service<F: Family>(key: F::ServiceKey) -> Option<(F::ServiceKey, ServiceValue)> {
    let service = copy_of(F::services().get_ptr(key))?;
    if !service.has_flag(ServiceValue::FLAG_TWO_SCOPES) {
        return Some((key, service));
    }
    let internal_key = F::with_scope(key, Scope::Internal);
    if let Some(internal) = copy_of(F::services().get_ptr(internal_key)) {
        Some((internal_key, internal))
    } else {
        bump(Reason::InternalScopeMissing);
        Some((key, service))
    }
}

/// Picks slot `selector % count + 1` of `service` and returns its backend, or the reason the
/// connection must be refused.
#[inline(always)]
fn select_backend<F: Family>(
    key: F::ServiceKey,
    service: &ServiceValue,
    selector: u32,
) -> Result<(u32, F::Backend), Reason> {
    // `checked_rem` is `None` exactly when the service has no backends.
    let Some(index) = selector.checked_rem(u32::from(service.count)) else {
        return Err(Reason::NoBackendReject);
    };
    // index < count <= u16::MAX, so neither the conversion nor `+ 1` can fail.
    let Ok(index) = u16::try_from(index) else {
        return Err(Reason::BackendSlotMissing);
    };
    let Some(slot) = copy_of(F::services().get_ptr(F::with_slot(key, index + 1))) else {
        return Err(Reason::BackendSlotMissing);
    };
    if slot.backend_id == 0 {
        return Err(Reason::BackendSlotMissing);
    }
    copy_of(F::backends().get_ptr(slot.backend_id))
        .map(|backend| (slot.backend_id, backend))
        .ok_or(Reason::BackendMissing)
}

/// Records that the socket of `ctx`, sent to `backend`, asked for the service at
/// `service_address:service_port`, in the socket's own reverse NAT table (created on first
/// use, freed by the kernel with the socket).
#[inline(always)]
pub(crate) fn record_rev_nat<F: Family>(
    ctx: &SockAddrContext,
    backend: &F::Backend,
    service: F::SockVal,
) -> Result<(), ()> {
    let (address, port) = F::backend_address(backend);
    // SAFETY: the context's socket is a full socket the kernel passed to this sock_addr
    // program; with the create flag the kernel allocates a zeroed table when there is none.
    let table = unsafe { F::sock_rev_nats().get_or_insert_ptr_mut(ctx, None) };
    if table.is_null() {
        return Err(());
    }
    // SAFETY: a non-null pointer from bpf_sk_storage_get points at the socket's table,
    // valid for the whole program run.
    unsafe { (*table).record(address, port, service) };
    Ok(())
}

/// The service address the socket of `ctx` asked for when it was sent to `address:port`,
/// if the service still exists with that address.
#[inline(always)]
pub(crate) fn reverse<F: Family>(
    ctx: &SockAddrContext,
    address: F::Addr,
    port: Be16,
) -> Option<(F::Addr, Be16)> {
    // SAFETY: as in `record_rev_nat`, without creating a table.
    let table = unsafe { F::sock_rev_nats().get_ptr_mut(ctx) };
    if table.is_null() {
        return None;
    }
    // SAFETY: a non-null pointer from bpf_sk_storage_get, valid for the program run.
    let entry = unsafe { (*table).lookup(address, port) }?;
    let (service_address, service_port, rev_nat_id) = F::sock_val_parts(&entry);
    let current = copy_of(F::rev_nats().get_ptr(rev_nat_id)).map(|r| F::rev_nat_address(&r));
    // A NodePort's rev-NAT entry holds the unspecified address: the socket asked for one
    // of the node's addresses, which is what it is shown.
    let matches = current.is_some_and(|(address, port)| {
        port == service_port && (address == service_address || F::is_unspecified(&address))
    });
    if matches {
        bump(Reason::RevNatHit);
        Some((service_address, service_port))
    } else {
        bump(Reason::RevNatStale);
        None
    }
}

/// A random selector (TCP).
#[inline(always)]
pub(crate) fn random() -> u32 {
    // SAFETY: bpf_get_prandom_u32 takes no arguments and only returns a number.
    unsafe { bpf_get_prandom_u32() }
}

/// A selector derived from a socket cookie (UDP): the same for every datagram of a socket,
/// spread over slots (cookies are consecutive numbers).
#[inline(always)]
pub(crate) fn hash_cookie(cookie: u64) -> u32 {
    let high = cookie.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    u32::try_from(high).unwrap_or(u32::MAX)
}

/// Seconds of `CLOCK_MONOTONIC`, the affinity clock.
#[inline(always)]
pub(crate) fn now_secs() -> u32 {
    // SAFETY: bpf_ktime_get_ns takes no arguments and only returns a number.
    let nanos = unsafe { bpf_ktime_get_ns() };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "seconds since boot fit u32 for 136 years; affinity compares with wrapping"
    )]
    let secs = (nanos / 1_000_000_000) as u32;
    secs
}

/// Adds one to the per-CPU counter of `reason`, atomically (another program may preempt
/// this one on the same CPU).
#[inline(always)]
pub(crate) fn bump(reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason.index()) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array: this CPU's
        // aligned u64 for the index, valid for the whole program run. `lock +=` is the BPF
        // atomic add (BPF_ATOMIC | BPF_ADD), which the verifier accepts on map values.
        #[cfg(target_arch = "bpf")]
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({0} + 0) += {1}",
                in(reg) counter,
                in(reg) 1_u64,
                options(nostack),
            );
        }
        #[cfg(not(target_arch = "bpf"))]
        // SAFETY: as above (host builds only lint this code).
        unsafe {
            *counter += 1;
        }
    }
}

/// Copies a map value out of the map.
#[inline(always)]
pub(crate) fn copy_of<T: Copy>(value: Option<*const T>) -> Option<T> {
    // SAFETY: a pointer returned by a map lookup is non-null, aligned and points to a live
    // element of the map's value type; hash map elements are freed under RCU, so it stays
    // valid until the program returns.
    value.map(|ptr| unsafe { ptr.read() })
}
