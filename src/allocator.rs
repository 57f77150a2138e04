//! The process's allocator and its one setting, shared by the `precis`
//! binary and the benches that time it (`benches/seq2seq.rs`).
//!
//! Why mimalloc: glibc's allocator returns every large block to the kernel
//! at once and faults it back in zeroed on the next allocation; the BART
//! encoder's activations (tens of MB per layer) spent a third of their time
//! in page faults (measured 7.0 s → 4.3 s for 8 inputs of 400 tokens on
//! distilbart-cnn-12-6's shape).
//!
//! Why a longer purge delay: mimalloc still hands freed pages back 10 ms
//! after they are freed, and an encoder-decoder frees and allocates its
//! largest buffers once per layer and per decoder step, further apart than
//! that. Kept for [`PURGE_DELAY_MS`] instead, they are reused without a
//! fault: distilbart-cnn-12-6-shaped int8 at beam 4 measured 81.5 → 88.1
//! tok/s (Intel Xeon, 2 cores), at the same peak memory; an idle server
//! still returns them after that delay.

/// Milliseconds mimalloc keeps freed pages before returning them.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, the
/// same in mimalloc 2 and 3: `libmimalloc-sys` names no constant for it).
const PURGE_DELAY_OPTION: libmimalloc_sys::mi_option_t = 15;

/// Sets the purge delay (see the module) unless `MIMALLOC_PURGE_DELAY`
/// sets it (mimalloc reads that itself); call once, early in `main`.
pub fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` stores an option's value and has no other
    // precondition; any value is valid for this option.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY_OPTION, PURGE_DELAY_MS as _);
    }
}

/// The purge delay mimalloc now uses, in milliseconds.
pub fn purge_delay_ms() -> i64 {
    // SAFETY: `mi_option_get` only reads an option's value.
    #[allow(unsafe_code)]
    let v = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY_OPTION) };
    v as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_is_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        super::keep_freed_pages();
        assert_eq!(super::purge_delay_ms(), super::PURGE_DELAY_MS);
    }
}
