//! Steady-state encoding and decoding allocate nothing per message.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use wire_codec::{Compression, Decoder, Encoder, SharedCompressor};

use super::{COMPRESSED, frames};

/// Counts the allocations of the threads that ask it to.
pub(crate) struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed to `System` unchanged; the thread-locals are
// const-initialised `Cell`s, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc_zeroed` is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

/// The allocations this thread makes while running `f`.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn steady_state_allocates_nothing_per_message() {
    let payloads = frames();
    for compression in COMPRESSED.into_iter().chain([Compression::None]) {
        let mut encoder = Encoder::new(compression).unwrap();
        let mut decoder = Decoder::new(compression, 1 << 20).unwrap();
        let (mut message, mut payload) = (Vec::new(), Vec::new());
        let mut round = |encoder: &mut Encoder, decoder: &mut Decoder| {
            for p in &payloads {
                message.clear();
                encoder.encode(p, &mut message).unwrap();
                payload.clear();
                decoder.decode(&message, &mut payload).unwrap();
                assert_eq!(&payload, p);
            }
        };
        // Warm up: buffers grow to the largest message once.
        round(&mut encoder, &mut decoder);
        round(&mut encoder, &mut decoder);
        let n = allocations(|| {
            for _ in 0..50 {
                round(&mut encoder, &mut decoder);
            }
        });
        assert_eq!(n, 0, "{compression:?}: {n} allocations in 50 rounds");
    }
}

#[test]
fn shared_bodies_allocate_once_per_event_and_never_per_client() {
    let payloads = frames();
    let mut compressor = SharedCompressor::new(6);
    let mut encoder = Encoder::new(Compression::ZlibStream).unwrap();
    encoder.set_independent();
    let mut message = Vec::new();
    let mut round = |compressor: &mut SharedCompressor, encoder: &mut Encoder| {
        for p in &payloads {
            let body = compressor.compress(b"{\"t\":\"X\",\"s\":", p).unwrap();
            for seq in [&b"1"[..], b"18446744073709551615"] {
                message.clear();
                body.write_stream(seq, &mut message);
                message.clear();
                body.write_payload(seq, &mut message);
            }
            message.clear();
            encoder.encode(p, &mut message).unwrap();
        }
    };
    round(&mut compressor, &mut encoder);
    round(&mut compressor, &mut encoder);
    let n = allocations(|| {
        for _ in 0..50 {
            round(&mut compressor, &mut encoder);
        }
    });
    assert_eq!(
        n,
        50 * payloads.len(),
        "one allocation per body (its bytes), none per client or own message"
    );
}

#[test]
fn the_counter_counts() {
    let n = allocations(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert_eq!(n, 1);
}
