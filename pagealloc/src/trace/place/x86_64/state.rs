//! What the analysis knows at an instruction: the registers, the stack slots the function
//! wrote, what the zero flag tests, and what the probes passed so far reported.
use super::register::{ARGUMENTS, Register, Registers};
use crate::trace::place::Unsure;

/// The low `bytes` bytes of a value.
pub(super) fn mask(bytes: usize) -> u64 {
    if bytes >= 8 {
        u64::MAX
    } else {
        (1u64 << (bytes * 8)) - 1
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Value {
    Unknown,
    Const(u64),
    /// What the instruction at this address last wrote to rax.
    Def(u64),
}

/// What the probes passed on the path so far reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Reported {
    Nothing,
    /// This value (of rax).
    Value(u64),
    /// A value the same instruction has since overwritten (in a loop): lost.
    Stale,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct State {
    pub(super) registers: Registers<Value>,
    /// 8-byte stack slots by offset from the stack pointer at entry, sorted; absent: unknown.
    pub(super) slots: Vec<(i64, Value)>,
    /// The stack pointer's offset from its value at entry.
    pub(super) rsp: Option<i64>,
    /// The stack's address was given away (slots are no longer tracked: a callee could write
    /// them).
    pub(super) escaped: bool,
    /// (register, bytes): the zero flag is set iff those low bytes of the register are 0.
    pub(super) zf: Option<(Register, usize)>,
    pub(super) reported: Reported,
}

impl State {
    pub(super) fn entry() -> State {
        State {
            registers: Registers::all(Value::Unknown),
            slots: Vec::new(),
            rsp: Some(0),
            escaped: false,
            zf: None,
            reported: Reported::Nothing,
        }
    }

    /// A callee entered with these constant arguments (its stack is not tracked).
    pub(super) fn callee(arguments: [Option<u64>; 6]) -> State {
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
    pub(super) fn write(&mut self, register: Register, value: Value, ip: u64) {
        if register == Register::Rax && value == Value::Unknown {
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
    pub(super) fn define(&mut self, ip: u64) {
        self.forget(ip);
        self.registers[Register::Rax] = Value::Def(ip);
    }

    pub(super) fn forget(&mut self, label: u64) {
        self.registers.replace(Value::Def(label), Value::Unknown);
        self.slots.retain(|&(_, value)| value != Value::Def(label));
        if self.reported == Reported::Value(label) {
            self.reported = Reported::Stale;
        }
    }

    /// The value labelled `label` is 0 (a probe that saw it reported nothing).
    pub(super) fn known_zero(&mut self, label: u64) {
        self.registers.replace(Value::Def(label), Value::Const(0));
        for (_, value) in &mut self.slots {
            if *value == Value::Def(label) {
                *value = Value::Const(0);
            }
        }
        if self.reported == Reported::Value(label) {
            self.reported = Reported::Nothing;
        }
    }

    pub(super) fn holds(&self, label: u64) -> bool {
        self.registers.contains(Value::Def(label))
            || self.slots.iter().any(|&(_, v)| v == Value::Def(label))
    }

    pub(super) fn slot(&self, offset: i64) -> Value {
        self.slots
            .iter()
            .find(|&&(at, _)| at == offset)
            .map_or(Value::Unknown, |&(_, value)| value)
    }

    /// Bytes [offset, offset + bytes) of the stack are written with something unknown.
    pub(super) fn clobber(&mut self, offset: i64, bytes: i64) {
        self.slots
            .retain(|&(at, _)| at + 8 <= offset || at >= offset + bytes);
    }

    pub(super) fn store(&mut self, offset: i64, value: Value) {
        self.clobber(offset, 8);
        if value != Value::Unknown && !self.escaped {
            let at = self.slots.partition_point(|&(at, _)| at < offset);
            self.slots.insert(at, (offset, value));
        }
    }

    /// A probe here reports rax (before the instruction runs).
    pub(super) fn report(&mut self) -> Result<(), Unsure> {
        match self.registers[Register::Rax] {
            Value::Const(0) => Ok(()),
            Value::Def(label) if self.reported == Reported::Nothing => {
                self.reported = Reported::Value(label);
                Ok(())
            }
            Value::Def(_) => Err(Unsure::TwoPoints),
            _ => Err(Unsure::NoResultAtPoint),
        }
    }
}
