//! The packet a per-packet program works on, at either hook: TC (`__sk_buff`, through the
//! kernel's helpers) or XDP (`xdp_md`, direct access to the driver's buffer). The load
//! balancer ([`crate::nodeport`], [`crate::nodeport6`]), the routing ([`crate::route`]) and
//! the rejects ([`crate::reject`]) are written once over [`Frame`].
//!
//! What differs at XDP: checksums are updated here (an XDP buffer has no checksum state to
//! keep in step), a packet is only sent out again on the interface it came in on
//! (`XDP_TX`): a redirect to another interface would need that driver's XDP transmit
//! support, which a veth to a pod or a bridge may lack, so such packets go to the stack,
//! translated, and the kernel forwards them.

use core::{
    mem::{MaybeUninit, size_of},
    ptr,
};

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, bpf_fib_lookup as FibParams},
    cty::c_void,
    helpers::generated::{
        bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
    },
    programs::{TcContext, XdpContext},
};

/// `sizeof(struct bpf_fib_lookup)`, as the helper wants it.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    reason = "the struct is 64 bytes"
)]
const FIB_PARAMS_LEN: i32 = size_of::<FibParams>() as i32;

/// A packet at a TC or XDP hook.
pub(crate) trait Frame {
    /// Not ours: the next program, or the stack, decides.
    const NEXT: i32;
    /// Deliver: to the stack (ingress), or out (egress).
    const PASS: i32;
    /// Drop the packet.
    const DROP: i32;
    /// Whether this hook handles the rare, heavier cases: IPv6 ICMP errors (rejects, too
    /// big, time exceeded) and ICMP errors about balanced flows. XDP leaves them to the TC
    /// program behind it (untouched): its call chains have no stack left for them.
    const SLOW_PATH: bool;

    /// Reads a `T` at `offset` from the start of the Ethernet header.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;

    /// Writes `value` at `offset`.
    fn store<T: Copy>(&self, offset: usize, value: &T) -> Option<()>;

    /// Updates the IPv4 header checksum at `csum` for a field of `size` (2 or 4) bytes that
    /// changes from `old` to `new` (raw values, as loaded).
    fn l3_csum_replace(&self, csum: usize, old: u32, new: u32, size: u64) -> Option<()>;

    /// Updates the L4 checksum at `csum`, as `bpf_l4_csum_replace`: the size (2 or 4) of a
    /// field changing from `old` to `new` in the low bits of `flags`, or 0 to add `new` as a
    /// `bpf_csum_diff` result; `BPF_F_PSEUDO_HDR` for pseudo-header fields;
    /// `BPF_F_MARK_MANGLED_0` for UDP (a computed 0 is written as `0xffff`).
    fn l4_csum_replace(&self, csum: usize, old: u32, new: u32, flags: u64) -> Option<()>;

    /// The index of the interface the packet arrived on.
    fn ingress_ifindex(&self) -> u32;

    /// The segment size of a GRO/GSO packet (which leaves as segments of that payload), or 0.
    fn gso_size(&self) -> u16;

    /// `bpf_fib_lookup` without flags; returns `BPF_FIB_LKUP_RET_*`.
    fn fib_lookup(&self, params: &mut FibParams) -> u32;

    /// Whether this hook sends a routed packet out of `ifindex` itself (else the stack
    /// forwards it): TC always; XDP only back out of the interface it came in on, to a known
    /// neighbour.
    fn sends_to(&self, ifindex: u32, neighbour_known: bool) -> bool;

    /// Sends the packet out of `ifindex` (see [`Frame::sends_to`]): its Ethernet header
    /// already set when `neighbour_known`, else the kernel resolves the next hop.
    fn send(&self, ifindex: u32, neighbour_known: bool) -> i32;

    /// Makes the packet `len` bytes long (cutting or extending its end).
    fn resize(&self, len: usize) -> Option<()>;

    /// Sends the packet back out of the interface it came in on.
    fn send_back(&self) -> i32;

    /// Marks the packet as translated by this node's ingress program, so that the egress
    /// program on its way out skips it (its conntrack lookups cannot hit: it is in the
    /// original direction, or a reply already translated). TC: a bit of the skb's
    /// `tc_index`, which a redirect keeps (as Cilium's `TC_INDEX_F_SKIP_NODEPORT`); XDP:
    /// nothing (the skb does not exist yet).
    fn mark_translated(&self);

    /// Whether the packet carries [`Frame::mark_translated`]'s mark; clears it.
    fn take_translated(&self) -> bool;
}

/// The `tc_index` bit of [`Frame::mark_translated`].
const TC_INDEX_TRANSLATED: u32 = 1 << 15;

#[expect(
    clippy::cast_possible_truncation,
    reason = "verdicts are small numbers"
)]
fn verdict(helper_result: i64) -> i32 {
    helper_result as i32
}

/// `TC_ACT_UNSPEC`, `TC_ACT_OK`, `TC_ACT_SHOT`.
const TC_VERDICTS: (i32, i32, i32) = (-1, 0, 2);
/// `XDP_DROP`, `XDP_PASS`, `XDP_TX`.
const XDP_VERDICTS: (i32, i32, i32) = (1, 2, 3);

/// A pointer to a `T` at `offset` in the linear part of a socket buffer (direct packet
/// access, as [`xdp_at`]), or `None` when the linear part does not hold it whole (then
/// `bpf_skb_load_bytes` reaches it in the paged data).
#[inline(always)]
fn tc_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    // SAFETY: the program's context pointer, valid for the whole run; the verifier turns
    // these field reads into the linear data's bounds.
    let (start, end) = unsafe {
        (
            ptr::read_volatile(&raw const (*ctx.skb.skb).data) as usize,
            ptr::read_volatile(&raw const (*ctx.skb.skb).data_end) as usize,
        )
    };
    if offset > XDP_MAX_OFFSET {
        return None;
    }
    // Through the stack, hidden from the optimiser, so that the verifier sees the pointer,
    // the pointer plus the size, and `past > end`: reassociated (the size added to the
    // offset first) or folded (`!(end > at)` for one byte), the check tells it nothing.
    let at = start + offset;
    // SAFETY: reads of initialised locals.
    let at = unsafe { ptr::read_volatile(&raw const at) };
    let past = at + size_of::<T>();
    // SAFETY: as above.
    let past = unsafe { ptr::read_volatile(&raw const past) };
    if past > end {
        return None;
    }
    Some(at as *const T)
}

impl Frame for TcContext {
    const NEXT: i32 = TC_VERDICTS.0;
    const PASS: i32 = TC_VERDICTS.1;
    const DROP: i32 = TC_VERDICTS.2;
    const SLOW_PATH: bool = true;

    /// Direct packet access when the linear data holds the value, else the helper.
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        // Zeroed, not uninitialised: the verifier refuses a program that spills a register
        // never written, which an undefined value merged from the two paths can become.
        let mut value = MaybeUninit::<T>::zeroed();
        if let Some(at) = tc_at::<T>(self, offset) {
            // SAFETY: `tc_at` checked that the linear data holds the whole `T`; the
            // loaded types are integers and byte arrays, for which any bytes are valid.
            return Some(unsafe { at.read_unaligned() });
        }
        let (Ok(at), Ok(len)) = (u32::try_from(offset), u32::try_from(size_of::<T>())) else {
            return None;
        };
        // SAFETY: the context pointer of this run and a buffer of `len` bytes.
        let rc = unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast::<c_void>(),
                at,
                value.as_mut_ptr().cast::<c_void>(),
                len,
            )
        };
        // SAFETY: zeroed, then written by the helper when it succeeded; the loaded types
        // are integers and byte arrays, valid for any bytes.
        (rc == 0).then(|| unsafe { value.assume_init() })
    }

    /// Direct packet access when the linear data holds the value (the verifier then makes
    /// the program unclone a cloned skb's head first: its prologue), else the helper.
    /// Neither updates the skb's checksum state: the checksum helpers below do.
    #[inline(always)]
    fn store<T: Copy>(&self, offset: usize, value: &T) -> Option<()> {
        if let Some(at) = tc_at::<T>(self, offset) {
            // SAFETY: `tc_at` checked that the linear data holds the whole `T`; byte-wise,
            // as at XDP, so no copy of `value` lands on the stack.
            unsafe {
                ptr::copy_nonoverlapping(
                    ptr::from_ref(value).cast::<u8>(),
                    at.cast_mut().cast::<u8>(),
                    size_of::<T>(),
                );
            }
            return Some(());
        }
        TcContext::store(self, offset, value, 0).ok()
    }

    /// The IPv4 header checksum is a field like any other (no checksum state of the skb
    /// covers it): updated here, as at XDP, when the linear data holds it.
    #[inline(always)]
    fn l3_csum_replace(&self, csum: usize, old: u32, new: u32, size: u64) -> Option<()> {
        if let Some(at) = tc_at::<u16>(self, csum) {
            // SAFETY: as in `store`.
            let current = unsafe { at.read_unaligned() };
            return Frame::store(self, csum, &csum_update(current, old, new, size));
        }
        TcContext::l3_csum_replace(self, csum, u64::from(old), u64::from(new), size).ok()
    }

    #[inline(always)]
    fn l4_csum_replace(&self, csum: usize, old: u32, new: u32, flags: u64) -> Option<()> {
        TcContext::l4_csum_replace(self, csum, u64::from(old), u64::from(new), flags).ok()
    }

    #[inline(always)]
    #[expect(
        clippy::misnamed_getters,
        reason = "at TC ingress the packet's device is the one it arrived on; the skb's \
                  ingress_ifindex is not set for BPF_PROG_TEST_RUN"
    )]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `skb` is the program's context pointer, valid for the whole run; reading
        // `ifindex` is a context access the verifier rewrites to the device's index.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn gso_size(&self) -> u16 {
        // SAFETY: the program's context pointer, valid for the whole run; a context read.
        let size = unsafe { (*self.skb.skb).gso_size };
        u16::try_from(size).unwrap_or(u16::MAX)
    }

    #[inline(always)]
    fn fib_lookup(&self, params: &mut FibParams) -> u32 {
        // SAFETY: the context pointer of this run and a stack struct of the size passed.
        let rc = unsafe {
            bpf_fib_lookup(
                self.skb.skb.cast::<c_void>(),
                ptr::from_mut(params),
                FIB_PARAMS_LEN,
                0,
            )
        };
        u32::try_from(rc).unwrap_or(u32::MAX)
    }

    #[inline(always)]
    fn sends_to(&self, _ifindex: u32, _neighbour_known: bool) -> bool {
        true
    }

    #[inline(always)]
    fn send(&self, ifindex: u32, neighbour_known: bool) -> i32 {
        if neighbour_known {
            // SAFETY: plain helper call with an interface index and no flags.
            verdict(unsafe { bpf_redirect(ifindex, 0) })
        } else {
            // SAFETY: a null parameter block (and its length 0) asks the kernel to find the
            // next hop itself, from the packet's destination.
            verdict(unsafe { bpf_redirect_neigh(ifindex, ptr::null_mut(), 0, 0) })
        }
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Option<()> {
        let len = u32::try_from(len).ok()?;
        // SAFETY: the context pointer of this run; the helper only resizes the packet (later
        // loads and stores are checked against its new length).
        (unsafe { bpf_skb_change_tail(self.skb.skb, len, 0) } == 0).then_some(())
    }

    #[inline(always)]
    fn send_back(&self) -> i32 {
        self.send(Frame::ingress_ifindex(self), true)
    }

    #[inline(always)]
    fn mark_translated(&self) {
        // SAFETY: the context pointer of this run; `tc_index` is writable at TC.
        unsafe { (*self.skb.skb).tc_index |= TC_INDEX_TRANSLATED };
    }

    #[inline(always)]
    fn take_translated(&self) -> bool {
        // SAFETY: as in `mark_translated`.
        unsafe {
            let index = (*self.skb.skb).tc_index;
            if index & TC_INDEX_TRANSLATED == 0 {
                return false;
            }
            (*self.skb.skb).tc_index = index & !TC_INDEX_TRANSLATED;
        }
        true
    }
}

/// The largest offset [`xdp_at`] reads at: the verifier accepts a bounds check only on a
/// packet pointer whose variable part is known to be small, and an offset read back from
/// memory (the L4 offset after IPv6 extension headers) is not, until compared.
const XDP_MAX_OFFSET: usize = 0x3fff;

/// A pointer to a `T` at `offset` in an XDP buffer, when the buffer holds it whole.
///
/// The buffer's bounds are read from the context right here, with volatile reads: were the
/// compiler to hoist them into a caller and pass them down as integers (it does, for
/// functions that are not inlined), the verifier would see arithmetic on `data_end` and
/// refuse the program.
#[inline(always)]
fn xdp_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    // SAFETY: `ctx` is the program's context pointer, valid for the whole run; the
    // verifier turns these two field reads into the buffer's bounds.
    let (start, end) = unsafe {
        (
            ptr::read_volatile(&raw const (*ctx.ctx).data) as usize,
            ptr::read_volatile(&raw const (*ctx.ctx).data_end) as usize,
        )
    };
    if offset > XDP_MAX_OFFSET || start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// One's-complement sum folded to 16 bits.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = sum as u16;
    folded
}

/// The checksum `csum` (raw, as stored) updated for a change of `size` (2 or 4) bytes from
/// `old` to `new`, or (`size` 0) for a `bpf_csum_diff` result `new` (RFC 1624).
#[inline(always)]
fn csum_update(csum: u16, old: u32, new: u32, size: u64) -> u16 {
    let mut sum = u64::from(!csum);
    match size {
        2 => {
            sum += u64::from(!(old & 0xffff) & 0xffff) + u64::from(new & 0xffff);
        }
        4 => {
            sum += u64::from(!old & 0xffff)
                + u64::from((!old >> 16) & 0xffff)
                + u64::from(new & 0xffff)
                + u64::from(new >> 16);
        }
        _ => sum += u64::from(new),
    }
    !fold(sum)
}

impl Frame for XdpContext {
    const NEXT: i32 = XDP_VERDICTS.1;
    const PASS: i32 = XDP_VERDICTS.1;
    const DROP: i32 = XDP_VERDICTS.0;
    const SLOW_PATH: bool = false;

    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = xdp_at::<T>(self, offset)?;
        // SAFETY: `xdp_at` checked that the buffer holds the whole `T`; unaligned read.
        Some(unsafe { at.read_unaligned() })
    }

    #[inline(always)]
    fn store<T: Copy>(&self, offset: usize, value: &T) -> Option<()> {
        let at = xdp_at::<T>(self, offset)?;
        // SAFETY: as in `load`; the program owns the buffer during the run. Byte-wise, so
        // no copy of `value` lands on the stack.
        unsafe {
            ptr::copy_nonoverlapping(
                ptr::from_ref(value).cast::<u8>(),
                at.cast::<u8>(),
                size_of::<T>(),
            );
        }
        Some(())
    }

    #[inline(always)]
    fn l3_csum_replace(&self, csum: usize, old: u32, new: u32, size: u64) -> Option<()> {
        let current: u16 = Frame::load(self, csum)?;
        Frame::store(self, csum, &csum_update(current, old, new, size))
    }

    #[inline(always)]
    fn l4_csum_replace(&self, csum: usize, old: u32, new: u32, flags: u64) -> Option<()> {
        let current: u16 = Frame::load(self, csum)?;
        let mut updated = csum_update(current, old, new, flags & 0xf);
        if flags & u64::from(BPF_F_MARK_MANGLED_0) != 0 && updated == 0 {
            updated = 0xffff;
        }
        Frame::store(self, csum, &updated)
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `ctx` is the program's context pointer, valid for the whole run.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn gso_size(&self) -> u16 {
        0
    }

    #[inline(always)]
    fn fib_lookup(&self, params: &mut FibParams) -> u32 {
        // SAFETY: the context pointer of this run and a stack struct of the size passed.
        let rc = unsafe {
            bpf_fib_lookup(
                self.ctx.cast::<c_void>(),
                ptr::from_mut(params),
                FIB_PARAMS_LEN,
                0,
            )
        };
        u32::try_from(rc).unwrap_or(u32::MAX)
    }

    #[inline(always)]
    fn sends_to(&self, ifindex: u32, neighbour_known: bool) -> bool {
        neighbour_known && ifindex == Frame::ingress_ifindex(self)
    }

    #[inline(always)]
    fn send(&self, _ifindex: u32, _neighbour_known: bool) -> i32 {
        XDP_VERDICTS.2
    }

    #[inline(always)]
    fn resize(&self, len: usize) -> Option<()> {
        // SAFETY: the context pointer of this run; the helper only reads the length.
        let current = i32::try_from(unsafe { bpf_xdp_get_buff_len(self.ctx) }).ok()?;
        let delta = i32::try_from(len).ok()? - current;
        // SAFETY: the context pointer of this run; the helper only moves the buffer's end
        // (every pointer is taken again from the context afterwards).
        (unsafe { bpf_xdp_adjust_tail(self.ctx, delta) } == 0).then_some(())
    }

    #[inline(always)]
    fn send_back(&self) -> i32 {
        XDP_VERDICTS.2
    }

    #[inline(always)]
    fn mark_translated(&self) {}

    #[inline(always)]
    fn take_translated(&self) -> bool {
        false
    }
}
