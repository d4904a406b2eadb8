//! What the x86-64 code of a function says, read straight through (iced-x86): which variables
//! it reads at RIP-relative addresses, what it compares, calls and stores, and what the
//! registers involved hold at that point. [`super::derive`] finds malloc's variables in these
//! facts when the debug info that would name them is out of reach.
//!
//! The registers are followed in the order of the code, not along its paths: a value is known
//! from the instruction that set it until an instruction writes that register again (a call
//! ends what the caller-saved registers held). That is enough for the short, direct uses the
//! patterns look for, and each pattern's result is checked against the others' and at run time.
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess,
    OpKind, Register,
};

/// The most bytes read of a function whose size is not known (one reached by a call).
const MAX_FUNCTION_BYTES: u64 = 16 * 1024;

/// What a register is known to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// This link-time address (`lea X(%rip), %reg`).
    Address(u64),
    /// This constant (`mov $imm, %reg`).
    Constant(u64),
    /// The word of the variable at this link-time address (`mov X(%rip), %reg`).
    ValueAt(u64),
    /// A word read at this displacement from another register (`mov d(%base), %reg`).
    LoadedAt(i64),
}

/// One thing the code does that a pattern may look for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fact {
    /// It reads `bytes` bytes at the link-time `address` (a RIP-relative operand).
    Reads { address: u64, bytes: usize },
    /// `cmp` of two registers, with what each holds.
    Compares(Option<Held>, Option<Held>),
    /// A direct call at `at` (the next instruction at `next`) of `target`, with what the first
    /// two argument registers hold.
    Calls {
        at: u64,
        next: u64,
        target: u64,
        first: Option<Held>,
        second: Option<Held>,
    },
    /// A store of a register at `displacement` from another register (no index).
    Stores {
        displacement: i64,
        value: Option<Held>,
    },
}

/// The facts of the function at link-time `address`, whose code starts `code` (to the end of
/// its segment). With `size` unknown, the function ends at the first return or jump that no
/// branch seen so far jumps past.
pub fn facts(code: &[u8], address: u64, size: Option<u64>) -> Vec<Fact> {
    let length = size.unwrap_or(MAX_FUNCTION_BYTES).min(code.len() as u64) as usize;
    let mut decoder = Decoder::with_ip(64, &code[..length], address, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut held: [Option<Held>; 16] = [None; 16];
    let mut facts = Vec::new();
    let mut furthest = address;
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            break;
        }
        facts.extend(fact(&instruction, &held));
        track(&mut info, &instruction, &mut held);
        let target = instruction.near_branch_target();
        if instruction.flow_control() == FlowControl::ConditionalBranch
            || instruction.flow_control() == FlowControl::UnconditionalBranch
        {
            furthest = furthest.max(target);
        }
        let leaves = matches!(
            instruction.flow_control(),
            FlowControl::Return | FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
        );
        if size.is_none() && leaves && instruction.next_ip() > furthest {
            break;
        }
    }
    facts
}

/// The distinct targets of the direct calls among `facts`.
pub fn callees(facts: &[Fact]) -> Vec<u64> {
    let mut targets: Vec<u64> = Vec::new();
    for fact in facts {
        if let Fact::Calls { target, .. } = fact
            && !targets.contains(target)
        {
            targets.push(*target);
        }
    }
    targets
}

/// The slot of a general-purpose register (its narrower parts are it too).
fn slot(register: Register) -> Option<usize> {
    let full = register.full_register();
    full.is_gpr64()
        .then(|| full as usize - Register::RAX as usize)
}

fn register_operand(instruction: &Instruction, operand: u32) -> Option<Register> {
    (operand < instruction.op_count() && instruction.op_kind(operand) == OpKind::Register)
        .then(|| instruction.op_register(operand))
}

/// What a register operand holds, if it is a general-purpose register whose value is known.
fn held_in(instruction: &Instruction, operand: u32, held: &[Option<Held>; 16]) -> Option<Held> {
    register_operand(instruction, operand)
        .and_then(slot)
        .and_then(|s| held[s])
}

/// A memory operand at a displacement from a register, without index.
fn based(instruction: &Instruction) -> bool {
    instruction.memory_base() != Register::None
        && instruction.memory_base() != Register::RIP
        && instruction.memory_index() == Register::None
}

fn fact(instruction: &Instruction, held: &[Option<Held>; 16]) -> Option<Fact> {
    const RDI: usize = 7;
    const RSI: usize = 6;
    if instruction.flow_control() == FlowControl::Call {
        return (instruction.op0_kind() == OpKind::NearBranch64).then(|| Fact::Calls {
            at: instruction.ip(),
            next: instruction.next_ip(),
            target: instruction.near_branch_target(),
            first: held[RDI],
            second: held[RSI],
        });
    }
    if instruction.is_ip_rel_memory_operand() && instruction.mnemonic() != Mnemonic::Lea {
        return Some(Fact::Reads {
            address: instruction.ip_rel_memory_address(),
            bytes: instruction.memory_size().size(),
        });
    }
    match instruction.mnemonic() {
        Mnemonic::Cmp if register_operand(instruction, 1).is_some() => Some(Fact::Compares(
            held_in(instruction, 0, held),
            held_in(instruction, 1, held),
        )),
        Mnemonic::Mov if instruction.op0_kind() == OpKind::Memory && based(instruction) => {
            register_operand(instruction, 1).map(|_| Fact::Stores {
                displacement: instruction.memory_displacement64() as i64,
                value: held_in(instruction, 1, held),
            })
        }
        _ => None,
    }
}

/// What `instruction` leaves in the registers it writes.
fn track(
    info: &mut InstructionInfoFactory,
    instruction: &Instruction,
    held: &mut [Option<Held>; 16],
) {
    const CALLER_SAVED: [usize; 9] = [0, 1, 2, 6, 7, 8, 9, 10, 11];
    if instruction.flow_control() == FlowControl::Call {
        for s in CALLER_SAVED {
            held[s] = None;
        }
        return;
    }
    let destination = register_operand(instruction, 0).filter(|r| r.size() >= 4);
    let value = destination.and_then(|_| match (instruction.mnemonic(), instruction.op1_kind()) {
        (Mnemonic::Lea, OpKind::Memory) if instruction.is_ip_rel_memory_operand() => {
            Some(Held::Address(instruction.ip_rel_memory_address()))
        }
        (Mnemonic::Mov, OpKind::Memory) if instruction.is_ip_rel_memory_operand() => {
            (instruction.memory_size().size() == 8)
                .then(|| Held::ValueAt(instruction.ip_rel_memory_address()))
        }
        (Mnemonic::Mov, OpKind::Memory) if based(instruction) => {
            Some(Held::LoadedAt(instruction.memory_displacement64() as i64))
        }
        (Mnemonic::Mov, OpKind::Register) => held_in(instruction, 1, held),
        (Mnemonic::Mov, _) => instruction.try_immediate(1).ok().map(Held::Constant),
        _ => None,
    });
    for used in info.info(instruction).used_registers() {
        let written = !matches!(used.access(), OpAccess::Read | OpAccess::CondRead);
        if written && let Some(s) = slot(used.register()) {
            held[s] = None;
        }
    }
    if let Some(s) = destination.and_then(slot) {
        held[s] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_walk_compares_the_first_arena_with_the_next() {
        // lea 0x139ea9(%rip),%r12; mov %r12,%rbx; mov 0x870(%rbx),%rbx; cmp %r12,%rbx; ret
        // (glibc 2.36's mallinfo2, cut down)
        let code = [
            0x4c, 0x8d, 0x25, 0xa9, 0x9e, 0x13, 0x00, 0x4c, 0x89, 0xe3, 0x48, 0x8b, 0x9b, 0x70,
            0x08, 0x00, 0x00, 0x4c, 0x39, 0xe3, 0xc3,
        ];
        let facts = facts(&code, 0x99db0, None);
        let main_arena = 0x99db7 + 0x139ea9;
        assert_eq!(
            facts,
            vec![Fact::Compares(
                Some(Held::LoadedAt(0x870)),
                Some(Held::Address(main_arena))
            )]
        );
    }

    #[test]
    fn a_call_sees_its_arguments_and_ends_the_caller_saved_values() {
        // mov $0x280,%esi; lea 0x10(%rip),%rdi; call +0; call +0
        let code = [
            0xbe, 0x80, 0x02, 0x00, 0x00, 0x48, 0x8d, 0x3d, 0x10, 0x00, 0x00, 0x00, 0xe8, 0x00,
            0x00, 0x00, 0x00, 0xe8, 0x00, 0x00, 0x00, 0x00,
        ];
        let facts = facts(&code, 0x1000, Some(code.len() as u64));
        assert_eq!(
            facts[0],
            Fact::Calls {
                at: 0x100c,
                next: 0x1011,
                target: 0x1011,
                first: Some(Held::Address(0x100c + 0x10)),
                second: Some(Held::Constant(0x280)),
            }
        );
        assert!(matches!(
            facts[1],
            Fact::Calls {
                first: None,
                second: None,
                ..
            }
        ));
        assert_eq!(callees(&facts), vec![0x1011, 0x1016]);
    }
}
