//! Entry assembly and the static boot data: the 32-bit PVH entry at 0x100000, the 64-bit Linux
//! boot protocol entry at 0x100200, the GDT, identity page tables for the first 4 GiB (2 MiB
//! pages, built by the assembler so no instructions are spent filling them), and the Xen
//! `PHYS32_ENTRY` ELF note. Both entries switch to our page tables and stack and call
//! `probe_main(protocol, info)` with protocol 1 = PVH (info = `hvm_start_info`), 2 = Linux
//! (info = zero page).

core::arch::global_asm!(
    r#"
    .section .text.pvh_entry, "ax"
    .code32
    .global pvh_entry
pvh_entry:
    cli
    cld
    movl $probe_pml4, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax                 # CR4.PAE
    movl %eax, %cr4
    movl $0xc0000080, %ecx          # EFER
    rdmsr
    orl $0x100, %eax                # EFER.LME
    wrmsr
    movl %cr0, %eax
    orl $0x80000001, %eax           # CR0.PG | CR0.PE
    movl %eax, %cr0
    lgdt probe_gdt_ptr
    ljmp $0x08, $pvh_long_mode

    .code64
pvh_long_mode:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %ebx, %esi                 # hvm_start_info (zero-extended)
    movl $1, %edi
    jmp probe_common_entry

    .section .text.linux64_entry, "ax"
    .global linux64_entry
linux64_entry:
    cli
    cld
    movl $2, %edi                   # rsi = zero page, as the VMM left it
probe_common_entry:
    leaq __stack_top(%rip), %rsp
    leaq probe_pml4(%rip), %rax
    movq %rax, %cr3
    call probe_main
    ud2

    .section .data.gdt, "aw"
    .balign 16
probe_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        # 0x08: 64-bit code
    .quad 0x00cf92000000ffff        # 0x10: flat data
probe_gdt_end:
probe_gdt_ptr:
    .word probe_gdt_end - probe_gdt - 1
    .quad probe_gdt

    .section .data.pagetables, "aw"
    .balign 4096
    .global probe_pml4
probe_pml4:
    .quad probe_pdpt + 0x23         # present, writable, accessed
    .fill 511, 8, 0
    .global probe_pdpt
probe_pdpt:
    .quad probe_pd + 0x23
    .quad probe_pd + 0x1023
    .quad probe_pd + 0x2023
    .quad probe_pd + 0x3023
    .fill 508, 8, 0
probe_pd:
    .set probe_pde, 0xe3            # 2 MiB page: present, writable, accessed, dirty
    .rept 2048
    .quad probe_pde
    .set probe_pde, probe_pde + 0x200000
    .endr
    .global probe_pd_high
probe_pd_high:                      # for one 2 MiB page above 4 GiB (see paging.rs)
    .fill 512, 8, 0

    .section .note.Xen, "a", @note
    .balign 4
    .long 4                         # namesz
    .long 4                         # descsz
    .long 18                        # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_entry
    .balign 4
    .text
"#,
    options(att_syntax)
);
