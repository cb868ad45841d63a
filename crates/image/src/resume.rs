//! What a restorer hands each thread it resumes inside the shim's
//! checkpoint handler: the handler's park call returns a pointer to a
//! [`Restored`] in the restorer's area (it returns 0 when the checkpoint
//! simply finished). The shim reads it to redo the process's kernel state
//! and unmaps the area once every thread is back in the program's memory.

/// [`Restored::magic`].
pub const RESTORED_MAGIC: u64 = u64::from_le_bytes(*b"FERRYRES");

/// The restorer's message to the threads it resumed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// [`RESTORED_MAGIC`].
    pub magic: u64,
    /// The restored checkpoint's sequence number.
    pub seq: u64,
    /// The restorer's area (its code, its stacks, this struct), to unmap.
    pub area_start: u64,
    /// Its length.
    pub area_len: u64,
    /// Threads resumed.
    pub threads: u64,
}
