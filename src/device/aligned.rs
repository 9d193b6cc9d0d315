//! A zeroed byte buffer whose address is aligned for O_DIRECT.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Memory alignment for O_DIRECT buffers. 4096 satisfies every device's
/// `dio_mem_align` seen in practice (usually 4 or 512).
pub const MEM_ALIGN: usize = 4096;

/// A heap buffer aligned to [`MEM_ALIGN`], reused across writes so that the
/// hook's hot path does not allocate once it has grown to the usual size.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn with_capacity(cap: usize) -> Self {
        let cap = cap.max(MEM_ALIGN).next_multiple_of(MEM_ALIGN);
        let layout = Layout::from_size_align(cap, MEM_ALIGN).expect("aligned layout");
        // SAFETY: layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len: 0 }
    }

    /// Sets the length to `len` bytes, all zero, growing the buffer if needed.
    pub fn reset_zeroed(&mut self, len: usize) {
        if len > self.cap {
            *self = AlignedBuf::with_capacity(len.next_power_of_two());
        } else {
            // Zero what the previous use may have left, up to the new length.
            let dirty = len.max(self.len);
            self.as_mut_slice_full()[..dirty].fill(0);
        }
        self.len = len;
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    fn as_mut_slice_full(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for cap bytes and initialised (zeroed at allocation).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.cap, MEM_ALIGN).expect("aligned layout");
        // SAFETY: allocated with this layout in with_capacity.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed_after_reuse() {
        let mut b = AlignedBuf::with_capacity(100);
        assert_eq!(b.as_ptr() as usize % MEM_ALIGN, 0);
        b.reset_zeroed(10);
        b[..10].fill(7);
        b.reset_zeroed(20);
        assert!(b.iter().all(|&x| x == 0));
        b.reset_zeroed(3 * MEM_ALIGN);
        assert_eq!(b.len(), 3 * MEM_ALIGN);
        assert_eq!(b.as_ptr() as usize % MEM_ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
    }
}
