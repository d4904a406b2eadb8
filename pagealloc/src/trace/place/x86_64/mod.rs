//! x86-64: the function's code is decoded with iced-x86. The kernel emulates relative jmp, call
//! and jcc, pushes of a register, and nops.
mod effects;
mod explore;
mod register;
mod result;
mod state;

use iced_x86::{Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory};
use iced_x86::{Mnemonic, OpAccess, OpKind};

use super::{Needs, RETURN_FIRST_ARGUMENT};
use crate::objects::{ElfFile, Filled};
use register::{ARGUMENTS, Register};
pub use result::result_points;

/// The instructions looked at from a function's start, at most.
const LOOKAHEAD: usize = 8;

/// The offset from the function's start of the first instruction at which a probe that needs
/// `needs` can be placed and costs one trap, and whether that instruction is emulated (if not,
/// the offset is 0).
pub fn placement(code: &[u8], address: u64, needs: Needs) -> (u64, bool) {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let watched = &ARGUMENTS[..needs.arguments.min(ARGUMENTS.len())];
    for _ in 0..LOOKAHEAD {
        if !decoder.can_decode() {
            break;
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            break;
        }
        if is_emulated(&instruction) {
            return (instruction.ip() - address, true);
        }
        // The probe must go before anything that changes what it reads, or leaves the
        // function's straight line.
        let writes = info.info(&instruction).used_registers().iter().any(|used| {
            let written = !matches!(used.access(), OpAccess::Read | OpAccess::CondRead);
            written
                && Register::of(used.register()).is_some_and(|register| {
                    watched.contains(&register) || (needs.stack && register == Register::Rsp)
                })
        });
        if writes || instruction.flow_control() != FlowControl::Next {
            break;
        }
    }
    (0, false)
}

/// The addresses just after each call to `target` in `code` (at `address`): where the callee's
/// result is in rax.
pub fn after_calls_to(code: &[u8], address: u64, target: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut after = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.flow_control() == FlowControl::Call
            && instruction.near_branch_target() == target
        {
            after.push(instruction.next_ip());
        }
    }
    after
}

/// Whether the function at `address` in `file`, or the one its PLT entry there jumps to,
/// returns its first argument.
pub fn returns_first_argument(file: &ElfFile, address: u64) -> bool {
    let named = |at: u64| {
        file.dynamic_symbols_at(at)
            .iter()
            .any(|symbol| RETURN_FIRST_ARGUMENT.contains(&symbol.name.as_str()))
    };
    if named(address) {
        return true;
    }
    let filled = jump_slot(file.bytes_at(address), address).and_then(|at| file.relocation_at(at));
    match filled {
        Some(Filled::Symbol(name)) => RETURN_FIRST_ARGUMENT.contains(&name.as_str()),
        // RELATIVE: that address; IRELATIVE: a variant of the IFUNC there.
        Some(Filled::Address(at)) => named(*at),
        None => false,
    }
}

/// The slot an indirect `jmp *slot(%rip)` at `address` (a PLT entry, maybe after an `endbr64`)
/// jumps through: where the dynamic linker wrote the function's address.
fn jump_slot(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = decoder.decode();
    if instruction.mnemonic() == Mnemonic::Endbr64 {
        instruction = decoder.decode();
    }
    (instruction.mnemonic() == Mnemonic::Jmp && instruction.is_ip_rel_memory_operand())
        .then(|| instruction.ip_rel_memory_address())
}

/// Whether the kernel emulates `instruction` when a uprobe sits on it.
fn is_emulated(instruction: &Instruction) -> bool {
    match instruction.flow_control() {
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call => {
            is_near_branch(instruction)
        }
        _ => match instruction.mnemonic() {
            Mnemonic::Push => instruction.op0_kind() == OpKind::Register,
            Mnemonic::Nop => true,
            _ => false,
        },
    }
}

/// Whether `instruction` branches to an address relative to its own (not through a register or
/// memory).
fn is_near_branch(instruction: &Instruction) -> bool {
    matches!(
        instruction.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    )
}

#[cfg(test)]
mod tests {
    use super::{Needs, jump_slot, placement};

    const ENTRY: Needs = Needs {
        arguments: 1,
        stack: true,
    };

    #[test]
    fn the_first_emulated_instruction_that_still_sees_the_arguments() {
        // free (glibc 2.36): test %rdi,%rdi; je ...; push %rbp
        let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(placement(&free, 0x98ef0, ENTRY), (3, true));
        // malloc: push %r12 first
        let malloc = [0x41, 0x54, 0x55, 0x53];
        assert_eq!(placement(&malloc, 0x98930, ENTRY), (0, true));
        // memalign: cmpb $0,0x...(%rip); je ...
        let memalign = [0x80, 0x3d, 0x71, 0x0e, 0x14, 0x00, 0x00, 0x74, 0x07];
        assert_eq!(placement(&memalign, 0x99610, ENTRY), (7, true));
    }

    #[test]
    fn the_instructions_after_calls_to_a_function() {
        // mov %rax,%rdi; call 0x97360; test %rax,%rax; call 0x1000 (another); nop
        let code = [
            0x48, 0x89, 0xc7, 0xe8, 0x58, 0xea, 0xff, 0xff, 0x48, 0x85, 0xc0, 0xe8, 0x00, 0x00,
            0x00, 0x00, 0x90,
        ];
        let at: u64 = 0x98b00;
        let target = (at + 8).wrapping_add((0xffff_ea58u32 as i32) as i64 as u64);
        assert_eq!(super::after_calls_to(&code, at, target), vec![at + 8]);
        assert!(super::after_calls_to(&code, at, 0x1234).is_empty());
    }

    #[test]
    fn nothing_past_a_write_of_what_the_probe_reads() {
        // mov %rsi,%rdi; push %rbx: the argument is gone before the push.
        let clobbers = [0x48, 0x89, 0xf7, 0x53];
        assert_eq!(placement(&clobbers, 0x1000, ENTRY), (0, false));
        // sub $0x18,%rsp; push %rbx: the stack moved.
        let stack = [0x48, 0x83, 0xec, 0x18, 0x53];
        assert_eq!(placement(&stack, 0x1000, ENTRY), (0, false));
        // ...but a probe that reads no argument may follow a write of rdi.
        let no_arguments = Needs {
            arguments: 0,
            stack: true,
        };
        assert_eq!(placement(&clobbers, 0x1000, no_arguments), (3, true));
        // A return ends the straight line.
        assert_eq!(placement(&[0xc3, 0x53], 0x1000, ENTRY), (0, false));
    }

    #[test]
    fn the_slot_a_plt_entry_jumps_through() {
        // endbr64; bnd jmp *0x2ff2(%rip)
        let entry = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0xf2, 0x2f, 0x00, 0x00,
        ];
        assert_eq!(jump_slot(&entry, 0x1000), Some(0x1000 + 11 + 0x2ff2));
        // jmp *0x1ace82(%rip), as in glibc 2.36's *ABS*+0x9c840@plt
        let entry = [0xff, 0x25, 0x82, 0xce, 0x1a, 0x00];
        assert_eq!(jump_slot(&entry, 0x262e0), Some(0x1d3168));
        // a direct jmp is no PLT entry
        assert_eq!(jump_slot(&[0xeb, 0x00], 0x1000), None);
    }
}
