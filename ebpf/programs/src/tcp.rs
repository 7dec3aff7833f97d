//! Two sequence numbers of a TCP socket, from the kernel's `struct tcp_sock`.
//!
//! No helper or context field carries them, so the programs read them through
//! `bpf_skc_to_tcp_sock`. Rust has no CO-RE field relocations and the layout
//! of `tcp_sock` differs between kernels, so the byte offsets are read-only
//! globals the agent sets at load time from the running kernel's BTF, by
//! field name (zerohop_abi::global). The verifier sees them as constants and
//! checks each read against the same BTF.

use aya_ebpf::{bindings::bpf_sock, helpers::generated::bpf_skc_to_tcp_sock};

/// Offset of `tcp_sock.copied_seq`; 0 until the agent sets it.
#[unsafe(no_mangle)]
static ZH_TCP_COPIED_SEQ: u32 = 0;

/// Offset of `tcp_sock.write_seq`; 0 until the agent sets it.
#[unsafe(no_mangle)]
static ZH_TCP_WRITE_SEQ: u32 = 0;

/// Where a socket's two byte streams stand. Sequence numbers wrap; compare
/// them for equality only.
pub struct Seqs {
    /// The next byte the application reads from the stack (`copied_seq`).
    /// Redirected bytes bypass TCP and do not count.
    pub copied: u32,
    /// One past the last byte the application handed to the stack
    /// (`write_seq`), sent or not yet. Redirected bytes do not count.
    pub write: u32,
}

/// The sequence numbers of `sk`, or `None` when it is no TCP socket or the
/// offsets were not set (the agent always sets them).
#[inline(always)]
pub fn seqs(sk: *mut bpf_sock) -> Option<Seqs> {
    if sk.is_null() {
        return None;
    }
    // Volatile: the values are patched into the object after compilation.
    let copied_at = unsafe { core::ptr::read_volatile(&ZH_TCP_COPIED_SEQ) } as usize;
    let write_at = unsafe { core::ptr::read_volatile(&ZH_TCP_WRITE_SEQ) } as usize;
    if copied_at == 0 || write_at == 0 {
        return None;
    }
    // SAFETY: the helper accepts any socket pointer of the context and
    // returns null unless it is a full TCP socket.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) } as *const u8;
    if tp.is_null() {
        return None;
    }
    // SAFETY: both offsets are those of u32 fields of tcp_sock in this
    // kernel's BTF; the verifier rejects the program otherwise.
    unsafe {
        Some(Seqs {
            copied: core::ptr::read_volatile(tp.add(copied_at).cast::<u32>()),
            write: core::ptr::read_volatile(tp.add(write_at).cast::<u32>()),
        })
    }
}
