//! What an instruction that goes on to the next does to the [`State`]: to the stack pointer
//! and the stack slots, to the registers it writes, and to what the zero flag tests.
use iced_x86::{Instruction, InstructionInfo, InstructionInfoFactory, Mnemonic, OpAccess, OpKind};
use iced_x86::{Register as Iced, RflagsBits};

use super::register::Register;
use super::state::{State, Value, mask};

/// Runs `instruction` (at `ip`, going on to the next) in `state`.
pub(super) fn effects(
    info: &mut InstructionInfoFactory,
    instruction: &Instruction,
    state: &mut State,
    ip: u64,
) {
    let operands = Operands::of(instruction);
    if push_or_pop(&operands, state, ip) || moves_stack_pointer(&operands, state) {
        return;
    }
    untrack_stack_given_away(&operands, state);
    let outcome = outcome(&operands, state);
    let used = info.info(instruction);
    write_registers(used, operands.destination, outcome.value, state, ip);
    write_stack(used, outcome.stored, state);
    if outcome.zero_flag.is_some() {
        state.zf = outcome.zero_flag;
    } else if instruction.rflags_modified() & RflagsBits::ZF != 0 {
        state.zf = None;
    }
}

/// An instruction's register operands and immediate, as the analysis reads them.
struct Operands<'i> {
    instruction: &'i Instruction,
    /// The first operand, a general-purpose register, and its width in bytes.
    destination: Option<(Register, usize)>,
    /// The second, likewise.
    source: Option<(Register, usize)>,
    immediate: Option<u64>,
    /// Both operands are the same register (`xor %eax,%eax`, `test %rax,%rax`).
    same: bool,
    /// The memory operand is a slot of the stack: `disp(%rsp)`.
    stack_memory: bool,
}

impl<'i> Operands<'i> {
    fn of(instruction: &'i Instruction) -> Self {
        let register = |operand| register_operand(instruction, operand);
        let general = |operand| {
            let register = register(operand)?;
            Some((Register::of(register)?, register.size()))
        };
        Operands {
            instruction,
            destination: general(0),
            source: general(1),
            immediate: (instruction.op_count() > 1)
                .then(|| instruction.try_immediate(1).ok())
                .flatten(),
            same: register(0).is_some() && register(0) == register(1),
            stack_memory: instruction.memory_base().full_register() == Iced::RSP
                && instruction.memory_index() == Iced::None,
        }
    }
}

/// Operand `operand` of `instruction`, if it is a register.
fn register_operand(instruction: &Instruction, operand: u32) -> Option<Iced> {
    (operand < instruction.op_count() && instruction.op_kind(operand) == OpKind::Register)
        .then(|| instruction.op_register(operand))
}

/// A push, or a pop of a whole register other than rsp: the stack pointer moves by a word and
/// the value goes to or comes from the slot there. False (nothing done) for anything else.
fn push_or_pop(operands: &Operands, state: &mut State, ip: u64) -> bool {
    let instruction = operands.instruction;
    match instruction.mnemonic() {
        Mnemonic::Push => {
            let value = match register_operand(instruction, 0).and_then(Register::of) {
                Some(Register::Rsp) => {
                    give_stack_away(state);
                    Value::Unknown
                }
                Some(pushed) => state.registers[pushed],
                None => Value::Unknown,
            };
            if let Some(sp) = state.rsp {
                state.rsp = Some(sp - 8);
                state.store(sp - 8, value);
            }
            true
        }
        Mnemonic::Pop => match operands.destination {
            Some((popped, 8)) if popped != Register::Rsp => {
                let value = state.rsp.map_or(Value::Unknown, |sp| state.slot(sp));
                state.rsp = state.rsp.map(|sp| sp + 8);
                state.write(popped, value, ip);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// An instruction that writes rsp: followed if it adds or subtracts a constant (`sub $n,%rsp`,
/// `lea n(%rsp),%rsp`), else the stack pointer is no longer known. False for anything else.
fn moves_stack_pointer(operands: &Operands, state: &mut State) -> bool {
    if operands
        .destination
        .is_none_or(|(register, _)| register != Register::Rsp)
    {
        return false;
    }
    let instruction = operands.instruction;
    let immediate = || instruction.try_immediate(1).ok();
    let change = match instruction.mnemonic() {
        Mnemonic::Sub => immediate().map(|v| (v as i64).wrapping_neg()),
        Mnemonic::Add => immediate().map(|v| v as i64),
        Mnemonic::Lea if operands.stack_memory => Some(instruction.memory_displacement64() as i64),
        _ => None,
    };
    state.rsp = state.rsp.zip(change).map(|(sp, change)| sp + change);
    if state.rsp.is_none() {
        state.slots.clear();
    }
    if instruction.rflags_modified() != 0 {
        state.zf = None;
    }
    true
}

/// The stack is no longer followed after a stack instruction not modelled (leave, enter, pushf,
/// popf, a push or pop of memory), nor its slots once its address is read (given away).
fn untrack_stack_given_away(operands: &Operands, state: &mut State) {
    let instruction = operands.instruction;
    if instruction.is_stack_instruction() {
        state.rsp = None;
        state.slots.clear();
    }
    let reads_stack_pointer = (0..instruction.op_count())
        .any(|i| register_operand(instruction, i).and_then(Register::of) == Some(Register::Rsp))
        || (instruction.mnemonic() == Mnemonic::Lea
            && instruction.memory_base().full_register() == Iced::RSP)
        || instruction.memory_index().full_register() == Iced::RSP;
    if reads_stack_pointer {
        give_stack_away(state);
    }
}

/// The stack's address is known outside: a callee could write any slot.
fn give_stack_away(state: &mut State) {
    state.escaped = true;
    state.slots.clear();
}

/// What an instruction writes that the analysis follows.
struct Outcome {
    /// To its destination register.
    value: Value,
    /// (register, bytes): the zero flag tests those bytes of the register afterwards.
    zero_flag: Option<(Register, usize)>,
    /// To the stack slot it writes a word to.
    stored: Option<Value>,
}

fn outcome(operands: &Operands, state: &State) -> Outcome {
    match operands.destination {
        Some(destination) => {
            let (value, zero_flag) = to_register(operands, state, destination);
            Outcome {
                value,
                zero_flag,
                stored: None,
            }
        }
        None => Outcome {
            value: Value::Unknown,
            zero_flag: None,
            stored: to_stack(operands, state),
        },
    }
}

/// What the destination register (`bytes` of `register`) gets, and what the zero flag tests
/// then.
fn to_register(
    operands: &Operands,
    state: &State,
    (register, bytes): (Register, usize),
) -> (Value, Option<(Register, usize)>) {
    let mnemonic = operands.instruction.mnemonic();
    let tested = Some((register, bytes));
    match mnemonic {
        Mnemonic::Mov => (moved(operands, state, bytes), None),
        Mnemonic::Movzx if bytes >= 4 => {
            let value = match operands
                .source
                .map(|(from, width)| (state.registers[from], width))
            {
                Some((Value::Const(c), width)) => Value::Const(c & mask(width)),
                _ => Value::Unknown,
            };
            (value, None)
        }
        Mnemonic::Xor | Mnemonic::Sub if operands.same => {
            let zero = if bytes >= 4 {
                Value::Const(0)
            } else {
                Value::Unknown
            };
            (zero, tested)
        }
        Mnemonic::And | Mnemonic::Or => {
            let value = match (state.registers[register], operands.immediate) {
                (Value::Const(c), Some(imm)) if bytes >= 4 => {
                    let result = if mnemonic == Mnemonic::And {
                        c & imm
                    } else {
                        c | imm
                    };
                    Value::Const(result & mask(bytes))
                }
                _ => Value::Unknown,
            };
            (value, tested)
        }
        Mnemonic::Xor
        | Mnemonic::Add
        | Mnemonic::Sub
        | Mnemonic::Inc
        | Mnemonic::Dec
        | Mnemonic::Neg => (Value::Unknown, tested),
        Mnemonic::Test if operands.same => (Value::Unknown, tested),
        Mnemonic::Cmp if operands.immediate == Some(0) => (Value::Unknown, tested),
        _ => (Value::Unknown, None),
    }
}

/// What a `mov` to a register of `bytes` gets: another register's value, a constant, or a
/// stack slot's.
fn moved(operands: &Operands, state: &State, bytes: usize) -> Value {
    let instruction = operands.instruction;
    match (operands.source, operands.immediate) {
        (Some((from, 8)), _) if bytes == 8 => state.registers[from],
        (Some((from, 4)), _) if bytes == 4 => match state.registers[from] {
            Value::Const(c) => Value::Const(c & mask(4)),
            _ => Value::Unknown,
        },
        (None, Some(imm)) if bytes >= 4 => Value::Const(imm & mask(bytes)),
        (None, None)
            if bytes == 8
                && instruction.op1_kind() == OpKind::Memory
                && operands.stack_memory
                && !state.escaped =>
        {
            state.rsp.map_or(Value::Unknown, |sp| {
                state.slot(sp + instruction.memory_displacement64() as i64)
            })
        }
        _ => Value::Unknown,
    }
}

/// What a `mov` of a word to a stack slot stores there.
fn to_stack(operands: &Operands, state: &State) -> Option<Value> {
    let instruction = operands.instruction;
    let stores_word = instruction.mnemonic() == Mnemonic::Mov
        && instruction.op0_kind() == OpKind::Memory
        && operands.stack_memory
        && instruction.memory_size().size() == 8;
    stores_word.then(|| match (operands.source, operands.immediate) {
        (Some((from, 8)), _) => state.registers[from],
        (None, Some(imm)) => Value::Const(imm),
        _ => Value::Unknown,
    })
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// Every register the instruction writes gets what it computed (the destination) or something
/// unknown (the others: flags-setting multiplies, `xchg`, ...); rsp written so is lost.
fn write_registers(
    used: &InstructionInfo,
    destination: Option<(Register, usize)>,
    value: Value,
    state: &mut State,
    ip: u64,
) {
    let mut written: Vec<Register> = used
        .used_registers()
        .iter()
        .filter(|used| writes(used.access()))
        .filter_map(|used| Register::of(used.register()))
        .collect();
    written.sort_unstable_by_key(|&register| register as usize);
    written.dedup();
    for register in written {
        if register == Register::Rsp {
            state.rsp = None;
            state.slots.clear();
        } else if destination.is_some_and(|(d, _)| d == register) {
            state.write(register, value, ip);
        } else {
            state.write(register, Value::Unknown, ip);
        }
    }
}

/// The stack slots the instruction writes get `stored`, or something unknown.
fn write_stack(used: &InstructionInfo, stored: Option<Value>, state: &mut State) {
    for memory in used.used_memory().iter().filter(|m| writes(m.access())) {
        if memory.base().full_register() != Iced::RSP && memory.index().full_register() != Iced::RSP
        {
            continue; // not the stack (its address was not given away: see `escaped`)
        }
        match state.rsp {
            Some(sp) if memory.index() == Iced::None => {
                let at = sp + memory.displacement() as i64;
                match stored {
                    Some(value) => state.store(at, value),
                    None => state.clobber(at, memory.memory_size().size().max(1) as i64),
                }
            }
            _ => state.slots.clear(),
        }
    }
}
