//! Entry from TF-A (BL33, NS-EL1, MMU off): FP on, .bss zeroed, a stack.

core::arch::global_asm!(
    r#"
.section .text.boot, "ax"
.global _start
_start:
    mrs     x9, cpacr_el1
    orr     x9, x9, #(3 << 20)
    msr     cpacr_el1, x9
    isb
    adrp    x9, __bss_start
    add     x9, x9, :lo12:__bss_start
    adrp    x10, __bss_end
    add     x10, x10, :lo12:__bss_end
1:  cmp     x9, x10
    b.hs    2f
    str     xzr, [x9], #8
    b       1b
2:  adrp    x9, __stack_end
    add     x9, x9, :lo12:__stack_end
    mov     sp, x9
    bl      client_main
3:  wfe
    b       3b
"#
);
