//! One trap per call: where a function's result is final in rax.
//!
//! The function's code is explored from its entry by abstract interpretation, each (instruction,
//! state) pair once. The state is what is known of the registers (a constant; "what the
//! instruction at X last wrote to rax", one label per instruction; or nothing), of the 8-byte
//! stack slots the function wrote (by offset from the stack pointer at entry), and which register
//! the zero flag tests. Both ways of a `jcc` are followed unless the zero flag decides one; after
//! `test %rax,%rax` the zero side knows rax is 0. A call clobbers the caller-saved registers and
//! gives rax a new value; a call to a function that provably never returns (no `ret` reachable in
//! it, given the constant arguments it gets: glibc's `malloc_printerr`, `__libc_message(do_abort,
//! ...)`) ends the path. A jump out of the function (a tail call) or an indirect jump: not sure.
//!
//! Points are then chosen for each value a `ret` can return (each "definition": the call or load
//! that produced it) among the emulated instructions that every path from the definition to a
//! `ret` passes, after which that value stays in rax to the `ret` on every path (it may sit in a
//! callee-saved register or a stack slot across a call meanwhile) and that are on no cycle. A
//! path on which the value is known to be 0 needs no point (the probe reports nothing for a zero
//! rax): that is why the `jcc` just after `test %rax,%rax` qualifies although the null side may
//! go on to retry. Where the paths of two definitions merge before their first such instruction,
//! both take a later one they share.
//!
//! The choice is then proven by exploring again with the probes in place: on every path from the
//! entry to a `ret`, rax at the `ret` must be the value the one probe that reported on that path
//! saw, or 0 with no probe having reported; no path may report twice. Any doubt while exploring
//! or choosing: not sure, and the caller keeps its return probe.
use std::collections::{HashMap, HashSet};

use super::explore::{Analysis, Exit, Node};
use super::is_emulated;
use super::register::Register;
use super::state::Value;
use crate::trace::place::{ResultPoint, Unsure};

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
                if nodes[m].state.registers[Register::Rax] != Value::Def(label) {
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
        .filter(|&m| nodes[m].state.registers[Register::Rax] == Value::Def(label))
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
        if nodes[n].exit == Some(Exit::Return)
            && nodes[n].state.registers[Register::Rax] == Value::Def(label)
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
        return Err(Unsure::SizeUnknown);
    }
    let mut analysis = Analysis::new(code, returns_first_argument);
    let end = address + size;
    let nodes = analysis.explore(address, end, &HashSet::new())?;
    let points = choose(&mut analysis, &nodes, address)?;
    // The proof: every path, with the probes in place.
    let proven = analysis.explore(address, end, &points)?;
    let cyclic = cyclic(&proven);
    let mut placed = Vec::new();
    for &ip in &points {
        if cyclic.contains(&ip) {
            return Err(Unsure::PointOnCycle {
                offset: ip - address,
            });
        }
        let mut depths = proven.iter().filter(|n| n.ip == ip).map(|n| n.state.rsp);
        let first = depths.next().flatten();
        match first {
            Some(sp) if sp <= 0 && depths.all(|d| d == first) => placed.push(ResultPoint {
                offset: ip - address,
                depth: sp.unsigned_abs(),
            }),
            _ => {
                return Err(Unsure::StackUnknown {
                    offset: ip - address,
                });
            }
        }
    }
    placed.sort_by_key(|p| p.offset);
    Ok(placed)
}

/// The points: for each value returned, the first emulated instruction every path of it
/// passes on its way to a `ret`, with it final in rax (later where paths merge).
fn choose(analysis: &mut Analysis, nodes: &[Node], start: u64) -> Result<HashSet<u64>, Unsure> {
    let mut results = Vec::new();
    for node in nodes.iter().filter(|n| n.exit == Some(Exit::Return)) {
        match node.state.registers[Register::Rax] {
            Value::Def(label) => results.push(label),
            Value::Const(0) => {}
            _ => {
                return Err(Unsure::UntracedReturn {
                    offset: node.ip - start,
                });
            }
        }
    }
    results.sort_unstable();
    results.dedup();
    if results.is_empty() {
        return Err(Unsure::NoResult);
    }
    let mut at: HashMap<u64, Vec<usize>> = HashMap::new();
    for (n, node) in nodes.iter().enumerate() {
        at.entry(node.ip).or_default().push(n);
    }
    let cyclic = cyclic(nodes);
    let mut candidates: Vec<u64> = Vec::new();
    for (&ip, here) in &at {
        if cyclic.contains(&ip) || !is_emulated(&analysis.decode(ip)?) {
            continue;
        }
        let fits = here
            .iter()
            .all(|&n| match nodes[n].state.registers[Register::Rax] {
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
            return Err(Unsure::NoPoint {
                result: label - start,
            });
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
                        .any(|&n| nodes[n].state.registers[Register::Rax] == Value::Def(label))
            });
            if conflict {
                choice[i] += 1;
                if choice[i] == chains[i].len() {
                    return Err(Unsure::NoSharedPoint {
                        result: label - start,
                    });
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

#[cfg(test)]
mod tests {
    //! Hand-assembled functions (GNU as), `f` first, then what it calls.
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
        let mut analysis = super::Analysis::new(&code, &|_| false);
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
        let ret = BASE + 0x14;
        assert_eq!(
            proof(&image, 0x15, &[0xb]),
            Err(Unsure::ReturnPassesNoPoint { at: ret })
        );
        assert_eq!(proof(&image, 0x15, &[0x0]), Err(Unsure::NoResultAtPoint));
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
        assert_eq!(proof(&image, 0x1d, &[0xb, 0x15]), Err(Unsure::TwoPoints));
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
        assert_eq!(
            proof(&image, 0x16, &[0x9]),
            Err(Unsure::ReturnsOtherThanReported { at: BASE + 0x15 })
        );
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
        // g's result, defined by the call at 7, is final only in the loop.
        assert_eq!(points(&image, 0x13), Err(Unsure::NoPoint { result: 0x7 }));
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
        let jump_out = Err(Unsure::JumpOut { at: BASE + 0xf });
        assert_eq!(points(&image, 0x13), jump_out);
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
        assert_eq!(points_knowing(&other, 0x13, &|at| at == h), jump_out);
        let mut deeper = image;
        deeper[0xb] = 0x90;
        assert_eq!(points_knowing(&deeper, 0x13, &|at| at == h), jump_out);
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
        assert_eq!(points(&image, 0x1c), Err(Unsure::PastTheEnd));
    }

    #[test]
    fn a_result_returned_past_every_emulated_instruction_is_not_sure() {
        //  0: push %rbx; call g; test %rax,%rax; jne 10; call h; 10: pop %rbx; ret
        let image = [
            0x53, 0xe8, 0x0c, 0x00, 0x00, 0x00, 0x48, 0x85, 0xc0, 0x75, 0x05, 0xe8, 0x06, 0x00,
            0x00, 0x00, 0x5b, 0xc3, 0x48, 0x89, 0xf8, 0xc3, 0x48, 0x89, 0xf0, 0xc3,
        ];
        // h's result, defined by the call at b, meets no emulated instruction before the ret.
        assert_eq!(points(&image, 0x12), Err(Unsure::NoPoint { result: 0xb }));
    }
}
