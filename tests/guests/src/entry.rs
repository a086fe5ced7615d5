//! PVH entry: 32-bit protected mode, paging off, EBX = hvm_start_info.
//! Turn on long mode over a static 4 GiB identity map and call `guest_main`.

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a"
    .align 4
    .long 4                     /* namesz: "Xen\0" */
    .long 4                     /* descsz */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .section .text.entry, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    mov %ebx, %edi              /* hvm_start_info, first argument of guest_main */
    lgdt (gdt_ptr)
    mov $0x620, %eax            /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       /* EFER.LME */
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    and $0xfffffffb, %eax       /* clear EM */
    or $0x80000003, %eax        /* PG | MP | PE */
    mov %eax, %cr0
    ljmp $0x08, $long_entry

    .code64
    /* 64-bit entry (ELF without PVH note): the loader's page tables and GDT
     * are live; there is no hvm_start_info. */
    .global entry64
entry64:
    cli
    xor %edi, %edi
    lgdt (gdt_ptr)
    lea pml4(%rip), %rax
    mov %rax, %cr3
    pushq $0x08
    lea long_entry(%rip), %rax
    push %rax
    lretq
long_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea stack_top(%rip), %rsp
    call guest_main
1:  cli
    hlt
    jmp 1b

    .section .data
    .align 16
gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf93000000ffff    /* 0x10: data */
    .quad 0x00affb000000ffff    /* 0x18: 64-bit code, DPL 3 */
    .quad 0x00cff3000000ffff    /* 0x20: data, DPL 3 */
    .global gdt_tss
gdt_tss:
    .quad 0                     /* 0x28: TSS, filled in by user::enter */
    .quad 0
gdt_end:
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

    .align 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0000 + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x7
    .quad pd + 0x4000 + 0x7     /* 4-5 GiB: where the 64-bit BAR window starts */
    .fill 507, 8, 0
pd:
    .set i, 0
    .rept 2560
    .quad (i << 21) | 0x87      /* present, writable, user, 2 MiB */
    .set i, i + 1
    .endr

    .section .bss
    .align 16
stack_bottom:
    .skip 65536
stack_top:
"#,
    options(att_syntax)
);
