//! The abstract interpretation: the function's code explored from its entry, each
//! (instruction, state) pair once, both ways of a `jcc` followed unless the zero flag decides
//! one; and whether a callee, given the constant arguments it gets, may return at all.
use std::collections::{HashMap, HashSet};

use iced_x86::{ConditionCode, Decoder, DecoderOptions, FlowControl, Instruction};
use iced_x86::{InstructionInfoFactory, Mnemonic};

use super::effects::effects;
use super::is_near_branch;
use super::register::{ARGUMENTS, CALLER_SAVED, Register};
use super::state::{Reported, State, Value, mask};
use crate::trace::place::Unsure;

/// The (instruction, state) pairs one exploration of the function may visit.
const MAX_STATES: usize = 100_000;
/// ...and of a callee, asked whether it returns (beyond: it may).
const MAX_CALLEE_STATES: usize = 20_000;
/// How many calls deep that question is followed (beyond: it may return).
const MAX_CALL_DEPTH: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exit {
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

impl Mode<'_> {
    /// Whether a jump to `target` leaves the function analysed (a callee's bounds are not
    /// known: never).
    fn leaves(&self, target: u64) -> bool {
        matches!(*self, Mode::Function { start, end, .. } if target < start || target >= end)
    }
}

pub(super) struct Node {
    pub(super) ip: u64,
    pub(super) state: State,
    /// The nodes it leads to, each with the label of the value known to be 0 on the way.
    pub(super) edges: Vec<(usize, Option<u64>)>,
    pub(super) exit: Option<Exit>,
}

/// A callee's address and the constant arguments (rdi, rsi, rdx, rcx, r8, r9) it is called with.
type CalleeWith = (u64, [Option<u64>; 6]);

pub(super) struct Analysis<'a, 'c> {
    code: &'c dyn Fn(u64) -> &'a [u8],
    /// Whether the function at an address returns its first argument (memset, memcpy...).
    returns_first_argument: &'c dyn Fn(u64) -> bool,
    /// Each instruction decoded, by address (one is met once per state that reaches it).
    decoded: HashMap<u64, Instruction>,
    info: InstructionInfoFactory,
    /// Whether a callee, entered with these constant arguments, may return.
    may_return: HashMap<CalleeWith, bool>,
    /// The callees being asked that (one met again is a recursion: it may).
    asking: HashSet<CalleeWith>,
}

impl<'a, 'c> Analysis<'a, 'c> {
    pub(super) fn new(
        code: &'c dyn Fn(u64) -> &'a [u8],
        returns_first_argument: &'c dyn Fn(u64) -> bool,
    ) -> Self {
        Analysis {
            code,
            returns_first_argument,
            decoded: HashMap::new(),
            info: InstructionInfoFactory::new(),
            may_return: HashMap::new(),
            asking: HashSet::new(),
        }
    }

    pub(super) fn decode(&mut self, ip: u64) -> Result<Instruction, Unsure> {
        if let Some(instruction) = self.decoded.get(&ip) {
            return Ok(*instruction);
        }
        let mut decoder = Decoder::with_ip(64, (self.code)(ip), ip, DecoderOptions::NONE);
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return Err(Unsure::Undecodable { at: ip });
        }
        self.decoded.insert(ip, instruction);
        Ok(instruction)
    }

    /// What running the instruction at `ip` in `state` leads to.
    fn step(&mut self, ip: u64, state: &State, mode: &Mode) -> Result<Step, Unsure> {
        let instruction = self.decode(ip)?;
        let next = instruction.next_ip();
        let level = match *mode {
            Mode::Function { start, end, .. } if ip < start || next > end => {
                return Err(Unsure::PastTheEnd);
            }
            Mode::Function { .. } => 0,
            Mode::Callee { level } => level,
        };
        let inside = |target: u64| {
            if mode.leaves(target) {
                Err(Unsure::JumpOut { at: ip })
            } else {
                Ok(target)
            }
        };
        // Where a path may go on anywhere: in the function, not sure; in a callee, it may return.
        let anywhere = |why: Unsure, state: State| match mode {
            Mode::Function { .. } => Err(why),
            Mode::Callee { .. } => Ok(Step::Exit(Exit::Return, Box::new(state))),
        };
        let mut state = state.clone();
        if let Mode::Function { points, .. } = mode
            && points.contains(&ip)
        {
            state.report()?;
        }
        let relative = is_near_branch(&instruction);
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
                state.registers[Register::Rcx] = Value::Unknown;
                state.registers[Register::R11] = Value::Unknown;
                state.zf = None;
                return Ok(Step::Next(vec![along(next, state)]));
            }
            _ => {}
        }
        match instruction.flow_control() {
            FlowControl::Return => Ok(Step::Exit(Exit::Return, Box::new(state))),
            FlowControl::Next => {
                effects(&mut self.info, &instruction, &mut state, ip);
                Ok(Step::Next(vec![along(next, state)]))
            }
            FlowControl::UnconditionalBranch if relative => {
                let target = instruction.near_branch_target();
                // calloc's `return memset (mem, 0, n)`: a tail call of a function that returns
                // its first argument is a return of rdi, here already in rax.
                if mode.leaves(target)
                    && state.rsp == Some(0)
                    && state.registers[Register::Rdi] == state.registers[Register::Rax]
                    && (self.returns_first_argument)(target)
                {
                    return Ok(Step::Exit(Exit::Return, Box::new(state)));
                }
                let target = inside(target)?;
                Ok(Step::Next(vec![along(target, state)]))
            }
            FlowControl::ConditionalBranch if relative => {
                let target = inside(instruction.near_branch_target())?;
                effects(&mut self.info, &instruction, &mut state, ip);
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
            FlowControl::IndirectBranch => anywhere(Unsure::IndirectJump { at: ip }, state),
            _ => anywhere(Unsure::OffTheStraightLine { at: ip }, state),
        }
    }

    /// Whether the function at `target`, called in `state`, provably never returns.
    fn never_returns(&mut self, target: u64, state: &State, level: usize) -> bool {
        if level >= MAX_CALL_DEPTH {
            return false;
        }
        let arguments = ARGUMENTS.map(|r| match state.registers[r] {
            Value::Const(c) => Some(c),
            _ => None,
        });
        let key = (target, arguments);
        if let Some(&may) = self.may_return.get(&key) {
            return !may;
        }
        if !self.asking.insert(key) {
            return false; // recursion: assume it may
        }
        let may = self.callee_may_return(target, State::callee(arguments), level + 1);
        self.asking.remove(&key);
        self.may_return.insert(key, may);
        !may
    }

    fn callee_may_return(&mut self, entry: u64, state: State, level: usize) -> bool {
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
    pub(super) fn explore(
        &mut self,
        start: u64,
        end: u64,
        points: &HashSet<u64>,
    ) -> Result<Vec<Node>, Unsure> {
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
                return Err(Unsure::TooManyPaths);
            }
            match self.step(nodes[n].ip, &nodes[n].state, &mode)? {
                Step::Exit(exit, state) => {
                    if exit == Exit::Return {
                        if state.rsp != Some(0) {
                            return Err(Unsure::StackMovedAtReturn { at: nodes[n].ip });
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
}

/// At a `ret`: rax must be what the path's one probe reported, or 0 if none reported.
fn check_return(state: &State, ip: u64) -> Result<(), Unsure> {
    match (state.reported, state.registers[Register::Rax]) {
        (Reported::Value(label), Value::Def(returned)) if label == returned => Ok(()),
        (Reported::Nothing, Value::Const(0)) => Ok(()),
        (Reported::Nothing, _) => Err(Unsure::ReturnPassesNoPoint { at: ip }),
        _ => Err(Unsure::ReturnsOtherThanReported { at: ip }),
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
