//! Fuzzes EDNS(0) handling (RFC 6891, RFC 3225) with well-formed questions:
//! the input chooses a question (cluster names of the fixtures in every
//! case, pod, reverse and outside names), header flags and an OPT record —
//! buffer size, extended rcode, version, flags with DO, options of any code
//! and length, sometimes broken or doubled. Besides what every answer must
//! be (well-formed, the id, within the size limit, fast path = general
//! path): an answer to a query with one version-0 OPT carries one OPT with
//! the query's DO bit and a buffer size between 512 and ours, UDP answers
//! fit the asker's buffer, a higher version gets BADVERS, and a query
//! without OPT gets an answer without one, within 512 bytes over UDP.

#![no_main]

mod common;

use hickory_proto::op::ResponseCode;
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "web.shop.svc.cluster.local",
    "dual.shop.svc.cluster.local",
    "nosuch.shop.svc.cluster.local",
    "_http._tcp.web.shop.svc.cluster.local",
    "db.data.svc.cluster.local",
    "db-0.db.data.svc.cluster.local",
    "shop.svc.cluster.local",
    "cluster.local",
    "dns-version.cluster.local",
    "1-2-3-4.shop.pod.cluster.local",
    "10.10.96.10.in-addr.arpa",
    "example.com",
];
const TYPES: &[u16] = &[1, 28, 33, 12, 5, 6, 2, 16, 255, 65, 64, 15];

/// Reads bytes off the front of the input, zeros when it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let name = NAMES[usize::from(input.byte()) % NAMES.len()];
    let case = input.u16();
    let qtype = match input.byte() {
        b if usize::from(b) < TYPES.len() * 16 => TYPES[usize::from(b) % TYPES.len()],
        _ => input.u16(),
    };
    // RD, AD, CD from the input; QR and opcode stay a query.
    let flags = input.byte();
    let mut query = vec![0x12, 0x34, flags & 0x01, flags & 0x30, 0, 1, 0, 0, 0, 0, 0, 0];
    for (i, label) in name.split('.').enumerate() {
        query.push(u8::try_from(label.len()).unwrap());
        query.extend(label.bytes().map(|b| {
            if case >> (i % 16) & 1 == 1 {
                b.to_ascii_uppercase()
            } else {
                b
            }
        }));
    }
    query.extend([0]);
    query.extend(qtype.to_be_bytes());
    query.extend([0, 1]);

    let shape = input.byte();
    let opts = match shape % 8 {
        0 => 0,
        6 => 2,
        _ => 1,
    };
    let payload = input.u16();
    let ext_rcode = if shape & 0x10 != 0 { input.byte() } else { 0 };
    let version = if shape & 0x20 != 0 { input.byte() } else { 0 };
    let opt_flags = input.u16();
    // The rest are options: code, length, data; lengths are kept honest
    // unless the shape says to break one.
    let mut options = Vec::new();
    // Options whose contents hickory reads (and may refuse: FORMERR).
    let mut read_options = false;
    while !input.0.is_empty() && options.len() < 600 {
        let code = input.u16();
        // NSID and client subnet are parsed; the rest are opaque.
        read_options |= matches!(code, 3 | 8);
        let len = usize::from(input.byte() % 48);
        options.extend(code.to_be_bytes());
        let data: Vec<u8> = (0..len).map(|_| input.byte()).collect();
        let claimed = if shape & 0x40 != 0 && input.0.is_empty() {
            len + 3
        } else {
            len
        };
        options.extend(u16::try_from(claimed).unwrap().to_be_bytes());
        options.extend(data);
    }
    for _ in 0..opts {
        query.push(if shape & 0x80 != 0 && opts == 1 { 1 } else { 0 });
        if shape & 0x80 != 0 && opts == 1 {
            query.extend([b'x', 0]);
        }
        query.extend(41u16.to_be_bytes());
        query.extend(payload.to_be_bytes());
        query.extend([ext_rcode, version]);
        query.extend(opt_flags.to_be_bytes());
        query.extend(u16::try_from(options.len()).unwrap().to_be_bytes());
        query.extend(&options);
    }
    query[11] = opts;

    let honest = shape & 0x40 == 0 && shape & 0x80 == 0;
    let asker_buffer = if opts == 1 && honest {
        usize::from(payload).clamp(512, common::MAX_UDP)
    } else {
        512
    };
    let (udp, tcp) = common::ask_both(&query, asker_buffer.max(512));
    for answer in [udp, tcp].into_iter().flatten() {
        let rcode = answer.metadata.response_code;
        match (opts, honest) {
            (0, _) => {
                assert!(answer.edns.is_none(), "no OPT asked, none given");
            }
            (1, true) if rcode == ResponseCode::FormErr => {
                assert!(read_options, "FORMERR for a well-formed OPT record");
            }
            (1, true) if version > 0 => {
                assert_eq!(u16::from(rcode), 16, "BADVERS for version {version}");
            }
            (1, true) => {
                let edns = answer.edns.as_ref().expect("an OPT record comes back");
                assert_eq!(edns.version(), 0);
                assert_eq!(edns.flags().dnssec_ok, opt_flags & 0x8000 != 0, "DO");
                let size = usize::from(edns.max_payload());
                assert!((512..=common::MAX_UDP).contains(&size), "buffer {size}");
            }
            (2, _) => assert_eq!(rcode, ResponseCode::FormErr, "two OPT records"),
            _ => {}
        }
    }
});
