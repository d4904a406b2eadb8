//! `cargo xtask layers`: the crate's modules import one another in one direction.
//!
//! Two rules, checked on `pagealloc/src` before the tests run:
//! - no import cycle, neither between the files of a folder nor between the top-level modules
//!   (a folder's `mod.rs` and the files below it are one module to the folders around it, and a
//!   file's references to its own ancestors or descendants are not counted: Rust declares and
//!   re-exports them there);
//! - the outputs never import a source or the session: data flows sources → state → outputs.
//!
//! References are read with `syn`: every `use` tree and every path rooted at `crate`, `super` or
//! `self`, resolved to the deepest module file it names.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use syn::visit::Visit;

/// The crate checked, from the workspace root.
pub const SOURCE: &str = "pagealloc/src";

/// The output modules, and the modules they must not import.
const OUTPUTS: &[&str] = &["render", "metrics", "pprof", "web"];
const SOURCES: &[&str] = &[
    "proc",
    "glibc",
    "debuginfo",
    "trace",
    "stacks",
    "session",
    "live",
    "monitor",
];

/// A module's path from the crate root (`["glibc", "walker"]`).
type Module = Vec<String>;

pub fn check(src: &Path) -> Result<()> {
    let files = module_files(src)?;
    let known: BTreeSet<Module> = files.keys().cloned().collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, path) in &files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file = syn::parse_file(&text).with_context(|| format!("parsing {}", path.display()))?;
        let mut refs = References {
            file_module: module.clone(),
            inline: Vec::new(),
            found: BTreeSet::new(),
        };
        refs.visit_file(&file);
        for target in refs.found {
            let Some(target) = deepest_known(&known, &target) else {
                continue;
            };
            let related = target.starts_with(module) || module.starts_with(&target);
            if !related {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    let problems = problems(&edges);
    if problems.is_empty() {
        println!(
            "layers: {} modules, {} imports between them, no cycle, outputs import no source",
            files.len(),
            edges.values().map(BTreeSet::len).sum::<usize>()
        );
        return Ok(());
    }
    for problem in &problems {
        eprintln!("layers: {problem}");
    }
    bail!("{} layering problems in {}", problems.len(), src.display())
}

/// Every cycle and every forbidden import, said in a line each.
fn problems(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let mut problems = Vec::new();
    // Between the files of one folder: files whose parent is that folder, by their own name.
    let mut by_folder: BTreeMap<Module, Graph> = BTreeMap::new();
    // Between top-level modules.
    let mut top = Graph::new();
    for (from, targets) in edges {
        for to in targets {
            let shared = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            // Neither is the other's ancestor: both go deeper than what they share.
            let (a, b) = (&from[..=shared], &to[..=shared]);
            if shared == 0 {
                top.entry(name(a)).or_default().insert(name(b));
            } else {
                by_folder
                    .entry(from[..shared].to_vec())
                    .or_default()
                    .entry(name(a))
                    .or_default()
                    .insert(name(b));
            }
            let (from_top, to_top) = (from[0].as_str(), to[0].as_str());
            if OUTPUTS.contains(&from_top) && SOURCES.contains(&to_top) {
                problems.push(format!(
                    "{} (an output) imports {} (a source or the session)",
                    name(from),
                    name(to)
                ));
            }
        }
    }
    let said = |(cycle, part): (Vec<String>, Vec<String>)| {
        format!("{} (all of: {})", cycle.join(" → "), part.join(", "))
    };
    for cycle in cycles(&top) {
        problems.push(format!("import cycle between modules: {}", said(cycle)));
    }
    for (folder, graph) in &by_folder {
        for cycle in cycles(graph) {
            problems.push(format!(
                "import cycle in {}/: {}",
                folder.join("/"),
                said(cycle)
            ));
        }
    }
    problems
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn name(module: &[String]) -> String {
    module.join("/")
}

/// The strongly connected parts of more than one node (Tarjan): a path around each, and all its
/// nodes.
fn cycles(graph: &Graph) -> Vec<(Vec<String>, Vec<String>)> {
    struct Search<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<(Vec<String>, Vec<String>)>,
    }
    impl<'g> Search<'g> {
        fn visit(&mut self, node: &'g str) {
            let index = self.index.len();
            self.index.insert(node, index);
            self.low.insert(node, index);
            self.stack.push(node);
            for next in self.graph.get(node).into_iter().flatten() {
                if !self.index.contains_key(next.as_str()) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next.as_str()]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next.as_str()) {
                    let low = self.low[node].min(self.index[next.as_str()]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self.stack.iter().rposition(|n| *n == node).unwrap_or(0);
                let part: BTreeSet<&str> = self.stack.drain(at..).collect();
                if part.len() > 1 {
                    let nodes = part.iter().map(|n| n.to_string()).collect();
                    self.found.push((around(self.graph, &part), nodes));
                }
            }
        }
    }
    let mut search = Search {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !search.index.contains_key(node.as_str()) {
            search.visit(node);
        }
    }
    search.found
}

/// A path from the part's first node back to itself through the part (there is one: it is
/// strongly connected), found breadth first so that it is short.
fn around(graph: &Graph, part: &BTreeSet<&str>) -> Vec<String> {
    let start = *part.iter().next().expect("a part has nodes");
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for next in graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !part.contains(next) {
                continue;
            }
            if next == start {
                let mut path = vec![node];
                while let Some(&before) = came_from.get(path[path.len() - 1]) {
                    path.push(before);
                }
                path.reverse();
                path.push(start);
                return path.into_iter().map(str::to_string).collect();
            }
            if !came_from.contains_key(next) {
                came_from.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    part.iter().map(|n| n.to_string()).collect()
}

/// The deepest module of `known` that `path` names (a path may end in an item, or in a
/// module's child item of any depth).
fn deepest_known(known: &BTreeSet<Module>, path: &[String]) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| known.contains(prefix))
}

/// Every `.rs` file under `src` by its module path (the crate roots `lib.rs` and `main.rs` are
/// left out: they declare the modules).
fn module_files(src: &Path) -> Result<BTreeMap<Module, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut folders = vec![src.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let entries =
            std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src)?.with_extension("");
            let mut module: Module = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if module.last().is_some_and(|last| last == "mod") {
                module.pop();
            }
            if module == ["lib"] || module == ["main"] {
                continue;
            }
            files.insert(module, path);
        }
    }
    Ok(files)
}

/// The module paths one file refers to, resolved from the crate root.
struct References {
    file_module: Module,
    /// Inline modules (`mod tests { ... }`) entered so far.
    inline: Vec<String>,
    found: BTreeSet<Module>,
}

impl References {
    /// `segments` (as written) resolved from the crate root, if rooted at `crate`, `super` or
    /// `self`.
    fn resolve(&self, segments: &[String]) -> Option<Module> {
        let mut here: Module = self.file_module.clone();
        here.extend(self.inline.iter().cloned());
        let mut rest = segments;
        match rest.first()?.as_str() {
            "crate" => {
                here.clear();
                rest = &rest[1..];
            }
            "self" | "super" => {
                while let Some(first) = rest.first() {
                    match first.as_str() {
                        "self" => {}
                        "super" => {
                            here.pop()?;
                        }
                        _ => break,
                    }
                    rest = &rest[1..];
                }
            }
            _ => return None,
        }
        here.extend(rest.iter().cloned());
        Some(here)
    }

    fn add(&mut self, segments: &[String]) {
        if let Some(module) = self.resolve(segments) {
            self.found.insert(module);
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                prefix.push(name.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(rename) => {
                prefix.push(rename.ident.to_string());
                self.add(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.add(prefix),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for References {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        self.inline.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.inline.pop();
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.add(&segments);
        syn::visit::visit_path(self, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempdir::Dir {
        let dir = tempdir::Dir::new();
        for (path, text) in files {
            let path = dir.0.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let path = std::env::temp_dir().join(format!(
                    "pagealloc-layers-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let _ = std::fs::remove_dir_all(&path);
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn a_clean_tree_passes() {
        let dir = tree(&[
            ("lib.rs", "pub mod a; pub mod b;"),
            ("a/mod.rs", "mod x; mod y; pub use x::X; use super::b::B;"),
            ("a/x.rs", "use super::y::Y; pub struct X;"),
            ("a/y.rs", "pub struct Y; fn f() -> super::X { todo!() }"),
            ("b.rs", "pub struct B;"),
        ]);
        check(&dir.0).unwrap();
    }

    #[test]
    fn cycles_between_modules_and_between_files_are_found() {
        let dir = tree(&[
            ("a/mod.rs", "mod x; mod y;"),
            ("a/x.rs", "use super::y::Y; pub struct X;"),
            (
                "a/y.rs",
                "pub struct Y; fn f() -> crate::a::x::X { todo!() }",
            ),
            ("b.rs", "use crate::{c::C};"),
            ("c/mod.rs", "mod d;"),
            ("c/d.rs", "fn f() { let _ = crate::b::B; }"),
        ]);
        let files = module_files(&dir.0).unwrap();
        assert_eq!(files.len(), 6);
        let error = check(&dir.0).unwrap_err().to_string();
        assert!(error.starts_with("2 layering problems"), "{error}");
    }

    #[test]
    fn an_output_importing_a_source_is_found() {
        let dir = tree(&[
            ("render/mod.rs", "use crate::trace::Placed;"),
            ("trace.rs", ""),
        ]);
        let error = check(&dir.0).unwrap_err().to_string();
        assert!(error.starts_with("1 layering problems"), "{error}");
    }
}
