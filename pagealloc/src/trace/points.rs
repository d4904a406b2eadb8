//! Where in the C library each probe goes.
//!
//! A probe on an instruction the kernel can emulate (a relative jmp, call or jcc, a push of a
//! register, a nop) costs one trap; on any other instruction the kernel also single-steps a copy
//! of it out of line, which costs several times more (`../shared/design.md` §2). So each probe
//! goes on the first emulated instruction of its function that still sees what the probe reads:
//! the argument registers for an entry probe, the stack pointer unchanged for a return probe
//! (the kernel takes the return address from the top of the stack). The function's code is
//! decoded with iced-x86; when no such instruction comes before the first one that changes what
//! the probe reads, the probe goes on the function's first instruction.
use iced_x86::{Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess};
use iced_x86::{OpKind, Register};

/// The instructions looked at from a function's start, at most.
const LOOKAHEAD: usize = 8;

/// What a probe must still see where it is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Argument registers read (rdi, rsi, in order; 0 to 2 of them).
    pub arguments: usize,
    /// The stack pointer as at entry (return probes, and entry probes that compare stacks).
    pub stack: bool,
}

/// The offset from the function's start of the first instruction at which a probe that needs
/// `needs` can be placed and costs one trap, and whether that instruction is emulated (if not,
/// the offset is 0).
pub fn placement(code: &[u8], address: u64, needs: Needs) -> (u64, bool) {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let arguments = [Register::RDI, Register::RSI];
    let watched = &arguments[..needs.arguments.min(2)];
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
            let register = used.register().full_register();
            let written = !matches!(used.access(), OpAccess::Read | OpAccess::CondRead);
            written && (watched.contains(&register) || (needs.stack && register == Register::RSP))
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

/// Whether the kernel emulates `instruction` when a uprobe sits on it (x86: relative branches
/// and calls, pushes of a register, nops).
fn is_emulated(instruction: &iced_x86::Instruction) -> bool {
    let relative_branch = matches!(
        instruction.op0_kind(),
        OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
    );
    match instruction.flow_control() {
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch | FlowControl::Call => {
            relative_branch
        }
        _ => match instruction.mnemonic() {
            Mnemonic::Push => instruction.op0_kind() == OpKind::Register,
            Mnemonic::Nop => true,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::{Needs, placement};

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
}
