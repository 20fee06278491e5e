//! The programs of the eBPF object: their names (the function symbols, and the names the
//! kernel reports) and where they attach.

/// `cgroup/connect4`: balances `connect()` of IPv4 sockets to service addresses.
///
/// When the program refuses a connection, `connect()` fails with `ECONNREFUSED`, as if a
/// kube-proxy REJECT rule had answered.
pub const CONNECT4: &str = "fl_connect4";

/// Every program of the object, sorted by name.
pub const ALL: [&str; 1] = [CONNECT4];

#[cfg(test)]
mod tests {
    use super::ALL;
    use crate::maps::NAME_MAX_LEN;

    #[test]
    fn names_fit_the_kernel_and_are_sorted() {
        for name in ALL {
            assert!(name.len() <= NAME_MAX_LEN, "{name} is too long");
        }
        assert!(ALL.is_sorted());
    }
}
