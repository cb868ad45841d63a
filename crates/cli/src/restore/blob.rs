//! The last stage of a restore: a few hundred bytes of position-independent
//! code, copied into the restorer's area, that run a plan of raw system
//! calls once nothing of `ferry` itself may stay mapped.
//!
//! The plan is an array of [`Op`]. Each op is a system call; what the
//! interpreter does with its result depends on the op's kind:
//!
//! - [`FATAL`]: a result in `-4095..=-1` writes the op's message to
//!   descriptor 2 and ends the process with exit code 1;
//! - [`IGNORE`]: the result is not looked at;
//! - [`THREAD`]: a `clone` of a thread; in the new thread the interpreter
//!   loads `extra[0]` into rax and jumps to `extra[1]` (the thread's resume
//!   address in the shim's handler; its stack pointer is the clone's);
//!   an error is fatal;
//! - [`JUMP`]: the last op: rsp = `args[0]`, rax = `extra[0]`, jump to
//!   `args[1]`.

/// A system call whose failure ends the restore.
pub const FATAL: u64 = 1;
/// A system call whose result does not matter.
pub const IGNORE: u64 = 2;
/// The `clone` of a thread.
pub const THREAD: u64 = 3;
/// The jump into the program.
pub const JUMP: u64 = 4;

/// One step of the plan. The layout is the interpreter's: keep the two in
/// step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Op {
    /// FATAL, IGNORE, THREAD or JUMP.
    pub kind: u64,
    /// The system call's number.
    pub nr: u64,
    /// Its arguments (for JUMP: the stack pointer and the address).
    pub args: [u64; 6],
    /// For THREAD and JUMP: rax, and (THREAD) where the new thread goes.
    pub extra: [u64; 2],
    /// The message written on failure: address and length.
    pub msg: [u64; 2],
}

/// Bytes of one op.
pub const OP_LEN: usize = core::mem::size_of::<Op>();
const _: () = assert!(OP_LEN == 96);

core::arch::global_asm!(
    ".text",
    ".balign 16",
    ".globl ferry_restorer_code",
    ".hidden ferry_restorer_code",
    // Entered with rdi = the plan and rsp = a stack inside the area.
    "ferry_restorer_code:",
    "    mov rbx, rdi",
    "2:",
    "    mov rax, [rbx]",
    "    cmp rax, 4",
    "    je 6f",
    "    mov rax, [rbx + 8]",
    "    mov rdi, [rbx + 16]",
    "    mov rsi, [rbx + 24]",
    "    mov rdx, [rbx + 32]",
    "    mov r10, [rbx + 40]",
    "    mov r8, [rbx + 48]",
    "    mov r9, [rbx + 56]",
    "    mov r13, [rbx + 64]",
    "    mov r12, [rbx + 72]",
    "    syscall",
    "    cmp qword ptr [rbx], 3",
    "    jne 3f",
    "    test rax, rax",
    "    jnz 3f",
    // The new thread: its stack is the clone's, its registers the plan's.
    "    mov rax, r13",
    "    jmp r12",
    "3:",
    "    cmp qword ptr [rbx], 2",
    "    je 4f",
    "    cmp rax, -4095",
    "    jae 5f",
    "4:",
    "    add rbx, 96",
    "    jmp 2b",
    "5:",
    "    mov eax, 1",
    "    mov edi, 2",
    "    mov rsi, [rbx + 80]",
    "    mov rdx, [rbx + 88]",
    "    syscall",
    "    mov eax, 231",
    "    mov edi, 1",
    "    syscall",
    "    ud2",
    "6:",
    "    mov rsp, [rbx + 16]",
    "    mov rcx, [rbx + 24]",
    "    mov rax, [rbx + 64]",
    "    jmp rcx",
    ".globl ferry_restorer_code_end",
    ".hidden ferry_restorer_code_end",
    "ferry_restorer_code_end:",
);

extern "C" {
    fn ferry_restorer_code();
    fn ferry_restorer_code_end();
}

/// The interpreter's machine code, to copy into the area.
pub fn code() -> &'static [u8] {
    let start = ferry_restorer_code as *const () as usize;
    let end = ferry_restorer_code_end as *const () as usize;
    // SAFETY: both symbols are labels of the global_asm block above, in
    // this order, in the mapped text of this binary.
    unsafe { core::slice::from_raw_parts(start as *const u8, end - start) }
}

/// Run the interpreter at `entry` (its copy in the area) on `plan` with
/// the stack `stack_top`. Does not return: the process becomes the
/// restored program, or ends.
///
/// # Safety
/// `entry` must be a copy of [`code`], `plan` a plan ending in a JUMP op,
/// and `stack_top` the 16-byte-aligned top of a writable stack; all three
/// must stay mapped through the plan's munmaps.
pub unsafe fn run(entry: usize, plan: usize, stack_top: usize) -> ! {
    // SAFETY: the caller's contract; the code never returns here.
    unsafe {
        core::arch::asm!(
            "mov rsp, {stack}",
            "jmp {entry}",
            stack = in(reg) stack_top,
            entry = in(reg) entry,
            in("rdi") plan,
            options(noreturn),
        )
    }
}
