//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016): the lookup table of an external frontend, computed
//! here and written to the Maglev map; the TC program indexes it with a hash of the 5-tuple.
//!
//! Each backend has a permutation of the table's slots, derived from two hashes of its
//! address and port (`offset`, `skip`); backends take turns claiming their next free slot
//! until the table is full. So:
//!
//! - every backend owns `⌊M/n⌋` or `⌈M/n⌉` of the `M` slots (balance);
//! - the table depends only on the set of backends (not on their order or ids' history), so
//!   every node and every restart computes the same table;
//! - when a backend goes, its slots are shared among the others and only a small fraction of
//!   the other slots change owner, so few established flows would move (conntrack keeps the
//!   existing ones anyway).
//!
//! The size must be a prime ([`fairlead_abi::nodeport::MAGLEV_SIZES`]) so that every `skip`
//! walks every slot.

use std::net::IpAddr;

use fairlead_abi::BackendId;

/// A backend as Maglev sees it: what identifies it across nodes and restarts (address and
/// port), and the id the table stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevBackend {
    /// The endpoint address.
    pub address: IpAddr,
    /// The endpoint port.
    pub port: u16,
    /// The backend id written into the table.
    pub id: BackendId,
}

/// The Maglev table of `size` slots (a prime) over `backends`: one backend id per slot.
/// Empty when there is no backend (or `size` is 0).
#[must_use]
pub fn table(backends: &[MaglevBackend], size: u32) -> Vec<BackendId> {
    let m = size as usize;
    if backends.is_empty() || m == 0 {
        return Vec::new();
    }
    // The order of the turns must not depend on the order the caller lists backends in.
    let mut sorted: Vec<MaglevBackend> = backends.to_vec();
    sorted.sort_by_key(|b| (b.address, b.port));
    sorted.dedup_by_key(|b| (b.address, b.port));
    let m64 = u64::from(size);
    let permutations: Vec<(u64, u64)> = sorted
        .iter()
        .map(|b| {
            let name = identity(b);
            let offset = fnv1a(&name, 0xcbf2_9ce4_8422_2325) % m64;
            let skip = if m64 > 1 {
                fnv1a(&name, 0x8422_2325_cbf2_9ce4) % (m64 - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0_u64; sorted.len()];
    let mut slots: Vec<Option<BackendId>> = vec![None; m];
    let mut filled = 0;
    'fill: loop {
        for (i, backend) in sorted.iter().enumerate() {
            let (offset, skip) = permutations[i];
            loop {
                let candidate = (offset + next[i] * skip) % m64;
                next[i] += 1;
                let slot = usize::try_from(candidate).unwrap_or(0);
                if slots[slot].is_none() {
                    slots[slot] = Some(backend.id);
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break 'fill;
            }
        }
    }
    slots.into_iter().map(|s| s.unwrap_or(0)).collect()
}

/// The bytes that name a backend: address octets and port.
fn identity(b: &MaglevBackend) -> Vec<u8> {
    let mut out = match b.address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    out.extend_from_slice(&b.port.to_be_bytes());
    out
}

/// FNV-1a (64 bits) from `basis`: stable across builds and machines, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    let mut hash = basis;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final avalanche so that neighbouring addresses get unrelated offsets.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use proptest::prelude::*;

    use super::{MaglevBackend, table};

    fn backends(n: usize) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend {
                address: IpAddr::V4(Ipv4Addr::new(
                    10,
                    244,
                    u8::try_from(i / 250).unwrap(),
                    u8::try_from(i % 250).unwrap() + 1,
                )),
                port: 8080,
                id: u32::try_from(i).unwrap() + 1,
            })
            .collect()
    }

    fn shares(t: &[u32]) -> BTreeMap<u32, usize> {
        let mut out = BTreeMap::new();
        for id in t {
            *out.entry(*id).or_default() += 1;
        }
        out
    }

    #[test]
    fn empty_without_backends() {
        assert!(table(&[], 251).is_empty());
        assert!(table(&backends(3), 0).is_empty());
    }

    #[test]
    fn removing_one_of_ten_moves_little_else() {
        let all = backends(10);
        let before = table(&all, 16_381);
        let after = table(&all[..9], 16_381);
        let removed = all[9].id;
        let moved_others = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != removed && b != a)
            .count();
        // Each survivor owns ~1638 slots; the paper's disruption for one removal among ten
        // is a few per cent of the table.
        assert!(
            moved_others < 16_381 / 20,
            "{moved_others} other slots moved"
        );
        assert!(after.iter().all(|id| *id != removed));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every slot holds one of the backends, and each owns ⌊M/n⌋ or ⌈M/n⌉ slots.
        #[test]
        fn balanced(n in 1_usize..40, size_index in 0_usize..4) {
            let size = [251_u32, 509, 1_021, 2_039][size_index];
            let all = backends(n);
            let t = table(&all, size);
            prop_assert_eq!(t.len(), size as usize);
            let counts = shares(&t);
            prop_assert_eq!(counts.len(), n.min(size as usize));
            let low = size as usize / n;
            for count in counts.values() {
                prop_assert!(*count == low || *count == low + 1, "{} not in {}..={}", count, low, low + 1);
            }
        }

        /// The table depends on the set of backends, not on the order they are listed in.
        #[test]
        fn order_independent(n in 1_usize..20, seed in any::<u64>()) {
            let all = backends(n);
            let mut shuffled = all.clone();
            let mut state = seed;
            for i in (1..shuffled.len()).rev() {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let j = usize::try_from(state >> 33).unwrap() % (i + 1);
                shuffled.swap(i, j);
            }
            prop_assert_eq!(table(&all, 1_021), table(&shuffled, 1_021));
        }

        /// Removing one backend: its slots are taken over, and at most a small fraction of the
        /// others' slots change owner.
        #[test]
        fn minimal_disruption(n in 5_usize..30, gone in 0_usize..30) {
            let gone = gone % n;
            let all = backends(n);
            let rest: Vec<_> = all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, b)| *b).collect();
            let before = table(&all, 4_093);
            let after = table(&rest, 4_093);
            let removed = all[gone].id;
            let moved_others = before.iter().zip(&after).filter(|(b, a)| **b != removed && b != a).count();
            prop_assert!(after.iter().all(|id| *id != removed));
            // A naive `hash % n` would move ~(n-1)/n of everything.
            prop_assert!(moved_others * 5 < 4_093, "{} of 4093 moved", moved_others);
        }
    }
}
