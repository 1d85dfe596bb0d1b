//! Entry points. The EL3 SPMC enters the primary execution context at the
//! image start (0x0e100000) in S-EL1h, MMU and caches off, interrupts
//! masked, with x0 = the FF-A boot information blob (manifest
//! `gp-register-num = <0>`) and x4 = the linear core id. Every other
//! execution context enters `secondary_entry` (registered with
//! FFA_SECONDARY_EP_REGISTER) when its core is powered on, with x4 = its core
//! id. Each core gets its own 64 KiB stack; with the MMU off memory is
//! Device-type, so nothing here does unaligned accesses.

core::arch::global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    mov     x19, x0
    mov     x20, x4
    bl      enable_fp
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
1:  cmp     x9, x10
    b.hs    2f
    str     xzr, [x9], #8
    b       1b
2:  mov     x0, x20
    bl      set_stack
    mov     x0, x20
    mov     x1, x19
    bl      sp_main
3:  wfe
    b       3b

.global secondary_entry
secondary_entry:
    mov     x20, x4
    bl      enable_fp
    mov     x0, x20
    bl      set_stack
    mov     x0, x20
    bl      sp_secondary
4:  wfe
    b       4b

// CPACR_EL1.FPEN = 0b11: the compiler uses FP/SIMD registers.
enable_fp:
    mrs     x9, cpacr_el1
    orr     x9, x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
    ret

// sp = __stacks_end - x0 * 64 KiB; a core id beyond the stacks parks the core.
set_stack:
    cmp     x0, #32
    b.hs    5f
    adrp    x9, __stacks_end
    add     x9, x9, :lo12:__stacks_end
    mov     x10, #65536
    msub    x9, x0, x10, x9
    mov     sp, x9
    ret
5:  wfe
    b       5b
"#
);

unsafe extern "C" {
    /// The secondary execution contexts' entry point (above).
    pub fn secondary_entry();
}
