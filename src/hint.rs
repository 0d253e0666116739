//! Cache hints for the simulator's event loop (see `sim::World::run_until`): it knows the
//! events it will hand out next, each to a random peer whose state is far out of the cache, and
//! asks the processor to start fetching that state a few events ahead. A hint changes no
//! behaviour: it reads nothing the program sees and cannot fault.

/// Asks the processor to bring the cache line holding `*p` into its caches. Does nothing on
/// other architectures than x86-64.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it does not access memory as far as the program is
    // concerned and never faults, whatever the address.
    #[allow(unsafe_code)]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`]es the `lines` cache lines starting at the one holding `*p`.
#[inline(always)]
pub fn prefetch_lines<T>(p: *const T, lines: usize) {
    let p = p as *const u8;
    for i in 0..lines {
        prefetch(p.wrapping_add(64 * i));
    }
}
