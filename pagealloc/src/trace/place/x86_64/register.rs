//! The general-purpose registers, as the analysis tracks them, and the System V ABI's sets.
use std::ops::{Index, IndexMut};

/// A 64-bit general-purpose register (its narrower parts are it too), in encoding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Register {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
}

use Register::*;

/// Clobbered by a call; rbx, rbp and r12 to r15 survive it.
pub(super) const CALLER_SAVED: [Register; 9] = [Rax, Rcx, Rdx, Rsi, Rdi, R8, R9, R10, R11];
/// The integer arguments, in order.
pub(super) const ARGUMENTS: [Register; 6] = [Rdi, Rsi, Rdx, Rcx, R8, R9];

impl Register {
    const ALL: [Register; 16] = [
        Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi, R8, R9, R10, R11, R12, R13, R14, R15,
    ];

    /// The general-purpose register `register` is part of (eax, ax and al are rax).
    pub(super) fn of(register: iced_x86::Register) -> Option<Register> {
        let full = register.full_register();
        full.is_gpr64()
            .then(|| Register::ALL[full as usize - iced_x86::Register::RAX as usize])
    }
}

/// A `T` for each register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Registers<T>([T; 16]);

impl<T: Copy + PartialEq> Registers<T> {
    pub(super) fn all(value: T) -> Self {
        Registers([value; 16])
    }

    pub(super) fn contains(&self, value: T) -> bool {
        self.0.contains(&value)
    }

    /// Every register holding `from` gets `to`.
    pub(super) fn replace(&mut self, from: T, to: T) {
        for value in &mut self.0 {
            if *value == from {
                *value = to;
            }
        }
    }
}

impl<T> Index<Register> for Registers<T> {
    type Output = T;
    fn index(&self, register: Register) -> &T {
        &self.0[register as usize]
    }
}

impl<T> IndexMut<Register> for Registers<T> {
    fn index_mut(&mut self, register: Register) -> &mut T {
        &mut self.0[register as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::Register;
    use iced_x86::Register as Iced;

    #[test]
    fn each_part_of_a_register_is_it() {
        assert_eq!(Register::of(Iced::RAX), Some(Register::Rax));
        assert_eq!(Register::of(Iced::AL), Some(Register::Rax));
        assert_eq!(Register::of(Iced::ESP), Some(Register::Rsp));
        assert_eq!(Register::of(Iced::DIL), Some(Register::Rdi));
        assert_eq!(Register::of(Iced::R11D), Some(Register::R11));
        assert_eq!(Register::of(Iced::R15W), Some(Register::R15));
        assert_eq!(Register::of(Iced::XMM0), None);
        assert_eq!(Register::of(Iced::RIP), None);
    }
}
