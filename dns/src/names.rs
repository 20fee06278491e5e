//! Small pure helpers on names: endpoint and pod labels, reverse names,
//! command-line values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use hickory_proto::rr::Name;

/// The label CoreDNS and the DNS specification give an endpoint without a
/// hostname, and pod records: the address with `.` or `:` replaced by `-`
/// (`10-244-1-7`, `fd00--7`).
#[must_use]
pub fn dashed_ip(ip: IpAddr) -> String {
    match ip {
        // One allocation, no formatting machinery: the index makes one of
        // these per endpoint.
        IpAddr::V4(v4) => {
            let mut out = String::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('-');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
            out
        }
        IpAddr::V6(v6) => v6
            .to_string()
            .chars()
            .map(|c| if c == ':' { '-' } else { c })
            .collect(),
    }
}

/// The longest label [`dashed_ip`] makes (a full IPv6 address).
pub const DASHED_IP_MAX: usize = 39;

/// The address a dashed label stands for (the inverse of [`dashed_ip`]).
#[must_use]
pub fn parse_dashed_ip(label: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(label).ok()?;
    if text.bytes().filter(|b| *b == b'-').count() == 3 && !text.contains("--") {
        return Ipv4Addr::from_str(&text.replace('-', "."))
            .ok()
            .map(IpAddr::V4);
    }
    Ipv6Addr::from_str(&text.replace('-', ":"))
        .ok()
        .map(IpAddr::V6)
}

/// The address of a complete reverse name (`4.3.2.1.in-addr.arpa.` or the
/// 32-nibble `ip6.arpa.` form); `None` for partial or other names.
#[must_use]
pub fn parse_reverse(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    let full = match net.addr() {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (net.prefix_len() == full).then(|| net.addr())
}

/// Whether any label of `name` holds an upper-case ASCII letter.
#[must_use]
pub fn has_upper(name: &Name) -> bool {
    name.iter()
        .any(|label| label.iter().any(u8::is_ascii_uppercase))
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, or `:PORT` (every IPv4
/// address).
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    if let Some(port) = value.strip_prefix(':') {
        let port = port
            .parse::<u16>()
            .map_err(|e| format!("invalid port {port:?}: {e}"))?;
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    value
        .parse()
        .map_err(|e| format!("expected IP:PORT or :PORT: {e}"))
}

/// Parses an upstream: `IP` (port 53) or `IP:PORT` / `[IPv6]:PORT`.
#[must_use]
pub fn parse_upstream(value: &str) -> Option<SocketAddr> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Some(addr);
    }
    // Zone ids (`fe80::1%eth0`) are not supported by std's parser; drop them.
    let ip = value.split('%').next().unwrap_or(value);
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
}

pub use fairlead_model::parse_duration;

/// The nameservers of a resolv.conf, port 53.
#[must_use]
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(parse_upstream)
        .collect()
}

/// The search domains of a resolv.conf (its last `search` or `domain`
/// line wins, as in glibc), fully qualified; unparsable ones left out.
#[must_use]
pub fn resolv_conf_search(text: &str) -> Vec<Name> {
    let mut search = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let Some("search" | "domain") = words.next() {
            search = words
                .filter_map(|w| Name::from_ascii(w).ok())
                .filter(|n| !n.is_root())
                .map(|mut n| {
                    n.set_fqdn(true);
                    n.to_lowercase()
                })
                .collect();
        }
    }
    search
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn search_domains_from_resolv_conf() {
        let conf = "domain old.example\nsearch Corp.Example. lab.example\noptions ndots:5\n";
        let names: Vec<String> = resolv_conf_search(conf)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["corp.example.", "lab.example."]);
        assert!(resolv_conf_search("nameserver 10.0.0.2\n").is_empty());
    }

    #[test]
    fn dashed_round_trip() {
        for ip in ["10.244.1.7", "fd00::7", "2001:db8:0:1::a", "::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let label = dashed_ip(ip);
            assert!(!label.contains('.') && !label.contains(':'), "{label}");
            assert_eq!(parse_dashed_ip(label.as_bytes()), Some(ip), "{label}");
        }
        assert_eq!(dashed_ip("10.244.1.7".parse().unwrap()), "10-244-1-7");
        assert_eq!(dashed_ip("fd00::7".parse().unwrap()), "fd00--7");
        for bad in ["10-244-1", "10-244-1-999", "web", "1-2-3-4-5", ""] {
            assert_eq!(parse_dashed_ip(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn reverse_names() {
        let v4: IpAddr = "10.96.0.10".parse().unwrap();
        let name = Name::from(v4);
        assert_eq!(name.to_string(), "10.0.96.10.in-addr.arpa.");
        assert_eq!(parse_reverse(&name), Some(v4));
        let v6: IpAddr = "fd00::a".parse().unwrap();
        let name = Name::from(v6);
        assert!(name.to_string().starts_with("a.0.0.0.0.0.0.0"), "{name}");
        assert_eq!(parse_reverse(&name), Some(v6));
        let partial = Name::from_ascii("96.10.in-addr.arpa.").unwrap();
        assert_eq!(parse_reverse(&partial), None);
        assert_eq!(
            parse_reverse(&Name::from_ascii("web.example.").unwrap()),
            None
        );
    }

    #[test]
    fn command_line_values() {
        assert_eq!(parse_listen(":53").unwrap(), "0.0.0.0:53".parse().unwrap());
        assert_eq!(
            parse_listen("[::1]:5353").unwrap(),
            "[::1]:5353".parse().unwrap()
        );
        assert!(parse_listen("localhost").is_err());
        assert_eq!(
            parse_upstream("10.0.0.2"),
            Some("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(
            parse_upstream("fe80::1%eth0"),
            Some("[fe80::1]:53".parse().unwrap())
        );
        assert_eq!(parse_upstream("nope"), None);
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        let conf = "# comment\nsearch example.\nnameserver 10.0.0.2\nnameserver ::1\noptions ndots:5\nnameserver junk\n";
        assert_eq!(
            resolv_conf_nameservers(conf),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
