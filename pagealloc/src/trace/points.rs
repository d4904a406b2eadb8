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
//!
//! A function's result can also be caught with one trap instead of a return probe's two:
//! [`result_points`] finds emulated instructions on the function's return paths where the result
//! is already final in rax, such that every call passes exactly one of them with its result.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use iced_x86::{ConditionCode, Decoder, DecoderOptions, FlowControl, Instruction};
use iced_x86::{InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register, RflagsBits};

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

/// The slot an indirect `jmp *slot(%rip)` at `address` (a PLT entry, maybe after an `endbr64`)
/// jumps through: where the dynamic linker wrote the function's address.
pub fn jump_slot(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = decoder.decode();
    if instruction.mnemonic() == Mnemonic::Endbr64 {
        instruction = decoder.decode();
    }
    (instruction.mnemonic() == Mnemonic::Jmp && instruction.is_ip_rel_memory_operand())
        .then(|| instruction.ip_rel_memory_address())
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

// ---------------------------------------------------------------------------------------------
// One trap per call: where a function's result is final in rax.
//
// The function's code is explored from its entry by abstract interpretation, each (instruction,
// state) pair once. The state is what is known of the registers (a constant; "what the
// instruction at X last wrote to rax", one label per instruction; or nothing), of the 8-byte
// stack slots the function wrote (by offset from the stack pointer at entry), and which register
// the zero flag tests. Both ways of a `jcc` are followed unless the zero flag decides one; after
// `test %rax,%rax` the zero side knows rax is 0. A call clobbers the caller-saved registers and
// gives rax a new value; a call to a function that provably never returns (no `ret` reachable in
// it, given the constant arguments it gets: glibc's `malloc_printerr`, `__libc_message(do_abort,
// ...)`) ends the path. A jump out of the function (a tail call) or an indirect jump: not sure.
//
// Points are then chosen for each value a `ret` can return (each "definition": the call or load
// that produced it) among the emulated instructions that every path from the definition to a
// `ret` passes, after which that value stays in rax to the `ret` on every path (it may sit in a
// callee-saved register or a stack slot across a call meanwhile) and that are on no cycle. A
// path on which the value is known to be 0 needs no point (the probe reports nothing for a zero
// rax): that is why the `jcc` just after `test %rax,%rax` qualifies although the null side may
// go on to retry. Where the paths of two definitions merge before their first such instruction,
// both take a later one they share.
//
// The choice is then proven by exploring again with the probes in place: on every path from the
// entry to a `ret`, rax at the `ret` must be the value the one probe that reported on that path
// saw, or 0 with no probe having reported; no path may report twice. Any doubt while exploring
// or choosing: not sure, and the caller keeps its return probe.
// ---------------------------------------------------------------------------------------------

/// A place where a function's result is final in rax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultPoint {
    /// Bytes from the function's start.
    pub offset: u64,
    /// How far below its value at the function's entry the stack pointer is there, in bytes.
    pub depth: u64,
}

/// Why [`result_points`] is not sure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsure(pub String);

impl std::fmt::Display for Unsure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn unsure<T>(why: impl Into<String>) -> Result<T, Unsure> {
    Err(Unsure(why.into()))
}

/// The (instruction, state) pairs one exploration of the function may visit.
const MAX_STATES: usize = 100_000;
/// ...and of a callee, asked whether it returns (beyond: it may).
const MAX_CALLEE_STATES: usize = 20_000;
/// How many calls deep that question is followed (beyond: it may return).
const MAX_CALL_DEPTH: usize = 4;

const RAX: usize = 0;
const RCX: usize = 1;
const RSP: usize = 4;
const RDI: usize = 7;
const R11: usize = 11;
/// Clobbered by a call (System V ABI); rbx, rbp and r12 to r15 survive it.
const CALLER_SAVED: [usize; 9] = [0, 1, 2, 6, 7, 8, 9, 10, 11];
/// rdi, rsi, rdx, rcx, r8, r9.
const ARGUMENTS: [usize; 6] = [7, 6, 2, 1, 8, 9];

/// The index (rax = 0 ... r15 = 15) of the general-purpose register `register` is part of.
fn gpr(register: Register) -> Option<usize> {
    let full = register.full_register();
    full.is_gpr64()
        .then(|| full as usize - Register::RAX as usize)
}

fn mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Value {
    Unknown,
    Const(u64),
    /// What the instruction at this address last wrote to rax.
    Def(u64),
}

/// What the probes passed on the path so far reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reported {
    Nothing,
    /// This value (of rax).
    Value(u64),
    /// A value the same instruction has since overwritten (in a loop): lost.
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    registers: [Value; 16],
    /// 8-byte stack slots by offset from the stack pointer at entry, sorted; absent: unknown.
    slots: Vec<(i64, Value)>,
    /// The stack pointer's offset from its value at entry.
    rsp: Option<i64>,
    /// The stack's address was given away (slots are no longer tracked: a callee could write
    /// them).
    escaped: bool,
    /// (register, bytes): the zero flag is set iff those low bytes of the register are 0.
    zf: Option<(usize, usize)>,
    reported: Reported,
}

impl State {
    fn entry() -> State {
        State {
            registers: [Value::Unknown; 16],
            slots: Vec::new(),
            rsp: Some(0),
            escaped: false,
            zf: None,
            reported: Reported::Nothing,
        }
    }

    /// A callee entered with these constant arguments (its stack is not tracked).
    fn callee(arguments: [Option<u64>; 6]) -> State {
        let mut state = State::entry();
        state.rsp = None;
        state.escaped = true;
        for (register, value) in ARGUMENTS.iter().zip(arguments) {
            if let Some(value) = value {
                state.registers[*register] = Value::Const(value);
            }
        }
        state
    }

    /// `register` gets `value`; rax getting an unknown value gets the label of the instruction
    /// at `ip` instead.
    fn write(&mut self, register: usize, value: Value, ip: u64) {
        if register == RAX && value == Value::Unknown {
            self.define(ip);
        } else {
            self.registers[register] = value;
        }
        if self.zf.is_some_and(|(tested, _)| tested == register) {
            self.zf = None;
        }
    }

    /// rax gets a new value from the instruction at `ip` (what an earlier run of it wrote is
    /// no longer known).
    fn define(&mut self, ip: u64) {
        self.forget(ip);
        self.registers[RAX] = Value::Def(ip);
    }

    fn forget(&mut self, label: u64) {
        for register in &mut self.registers {
            if *register == Value::Def(label) {
                *register = Value::Unknown;
            }
        }
        self.slots.retain(|&(_, value)| value != Value::Def(label));
        if self.reported == Reported::Value(label) {
            self.reported = Reported::Stale;
        }
    }

    /// The value labelled `label` is 0 (a probe that saw it reported nothing).
    fn known_zero(&mut self, label: u64) {
        for register in &mut self.registers {
            if *register == Value::Def(label) {
                *register = Value::Const(0);
            }
        }
        for (_, value) in &mut self.slots {
            if *value == Value::Def(label) {
                *value = Value::Const(0);
            }
        }
        if self.reported == Reported::Value(label) {
            self.reported = Reported::Nothing;
        }
    }

    fn holds(&self, label: u64) -> bool {
        self.registers.contains(&Value::Def(label))
            || self.slots.iter().any(|&(_, v)| v == Value::Def(label))
    }

    fn slot(&self, offset: i64) -> Value {
        self.slots
            .iter()
            .find(|&&(at, _)| at == offset)
            .map_or(Value::Unknown, |&(_, value)| value)
    }

    /// Bytes [offset, offset + bytes) of the stack are written with something unknown.
    fn clobber(&mut self, offset: i64, bytes: i64) {
        self.slots
            .retain(|&(at, _)| at + 8 <= offset || at >= offset + bytes);
    }

    fn store(&mut self, offset: i64, value: Value) {
        self.clobber(offset, 8);
        if value != Value::Unknown && !self.escaped {
            let at = self.slots.partition_point(|&(at, _)| at < offset);
            self.slots.insert(at, (offset, value));
        }
    }

    /// A probe here reports rax (before the instruction runs).
    fn report(&mut self) -> Result<(), Unsure> {
        match self.registers[RAX] {
            Value::Const(0) => Ok(()),
            Value::Def(label) if self.reported == Reported::Nothing => {
                self.reported = Reported::Value(label);
                Ok(())
            }
            Value::Def(_) => unsure("a path passes two points with a result in rax"),
            _ => unsure("a point where rax holds no result"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exit {
    /// A `ret`.
    Return,
    /// The process ends (a call that never returns, a trapping instruction).
    End,
}

struct Edge {
    to: u64,
    state: State,
    /// The value with this label is known to be 0 on this edge.
    zeroed: Option<u64>,
}

enum Step {
    Next(Vec<Edge>),
    Exit(Exit, Box<State>),
}

enum Mode<'p> {
    /// The function analysed, [start, end), with the probes at `points`.
    Function {
        start: u64,
        end: u64,
        points: &'p HashSet<u64>,
    },
    /// A callee, `level` calls deep, asked whether it returns.
    Callee { level: usize },
}

struct Node {
    ip: u64,
    state: State,
    edges: Vec<(usize, Option<u64>)>,
    exit: Option<Exit>,
}

/// A callee's address and the constant arguments (rdi, rsi, rdx, rcx, r8, r9) it is called with.
type CalleeWith = (u64, [Option<u64>; 6]);

struct Analysis<'a, 'c> {
    code: &'c dyn Fn(u64) -> &'a [u8],
    /// Whether the function at an address returns its first argument (memset, memcpy...).
    returns_first_argument: &'c dyn Fn(u64) -> bool,
    /// ...as answered, by address (a tail call is met once per state that reaches it).
    returning: RefCell<HashMap<u64, bool>>,
    decoded: RefCell<HashMap<u64, Instruction>>,
    info: RefCell<InstructionInfoFactory>,
    /// Whether a callee, entered with these constant arguments, may return.
    may_return: RefCell<HashMap<CalleeWith, bool>>,
    asking: RefCell<HashSet<CalleeWith>>,
}

impl<'a, 'c> Analysis<'a, 'c> {
    fn new(
        code: &'c dyn Fn(u64) -> &'a [u8],
        returns_first_argument: &'c dyn Fn(u64) -> bool,
    ) -> Self {
        Analysis {
            code,
            returns_first_argument,
            returning: RefCell::default(),
            decoded: RefCell::default(),
            info: RefCell::new(InstructionInfoFactory::new()),
            may_return: RefCell::default(),
            asking: RefCell::default(),
        }
    }

    fn decode(&self, ip: u64) -> Result<Instruction, Unsure> {
        if let Some(instruction) = self.decoded.borrow().get(&ip) {
            return Ok(*instruction);
        }
        let mut decoder = Decoder::with_ip(64, (self.code)(ip), ip, DecoderOptions::NONE);
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return unsure(format!("no instruction decodes at {ip:#x}"));
        }
        self.decoded.borrow_mut().insert(ip, instruction);
        Ok(instruction)
    }

    /// What running the instruction at `ip` in `state` leads to.
    fn step(&self, ip: u64, state: &State, mode: &Mode) -> Result<Step, Unsure> {
        let instruction = self.decode(ip)?;
        let next = instruction.next_ip();
        let level = match *mode {
            Mode::Function { start, end, .. } if ip < start || next > end => {
                return unsure("the code runs past the function's end");
            }
            Mode::Function { .. } => 0,
            Mode::Callee { level } => level,
        };
        let inside = |target: u64| match *mode {
            Mode::Function { start, end, .. } if target < start || target >= end => {
                unsure(format!(
                    "a jump out of the function at {ip:#x} (a tail call: its return is not seen)"
                ))
            }
            _ => Ok(target),
        };
        // Where a path may go on anywhere: in the function, not sure; in a callee, it may return.
        let anywhere = |what: &str, state: State| match mode {
            Mode::Function { .. } => unsure(format!("{what} at {ip:#x}")),
            Mode::Callee { .. } => Ok(Step::Exit(Exit::Return, Box::new(state))),
        };
        let mut state = state.clone();
        if let Mode::Function { points, .. } = mode {
            if points.contains(&ip) {
                state.report()?;
            }
        }
        let relative = matches!(
            instruction.op0_kind(),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        );
        let along = |to: u64, state: State| Edge {
            to,
            state,
            zeroed: None,
        };
        match instruction.mnemonic() {
            Mnemonic::Hlt | Mnemonic::Ud0 | Mnemonic::Ud1 | Mnemonic::Ud2 => {
                return Ok(Step::Exit(Exit::End, Box::new(state)));
            }
            Mnemonic::Syscall => {
                state.define(ip);
                state.registers[RCX] = Value::Unknown;
                state.registers[R11] = Value::Unknown;
                state.zf = None;
                return Ok(Step::Next(vec![along(next, state)]));
            }
            _ => {}
        }
        match instruction.flow_control() {
            FlowControl::Return => Ok(Step::Exit(Exit::Return, Box::new(state))),
            FlowControl::Next => {
                self.effects(&instruction, &mut state, ip);
                Ok(Step::Next(vec![along(next, state)]))
            }
            FlowControl::UnconditionalBranch if relative => {
                let target = instruction.near_branch_target();
                // calloc's `return memset (mem, 0, n)`: a tail call of a function that returns
                // its first argument is a return of rdi, here already in rax.
                let leaves = matches!(*mode,
                    Mode::Function { start, end, .. } if target < start || target >= end);
                if leaves
                    && state.rsp == Some(0)
                    && state.registers[RDI] == state.registers[RAX]
                    && *(self.returning.borrow_mut())
                        .entry(target)
                        .or_insert_with(|| (self.returns_first_argument)(target))
                {
                    return Ok(Step::Exit(Exit::Return, Box::new(state)));
                }
                let target = inside(target)?;
                Ok(Step::Next(vec![along(target, state)]))
            }
            FlowControl::ConditionalBranch if relative => {
                let target = inside(instruction.near_branch_target())?;
                self.effects(&instruction, &mut state, ip);
                Ok(Step::Next(branches(&instruction, state, target, next)))
            }
            FlowControl::Call if relative => {
                if self.never_returns(instruction.near_branch_target(), &state, level) {
                    return Ok(Step::Exit(Exit::End, Box::new(state)));
                }
                call(&mut state, ip);
                Ok(Step::Next(vec![along(next, state)]))
            }
            FlowControl::IndirectCall => {
                call(&mut state, ip);
                Ok(Step::Next(vec![along(next, state)]))
            }
            FlowControl::IndirectBranch => anywhere("an indirect jump", state),
            _ => anywhere("an instruction that leaves the straight line", state),
        }
    }

    /// What an instruction that goes on to the next does to the state.
    fn effects(&self, instruction: &Instruction, state: &mut State, ip: u64) {
        let mnemonic = instruction.mnemonic();
        let operands = instruction.op_count();
        let register = |operand: u32| {
            (operand < operands && instruction.op_kind(operand) == OpKind::Register)
                .then(|| instruction.op_register(operand))
        };
        let destination = register(0).and_then(|r| gpr(r).map(|index| (index, r.size())));
        let stack_memory = instruction.memory_base().full_register() == Register::RSP
            && instruction.memory_index() == Register::None;
        // The stack pointer.
        match mnemonic {
            Mnemonic::Push => {
                let value = match register(0).and_then(gpr) {
                    Some(RSP) => {
                        state.escaped = true;
                        state.slots.clear();
                        Value::Unknown
                    }
                    Some(pushed) => state.registers[pushed],
                    None => Value::Unknown,
                };
                if let Some(sp) = state.rsp {
                    state.rsp = Some(sp - 8);
                    state.store(sp - 8, value);
                }
                return;
            }
            Mnemonic::Pop => {
                if let Some((popped, 8)) = destination.filter(|&(index, _)| index != RSP) {
                    let value = state.rsp.map_or(Value::Unknown, |sp| state.slot(sp));
                    state.rsp = state.rsp.map(|sp| sp + 8);
                    state.write(popped, value, ip);
                    return;
                }
            }
            _ => {}
        }
        if destination.is_some_and(|(index, _)| index == RSP) {
            let change = match mnemonic {
                Mnemonic::Sub => instruction
                    .try_immediate(1)
                    .ok()
                    .map(|v| (v as i64).wrapping_neg()),
                Mnemonic::Add => instruction.try_immediate(1).ok().map(|v| v as i64),
                Mnemonic::Lea if stack_memory => Some(instruction.memory_displacement64() as i64),
                _ => None,
            };
            state.rsp = state.rsp.zip(change).map(|(sp, change)| sp + change);
            if state.rsp.is_none() {
                state.slots.clear();
            }
            if instruction.rflags_modified() != 0 {
                state.zf = None;
            }
            return;
        }
        if instruction.is_stack_instruction() {
            // leave, enter, pushf, popf, push/pop of memory: not followed.
            state.rsp = None;
            state.slots.clear();
        }
        // Anything else that reads the stack pointer's value gives the stack's address away.
        let reads_stack_pointer = (0..operands).any(|i| register(i).and_then(gpr) == Some(RSP))
            || (mnemonic == Mnemonic::Lea
                && instruction.memory_base().full_register() == Register::RSP)
            || instruction.memory_index().full_register() == Register::RSP;
        if reads_stack_pointer {
            state.escaped = true;
            state.slots.clear();
        }
        // What the destination register gets, and what the zero flag then tests.
        let source = register(1).and_then(|r| gpr(r).map(|index| (index, r.size())));
        let immediate = if operands > 1 {
            instruction.try_immediate(1).ok()
        } else {
            None
        };
        let same = register(0).is_some() && register(0) == register(1);
        let mut value = Value::Unknown;
        let mut zf = None;
        let mut stored = None;
        if let Some((index, bytes)) = destination {
            let current = state.registers[index];
            match mnemonic {
                Mnemonic::Mov => {
                    value = match (source, immediate) {
                        (Some((from, 8)), _) if bytes == 8 => state.registers[from],
                        (Some((from, 4)), _) if bytes == 4 => match state.registers[from] {
                            Value::Const(c) => Value::Const(c & mask(4)),
                            _ => Value::Unknown,
                        },
                        (None, Some(imm)) if bytes >= 4 => Value::Const(imm & mask(bytes)),
                        (None, None)
                            if bytes == 8
                                && instruction.op1_kind() == OpKind::Memory
                                && stack_memory
                                && !state.escaped =>
                        {
                            state.rsp.map_or(Value::Unknown, |sp| {
                                state.slot(sp + instruction.memory_displacement64() as i64)
                            })
                        }
                        _ => Value::Unknown,
                    };
                }
                Mnemonic::Movzx if bytes >= 4 => {
                    if let Some((from, width)) = source {
                        if let Value::Const(c) = state.registers[from] {
                            value = Value::Const(c & mask(width));
                        }
                    }
                }
                Mnemonic::Xor | Mnemonic::Sub if same => {
                    if bytes >= 4 {
                        value = Value::Const(0);
                    }
                    zf = Some((index, bytes));
                }
                Mnemonic::And | Mnemonic::Or => {
                    if let (Value::Const(c), Some(imm), true) = (current, immediate, bytes >= 4) {
                        let result = if mnemonic == Mnemonic::And {
                            c & imm
                        } else {
                            c | imm
                        };
                        value = Value::Const(result & mask(bytes));
                    }
                    zf = Some((index, bytes));
                }
                Mnemonic::Xor
                | Mnemonic::Add
                | Mnemonic::Sub
                | Mnemonic::Inc
                | Mnemonic::Dec
                | Mnemonic::Neg => zf = Some((index, bytes)),
                Mnemonic::Test if same => zf = Some((index, bytes)),
                Mnemonic::Cmp if immediate == Some(0) => zf = Some((index, bytes)),
                _ => {}
            }
        } else if mnemonic == Mnemonic::Mov
            && instruction.op0_kind() == OpKind::Memory
            && stack_memory
            && instruction.memory_size().size() == 8
        {
            stored = Some(match (source, immediate) {
                (Some((from, 8)), _) => state.registers[from],
                (None, Some(imm)) => Value::Const(imm),
                _ => Value::Unknown,
            });
        }
        let mut info = self.info.borrow_mut();
        let info = info.info(instruction);
        let writes = |access: OpAccess| {
            matches!(
                access,
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        };
        let mut written: Vec<usize> = info
            .used_registers()
            .iter()
            .filter(|used| writes(used.access()))
            .filter_map(|used| gpr(used.register()))
            .collect();
        written.sort_unstable();
        written.dedup();
        for index in written {
            if index == RSP {
                state.rsp = None;
                state.slots.clear();
            } else if destination.is_some_and(|(d, _)| d == index) {
                state.write(index, value, ip);
            } else {
                state.write(index, Value::Unknown, ip);
            }
        }
        for memory in info.used_memory().iter().filter(|m| writes(m.access())) {
            if memory.base().full_register() != Register::RSP
                && memory.index().full_register() != Register::RSP
            {
                continue; // not the stack (its address was not given away: see `escaped`)
            }
            match state.rsp {
                Some(sp) if memory.index() == Register::None => {
                    let at = sp + memory.displacement() as i64;
                    match stored {
                        Some(value) => state.store(at, value),
                        None => state.clobber(at, memory.memory_size().size().max(1) as i64),
                    }
                }
                _ => state.slots.clear(),
            }
        }
        if zf.is_some() {
            state.zf = zf;
        } else if instruction.rflags_modified() & RflagsBits::ZF != 0 {
            state.zf = None;
        }
    }

    /// Whether the function at `target`, called in `state`, provably never returns.
    fn never_returns(&self, target: u64, state: &State, level: usize) -> bool {
        if level >= MAX_CALL_DEPTH {
            return false;
        }
        let arguments = ARGUMENTS.map(|r| match state.registers[r] {
            Value::Const(c) => Some(c),
            _ => None,
        });
        let key = (target, arguments);
        if let Some(&may) = self.may_return.borrow().get(&key) {
            return !may;
        }
        if !self.asking.borrow_mut().insert(key) {
            return false; // recursion: assume it may
        }
        let may = self.callee_may_return(target, State::callee(arguments), level + 1);
        self.asking.borrow_mut().remove(&key);
        self.may_return.borrow_mut().insert(key, may);
        !may
    }

    fn callee_may_return(&self, entry: u64, state: State, level: usize) -> bool {
        let mode = Mode::Callee { level };
        let mut seen = HashSet::new();
        let mut work = vec![(entry, state)];
        while let Some((ip, state)) = work.pop() {
            if seen.len() >= MAX_CALLEE_STATES {
                return true;
            }
            if !seen.insert((ip, state.clone())) {
                continue;
            }
            match self.step(ip, &state, &mode) {
                Err(_) | Ok(Step::Exit(Exit::Return, _)) => return true,
                Ok(Step::Exit(Exit::End, _)) => {}
                Ok(Step::Next(edges)) => work.extend(edges.into_iter().map(|e| (e.to, e.state))),
            }
        }
        false
    }

    /// Every (instruction, state) the function at [start, end) reaches, with the probes at
    /// `points`; with probes, each `ret` is checked to return what the path reported.
    fn explore(&self, start: u64, end: u64, points: &HashSet<u64>) -> Result<Vec<Node>, Unsure> {
        let mode = Mode::Function { start, end, points };
        let mut nodes: Vec<Node> = Vec::new();
        let mut index: HashMap<(u64, State), usize> = HashMap::new();
        let mut work = Vec::new();
        let mut intern = |nodes: &mut Vec<Node>, work: &mut Vec<usize>, ip: u64, state: State| {
            *index.entry((ip, state.clone())).or_insert_with(|| {
                nodes.push(Node {
                    ip,
                    state,
                    edges: Vec::new(),
                    exit: None,
                });
                work.push(nodes.len() - 1);
                nodes.len() - 1
            })
        };
        intern(&mut nodes, &mut work, start, State::entry());
        while let Some(n) = work.pop() {
            if nodes.len() > MAX_STATES {
                return unsure("too many paths to follow");
            }
            match self.step(nodes[n].ip, &nodes[n].state, &mode)? {
                Step::Exit(exit, state) => {
                    if exit == Exit::Return {
                        if state.rsp != Some(0) {
                            return unsure(format!(
                                "the stack pointer at the return at {:#x} is not where it was at entry",
                                nodes[n].ip
                            ));
                        }
                        if !points.is_empty() {
                            check_return(&state, nodes[n].ip)?;
                        }
                    }
                    nodes[n].exit = Some(exit);
                }
                Step::Next(edges) => {
                    for edge in edges {
                        let m = intern(&mut nodes, &mut work, edge.to, edge.state);
                        nodes[n].edges.push((m, edge.zeroed));
                    }
                }
            }
        }
        Ok(nodes)
    }

    /// The points: for each value returned, the first emulated instruction every path of it
    /// passes on its way to a `ret`, with it final in rax (later where paths merge).
    fn choose(&self, nodes: &[Node], start: u64) -> Result<HashSet<u64>, Unsure> {
        let mut results = Vec::new();
        for node in nodes.iter().filter(|n| n.exit == Some(Exit::Return)) {
            match node.state.registers[RAX] {
                Value::Def(label) => results.push(label),
                Value::Const(0) => {}
                _ => {
                    return unsure(format!(
                        "the return at +{:#x} returns something not traced to one instruction",
                        node.ip - start
                    ));
                }
            }
        }
        results.sort_unstable();
        results.dedup();
        if results.is_empty() {
            return unsure("no return with a result");
        }
        let mut at: HashMap<u64, Vec<usize>> = HashMap::new();
        for (n, node) in nodes.iter().enumerate() {
            at.entry(node.ip).or_default().push(n);
        }
        let cyclic = cyclic(nodes);
        let mut candidates: Vec<u64> = Vec::new();
        for (&ip, here) in &at {
            if cyclic.contains(&ip) || !is_emulated(&self.decode(ip)?) {
                continue;
            }
            let fits = here.iter().all(|&n| match nodes[n].state.registers[RAX] {
                Value::Const(0) => true,
                Value::Def(label) => results.contains(&label) && stays(nodes, n, label),
                _ => false,
            });
            if fits {
                candidates.push(ip);
            }
        }
        candidates.sort_unstable();
        // For each result, the candidates that cut all its paths, in the order they come.
        let mut chains: Vec<Vec<u64>> = Vec::new();
        for &label in &results {
            let distance = distances(nodes, &at, label);
            let mut chain: Vec<(usize, u64)> = candidates
                .iter()
                .filter(|&&ip| cuts(nodes, &at, label, ip))
                .filter_map(|&ip| {
                    let d = at[&ip].iter().filter_map(|n| distance.get(n)).min()?;
                    Some((*d, ip))
                })
                .collect();
            chain.sort_unstable();
            if chain.is_empty() {
                return unsure(format!(
                    "no emulated instruction on every path of the result of +{:#x} with it final",
                    label - start
                ));
            }
            chains.push(chain.into_iter().map(|(_, ip)| ip).collect());
        }
        // Where the paths of two results merge, both take the same point.
        let mut choice = vec![0usize; results.len()];
        loop {
            let mut changed = false;
            for (i, &label) in results.iter().enumerate() {
                let mine = chains[i][choice[i]];
                let conflict = (0..results.len()).any(|j| {
                    let theirs = chains[j][choice[j]];
                    j != i
                        && theirs != mine
                        && at[&theirs]
                            .iter()
                            .any(|&n| nodes[n].state.registers[RAX] == Value::Def(label))
                });
                if conflict {
                    choice[i] += 1;
                    if choice[i] == chains[i].len() {
                        return unsure(format!(
                            "where the paths of the result of +{:#x} merge with another's, no \
                             point serves both",
                            label - start
                        ));
                    }
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        Ok(chains
            .iter()
            .zip(&choice)
            .map(|(chain, &c)| chain[c])
            .collect())
    }
}

/// At a `ret`: rax must be what the path's one probe reported, or 0 if none reported.
fn check_return(state: &State, ip: u64) -> Result<(), Unsure> {
    match (state.reported, state.registers[RAX]) {
        (Reported::Value(label), Value::Def(returned)) if label == returned => Ok(()),
        (Reported::Nothing, Value::Const(0)) => Ok(()),
        (Reported::Nothing, _) => {
            unsure(format!("a path to the return at {ip:#x} passes no point"))
        }
        _ => unsure(format!(
            "a path to the return at {ip:#x} returns something else than its point reported"
        )),
    }
}

/// The two ways of a conditional jump, each with what it says of the tested register.
fn branches(instruction: &Instruction, state: State, target: u64, next: u64) -> Vec<Edge> {
    let zero_taken = match instruction.condition_code() {
        ConditionCode::e => Some(true),
        ConditionCode::ne => Some(false),
        _ => None,
    };
    let both = |state: State| {
        vec![
            Edge {
                to: target,
                state: state.clone(),
                zeroed: None,
            },
            Edge {
                to: next,
                state,
                zeroed: None,
            },
        ]
    };
    let (Some(zero_taken), Some((register, bytes))) = (zero_taken, state.zf) else {
        return both(state);
    };
    let (zero, nonzero) = if zero_taken {
        (target, next)
    } else {
        (next, target)
    };
    match state.registers[register] {
        Value::Const(c) => {
            let to = if c & mask(bytes) == 0 { zero } else { nonzero };
            vec![Edge {
                to,
                state,
                zeroed: None,
            }]
        }
        Value::Def(label) if bytes == 8 => {
            let mut known = state.clone();
            known.known_zero(label);
            vec![
                Edge {
                    to: zero,
                    state: known,
                    zeroed: Some(label),
                },
                Edge {
                    to: nonzero,
                    state,
                    zeroed: None,
                },
            ]
        }
        Value::Unknown if bytes == 8 => {
            let mut known = state.clone();
            known.registers[register] = Value::Const(0);
            vec![
                Edge {
                    to: zero,
                    state: known,
                    zeroed: None,
                },
                Edge {
                    to: nonzero,
                    state,
                    zeroed: None,
                },
            ]
        }
        _ => both(state),
    }
}

/// A call that returns: the caller-saved registers are clobbered, rax holds its result, the
/// stack below the stack pointer is the callee's.
fn call(state: &mut State, ip: u64) {
    for register in CALLER_SAVED {
        state.registers[register] = Value::Unknown;
    }
    state.define(ip);
    state.zf = None;
    match state.rsp {
        Some(sp) => state.slots.retain(|&(at, _)| at >= sp),
        None => state.slots.clear(),
    }
}

/// The instructions on a cycle.
fn cyclic(nodes: &[Node]) -> HashSet<u64> {
    let mut successors: HashMap<u64, HashSet<u64>> = HashMap::new();
    for node in nodes {
        let next = successors.entry(node.ip).or_default();
        next.extend(node.edges.iter().map(|&(m, _)| nodes[m].ip));
    }
    let mut on_cycle = HashSet::new();
    for &ip in successors.keys() {
        let mut seen = HashSet::new();
        let mut work: Vec<u64> = successors[&ip].iter().copied().collect();
        while let Some(at) = work.pop() {
            if at == ip {
                on_cycle.insert(ip);
                break;
            }
            if seen.insert(at) {
                work.extend(successors.get(&at).into_iter().flatten().copied());
            }
        }
    }
    on_cycle
}

/// Whether every path from node `n` (rax holding the value `label`) returns that value, or
/// learns it is 0, or ends the process.
fn stays(nodes: &[Node], n: usize, label: u64) -> bool {
    let mut seen = HashSet::new();
    let mut work = vec![n];
    while let Some(m) = work.pop() {
        if !seen.insert(m) {
            continue;
        }
        match nodes[m].exit {
            Some(Exit::Return) => {
                if nodes[m].state.registers[RAX] != Value::Def(label) {
                    return false;
                }
            }
            Some(Exit::End) => {}
            None => work.extend(
                nodes[m]
                    .edges
                    .iter()
                    .filter(|&&(_, zeroed)| zeroed != Some(label))
                    .map(|&(to, _)| to),
            ),
        }
    }
    true
}

/// The nodes where the value `label` was just defined, in rax.
fn definitions(nodes: &[Node], at: &HashMap<u64, Vec<usize>>, label: u64) -> Vec<usize> {
    at.get(&label)
        .into_iter()
        .flatten()
        .flat_map(|&n| nodes[n].edges.iter().map(|&(m, _)| m))
        .filter(|&m| nodes[m].state.registers[RAX] == Value::Def(label))
        .collect()
}

/// The paths of the value `label`: from its definition, while it is held and not known 0.
fn onward(nodes: &[Node], n: usize, label: u64) -> impl Iterator<Item = usize> + '_ {
    nodes[n]
        .edges
        .iter()
        .filter(move |&&(m, zeroed)| zeroed != Some(label) && nodes[m].state.holds(label))
        .map(|&(m, _)| m)
}

/// Steps from the definition of `label` to each node on its paths.
fn distances(nodes: &[Node], at: &HashMap<u64, Vec<usize>>, label: u64) -> HashMap<usize, usize> {
    let mut distance = HashMap::new();
    let mut frontier = definitions(nodes, at, label);
    let mut d = 0;
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for n in frontier {
            if distance.contains_key(&n) {
                continue;
            }
            distance.insert(n, d);
            next.extend(onward(nodes, n, label));
        }
        frontier = next;
        d += 1;
    }
    distance
}

/// Whether every path of the value `label` from its definition to a `ret` returning it passes
/// the instruction at `ip`.
fn cuts(nodes: &[Node], at: &HashMap<u64, Vec<usize>>, label: u64, ip: u64) -> bool {
    let mut seen = HashSet::new();
    let mut work = definitions(nodes, at, label);
    while let Some(n) = work.pop() {
        if nodes[n].ip == ip || !seen.insert(n) {
            continue;
        }
        if nodes[n].exit == Some(Exit::Return) && nodes[n].state.registers[RAX] == Value::Def(label)
        {
            return false;
        }
        work.extend(onward(nodes, n, label));
    }
    true
}

/// Where to catch the result of the function at `address` (`size` bytes; `code` gives the
/// library's code from an address on, for the function and what it calls) with one trap per
/// call: emulated instructions, on every path to a `ret` (or a tail call of a function that
/// `returns_first_argument`), at which rax holds the result the function returns, each call
/// passing exactly one with a non-zero rax. Not sure: why not.
pub fn result_points<'a>(
    code: &dyn Fn(u64) -> &'a [u8],
    returns_first_argument: &dyn Fn(u64) -> bool,
    address: u64,
    size: u64,
) -> Result<Vec<ResultPoint>, Unsure> {
    if size == 0 {
        return unsure("the function's size is not known");
    }
    let analysis = Analysis::new(code, returns_first_argument);
    let end = address + size;
    let nodes = analysis.explore(address, end, &HashSet::new())?;
    let points = analysis.choose(&nodes, address)?;
    // The proof: every path, with the probes in place.
    let proven = analysis.explore(address, end, &points)?;
    let cyclic = cyclic(&proven);
    let mut placed = Vec::new();
    for &ip in &points {
        if cyclic.contains(&ip) {
            return unsure(format!("the point at +{:#x} is on a cycle", ip - address));
        }
        let mut depths = proven.iter().filter(|n| n.ip == ip).map(|n| n.state.rsp);
        let first = depths.next().flatten();
        match first {
            Some(sp) if sp <= 0 && depths.all(|d| d == first) => placed.push(ResultPoint {
                offset: ip - address,
                depth: sp.unsigned_abs(),
            }),
            _ => {
                return unsure(format!(
                    "the stack pointer at +{:#x} is not known",
                    ip - address
                ));
            }
        }
    }
    placed.sort_by_key(|p| p.offset);
    Ok(placed)
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
    // One trap per call: hand-assembled functions (GNU as), `f` first, then what it calls.
    use super::{ResultPoint, Unsure, result_points};

    const BASE: u64 = 0x1000;

    /// The points found in `image` for `f`, its first `size` bytes.
    fn points(image: &[u8], size: u64) -> Result<Vec<(u64, u64)>, Unsure> {
        points_knowing(image, size, &|_| false)
    }

    /// ...knowing which functions return their first argument.
    fn points_knowing(
        image: &[u8],
        size: u64,
        returns_first_argument: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<(u64, u64)>, Unsure> {
        let code = |address: u64| {
            let at = address.wrapping_sub(BASE) as usize;
            image.get(at..).unwrap_or(&[])
        };
        result_points(&code, returns_first_argument, BASE, size).map(|points| {
            points
                .into_iter()
                .map(|ResultPoint { offset, depth }| (offset, depth))
                .collect()
        })
    }

    /// Whether the probes at `offsets` pass the proof.
    fn proof(image: &[u8], size: u64, offsets: &[u64]) -> Result<(), Unsure> {
        let code = |address: u64| {
            let at = address.wrapping_sub(BASE) as usize;
            image.get(at..).unwrap_or(&[])
        };
        let analysis = super::Analysis::new(&code, &|_| false);
        let points = offsets.iter().map(|o| BASE + o).collect();
        analysis.explore(BASE, BASE + size, &points).map(|_| ())
    }

    #[test]
    fn a_diamond_a_point_on_each_side() {
        //  0: push %rbx; test %rdi,%rdi; je d; call g; b: jmp 13
        //  d: call h; 12: nop; 13: pop %rbx; ret
        //  g: mov %rdi,%rax; ret  h: mov %rsi,%rax; ret
        let image = [
            0x53, 0x48, 0x85, 0xff, 0x74, 0x07, 0xe8, 0x0a, 0x00, 0x00, 0x00, 0xeb, 0x06, 0xe8,
            0x07, 0x00, 0x00, 0x00, 0x90, 0x5b, 0xc3, 0x48, 0x89, 0xf8, 0xc3, 0x48, 0x89, 0xf0,
            0xc3,
        ];
        assert_eq!(points(&image, 0x15), Ok(vec![(0xb, 8), (0x12, 8)]));
        // One side alone is not enough; the push at entry sees no result.
        assert!(
            proof(&image, 0x15, &[0xb])
                .unwrap_err()
                .0
                .contains("passes no point")
        );
        assert!(proof(&image, 0x15, &[0x0]).is_err());
    }

    #[test]
    fn where_two_results_merge_first_they_share_the_point_after() {
        //  0: push %rbx; test %rdi,%rdi; je d; call g; b: jmp 12
        //  d: call h; 12: test %rax,%rax; 15: je 1b; mov -8(%rax),%rbx; 1b: pop %rbx; ret
        let image = [
            0x53, 0x48, 0x85, 0xff, 0x74, 0x07, 0xe8, 0x12, 0x00, 0x00, 0x00, 0xeb, 0x05, 0xe8,
            0x0f, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x74, 0x04, 0x48, 0x8b, 0x58, 0xf8, 0x5b,
            0xc3, 0x48, 0x89, 0xf8, 0xc3, 0x48, 0x89, 0xf0, 0xc3,
        ];
        assert_eq!(points(&image, 0x1d), Ok(vec![(0x15, 8)]));
        // g's own first point and the shared one: its calls would report twice.
        assert!(
            proof(&image, 0x1d, &[0xb, 0x15])
                .unwrap_err()
                .0
                .contains("two points")
        );
    }

    #[test]
    fn a_call_after_the_result_makes_the_next_result() {
        //  0: push %rbx; call g; test %rax,%rax; 9: je 14; mov %rax,%rdi; call h; 13: nop
        //  14: pop %rbx; ret
        let image = [
            0x53, 0xe8, 0x10, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x74, 0x09, 0x48, 0x89, 0xc7,
            0xe8, 0x07, 0x00, 0x00, 0x00, 0x90, 0x5b, 0xc3, 0x48, 0x89, 0xf8, 0xc3, 0x48, 0x89,
            0xf0, 0xc3,
        ];
        // Not the je after g: h's result is what returns.
        assert_eq!(points(&image, 0x16), Ok(vec![(0x13, 8)]));
        assert!(proof(&image, 0x16, &[0x9]).is_err());
    }

    #[test]
    fn a_result_kept_across_calls_stays_final() {
        //  0: push %rbx; sub $16,%rsp; call g; test %rax,%rax; d: je 29
        //  mov %rax,%rbx; mov %rax,8(%rsp); call h; mov %rbx,%rax; call h; mov 8(%rsp),%rax
        //  29: add $16,%rsp; pop %rbx; ret
        let image = [
            0x53, 0x48, 0x83, 0xec, 0x10, 0xe8, 0x25, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x74,
            0x1a, 0x48, 0x89, 0xc3, 0x48, 0x89, 0x44, 0x24, 0x08, 0xe8, 0x17, 0x00, 0x00, 0x00,
            0x48, 0x89, 0xd8, 0xe8, 0x0f, 0x00, 0x00, 0x00, 0x48, 0x8b, 0x44, 0x24, 0x08, 0x48,
            0x83, 0xc4, 0x10, 0x5b, 0xc3, 0x48, 0x89, 0xf8, 0xc3, 0x48, 0x89, 0xf0, 0xc3,
        ];
        // In rbx (callee-saved) across one call, in a stack slot across the next.
        assert_eq!(points(&image, 0x2f), Ok(vec![(0xd, 24)]));
    }

    #[test]
    fn a_stack_slot_whose_address_was_given_away_is_not_trusted() {
        //  0: push %rbx; sub $16,%rsp; call g; test %rax,%rax; d: je 24
        //  mov %rax,8(%rsp); lea 8(%rsp),%rdi; call h; mov 8(%rsp),%rax; 23: nop
        //  24: add $16,%rsp; pop %rbx; ret
        let image = [
            0x53, 0x48, 0x83, 0xec, 0x10, 0xe8, 0x20, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x74,
            0x15, 0x48, 0x89, 0x44, 0x24, 0x08, 0x48, 0x8d, 0x7c, 0x24, 0x08, 0xe8, 0x10, 0x00,
            0x00, 0x00, 0x48, 0x8b, 0x44, 0x24, 0x08, 0x90, 0x48, 0x83, 0xc4, 0x10, 0x5b, 0xc3,
            0x48, 0x89, 0xf8, 0xc3, 0x48, 0x89, 0xf0, 0xc3,
        ];
        // h may have changed the slot: what is reloaded from it is a new result.
        assert_eq!(points(&image, 0x2a), Ok(vec![(0x23, 24)]));
    }

    #[test]
    fn no_point_inside_a_loop() {
        //  0: push %rbx; mov %rdi,%rbx; 4: mov %rbx,%rdi; call g; test %rax,%rax; f: je 4
        //  11: pop %rbx; ret
        let image = [
            0x53, 0x48, 0x89, 0xfb, 0x48, 0x89, 0xdf, 0xe8, 0x07, 0x00, 0x00, 0x00, 0x48, 0x85,
            0xc0, 0x74, 0xf3, 0x5b, 0xc3, 0x48, 0x89, 0xf8, 0xc3,
        ];
        assert!(points(&image, 0x13).is_err());
        // With a nop after the loop, that is the point.
        let image = [
            0x53, 0x48, 0x89, 0xfb, 0x48, 0x89, 0xdf, 0xe8, 0x08, 0x00, 0x00, 0x00, 0x48, 0x85,
            0xc0, 0x74, 0xf3, 0x90, 0x5b, 0xc3, 0x48, 0x89, 0xf8, 0xc3,
        ];
        assert_eq!(points(&image, 0x14), Ok(vec![(0x11, 8)]));
    }

    #[test]
    fn a_tail_jump_is_a_path_not_seen() {
        //  0: push %rbx; call g; test %rax,%rax; je 11; pop %rbx; mov %rax,%rdi; f: jmp h
        //  11: pop %rbx; ret
        let image = [
            0x53, 0xe8, 0x0d, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x74, 0x06, 0x5b, 0x48, 0x89,
            0xc7, 0xeb, 0x06, 0x5b, 0xc3, 0x48, 0x89, 0xf8, 0xc3, 0x48, 0x89, 0xf8, 0xc3,
        ];
        assert!(points(&image, 0x13).unwrap_err().0.contains("jump out"));
        // ...unless h returns its first argument (memset): the jump returns rdi, which is rax.
        let h = BASE + 0x17;
        assert_eq!(
            points_knowing(&image, 0x13, &|at| at == h),
            Ok(vec![(0x9, 8)])
        );
        // Not with a different value in rdi (mov %rbx,%rdi), nor with the stack not unwound
        // (no pop %rbx: then it is no tail call).
        let mut other = image;
        other[0xe] = 0xdf;
        assert!(points_knowing(&other, 0x13, &|at| at == h).is_err());
        let mut deeper = image;
        deeper[0xb] = 0x90;
        assert!(points_knowing(&deeper, 0x13, &|at| at == h).is_err());
    }

    #[test]
    fn the_slot_a_plt_entry_jumps_through() {
        // endbr64; bnd jmp *0x2ff2(%rip)
        let entry = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0xf2, 0x2f, 0x00, 0x00,
        ];
        assert_eq!(super::jump_slot(&entry, 0x1000), Some(0x1000 + 11 + 0x2ff2));
        // jmp *0x1ace82(%rip), as in glibc 2.36's *ABS*+0x9c840@plt
        let entry = [0xff, 0x25, 0x82, 0xce, 0x1a, 0x00];
        assert_eq!(super::jump_slot(&entry, 0x262e0), Some(0x1d3168));
        // a direct jmp is no PLT entry
        assert_eq!(super::jump_slot(&[0xeb, 0x00], 0x1000), None);
    }

    #[test]
    fn a_path_into_a_call_that_never_returns_needs_nothing() {
        //  0: push %rbx; mov (%rdi),%rax; test $0xf,%al; 6: jne 12; movq $0,8(%rax)
        //  pop %rbx; ret; 12: mov $1,%edi; call die
        //  die: and $1,%edi; test %edi,%edi; jne 24; ret; 24: hlt
        let mut image = [
            0x53, 0x48, 0x8b, 0x07, 0xa8, 0x0f, 0x75, 0x0a, 0x48, 0xc7, 0x40, 0x08, 0x00, 0x00,
            0x00, 0x00, 0x5b, 0xc3, 0xbf, 0x01, 0x00, 0x00, 0x00, 0xe8, 0x00, 0x00, 0x00, 0x00,
            0x83, 0xe7, 0x01, 0x85, 0xff, 0x75, 0x01, 0xc3, 0xf4,
        ];
        // die(1) never returns (its argument decides): the jne is the point.
        assert_eq!(points(&image, 0x1c), Ok(vec![(0x6, 8)]));
        // die(0) returns: the path would run on past the function.
        image[0x13] = 0;
        assert!(points(&image, 0x1c).is_err());
    }

    #[test]
    fn a_result_returned_past_every_emulated_instruction_is_not_sure() {
        //  0: push %rbx; call g; test %rax,%rax; jne 10; call h; 10: pop %rbx; ret
        let image = [
            0x53, 0xe8, 0x0c, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x75, 0x05, 0xe8, 0x06, 0x00,
            0x00, 0x00, 0x5b, 0xc3, 0x48, 0x89, 0xf8, 0xc3, 0x48, 0x89, 0xf0, 0xc3,
        ];
        assert!(points(&image, 0x12).is_err());
    }
}
