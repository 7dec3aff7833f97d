//! The module graph of each crate, and its cycles.
//!
//! A crate's top-level modules (`src/x.rs`, `src/x/`) must form a layered,
//! acyclic graph, so that each can be read, tested and changed with only the
//! modules below it in mind. An edge `a → b` is any path from `a` into `b`:
//! `crate::b::…`, `crate::{b::…}`, `super::…` climbing to the crate root,
//! in code and in macro calls alike. Doc links are not edges: they point
//! the reader elsewhere, they do not make code depend. Test-only code
//! (`#[cfg(test)]`) may reach anywhere and is not counted. The crate root
//! (lib.rs, main.rs) declares the modules and is not a node.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;

/// The source directories of every crate of the project, the kernel
/// programs included.
pub const CRATES: &[&str] = &[
    "ebpf/abi",
    "ebpf/programs",
    "ebpf/toolchain",
    "userspace/k8s",
    "userspace/planner",
    "userspace/routes",
    "userspace/telemetry",
    "userspace/waypoint",
    "userspace/zerohop",
    "tests/apiserver",
    "tests/sandbox",
    "tests/suites",
    "tests/workloads",
    "xtask",
];

/// Module name → the modules it refers to.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every cycle of every crate, as "crate: a → b → … → a" lines.
pub fn workspace_cycles(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for krate in CRATES {
        let graph = module_graph(&root.join(krate).join("src"))?;
        for cycle in cycles(&graph) {
            found.push(format!("{krate}: {}", describe(&graph, &cycle)));
        }
    }
    Ok(found)
}

/// The graph of the top-level modules under `src`.
pub fn module_graph(src: &Path) -> Result<Graph> {
    let mut graph = Graph::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let module = stem.to_owned();
        let files = if path.is_dir() {
            if module == "bin" {
                continue; // separate binary crates
            }
            rust_files(&path)?
        } else if path.extension().is_some_and(|e| e == "rs") && !matches!(stem, "lib" | "main") {
            vec![path.clone()]
        } else {
            continue;
        };
        let mut refers = BTreeSet::new();
        for file in files {
            let depth = module_depth(src, &file);
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut syntax =
                syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
            drop_test_items(&mut syntax.items);
            collect(syntax.into_token_stream(), depth, &mut refers);
        }
        refers.remove(&module);
        graph.entry(module).or_default().extend(refers);
    }
    // Names that are not modules of this crate (a `crate::` path to an
    // item of the root) are not edges.
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for refers in graph.values_mut() {
        refers.retain(|name| modules.contains(name));
    }
    Ok(graph)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(files)
}

/// How deep the file's module is below the crate root: `x.rs` and
/// `x/mod.rs` are 1, `x/y.rs` is 2.
fn module_depth(src: &Path, file: &Path) -> usize {
    let relative = file.strip_prefix(src).unwrap_or(file);
    let parts = relative.components().count();
    if file.file_name().is_some_and(|name| name == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// Removes items compiled only for tests, in inline modules too.
fn drop_test_items(items: &mut Vec<syn::Item>) {
    items.retain(|item| !test_only(item_attrs(item)));
    for item in items {
        if let syn::Item::Mod(syn::ItemMod {
            content: Some((_, inner)),
            ..
        }) = item
        {
            drop_test_items(inner);
        }
    }
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item;
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// `#[cfg(test)]` or `#[cfg(all(test, …))]`.
fn test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        let syn::Meta::List(list) = &attr.meta else {
            return false;
        };
        let predicate: String = list.tokens.to_string().split_whitespace().collect();
        attr.path().is_ident("cfg") && (predicate == "test" || predicate.starts_with("all(test,"))
    })
}

/// Adds to `out` the top-level modules the tokens refer to, for code whose
/// module is `depth` below the crate root.
fn collect(tokens: TokenStream, depth: usize, out: &mut BTreeSet<String>) {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            TokenTree::Ident(ident) if ident == "crate" => {
                named_after(&tokens, i + 1, out);
            }
            TokenTree::Ident(ident) if ident == "super" => {
                // Count `super ::` hops; only enough of them leave the
                // module for the crate root.
                let mut hops = 1;
                let mut next = i + 1;
                while is_path_sep(&tokens, next)
                    && matches!(tokens.get(next + 2), Some(TokenTree::Ident(s)) if s == "super")
                {
                    hops += 1;
                    next += 3;
                }
                if hops >= depth {
                    named_after(&tokens, next, out);
                }
                i = next;
                continue;
            }
            TokenTree::Ident(ident) if ident == "mod" => {
                if let (Some(TokenTree::Ident(_)), Some(TokenTree::Group(body))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    if body.delimiter() == Delimiter::Brace {
                        collect(body.stream(), depth + 1, out);
                        i += 3;
                        continue;
                    }
                }
            }
            TokenTree::Group(group) => collect(group.stream(), depth, out),
            _ => {}
        }
        i += 1;
    }
}

fn is_path_sep(tokens: &[TokenTree], at: usize) -> bool {
    matches!(
        (tokens.get(at), tokens.get(at + 1)),
        (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':'
    )
}

/// The module named by the path that continues at `at` (`:: name` or
/// `:: { a, b::c }`), from the crate root.
fn named_after(tokens: &[TokenTree], at: usize, out: &mut BTreeSet<String>) {
    if !is_path_sep(tokens, at) {
        return;
    }
    match tokens.get(at + 2) {
        Some(TokenTree::Ident(name)) => {
            out.insert(name.to_string());
        }
        Some(TokenTree::Group(group)) if group.delimiter() == Delimiter::Brace => {
            let mut first = true;
            for token in group.stream() {
                match token {
                    TokenTree::Punct(p) if p.as_char() == ',' => first = true,
                    TokenTree::Ident(name) if first => {
                        out.insert(name.to_string());
                        first = false;
                    }
                    _ => first = false,
                }
            }
        }
        _ => {}
    }
}

/// The strongly connected components of more than one module, each sorted,
/// in name order (Tarjan's algorithm).
pub fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, node: &'a str) {
            let index = self.index.len();
            self.index.insert(node, index);
            self.low.insert(node, index);
            self.stack.push(node);
            for next in self.graph.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self.stack.iter().rposition(|n| *n == node).unwrap();
                let mut component: Vec<String> =
                    self.stack.drain(at..).map(str::to_owned).collect();
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found.sort();
    walk.found
}

/// The edges inside one cycle, e.g. "a → b, b → a".
fn describe(graph: &Graph, cycle: &[String]) -> String {
    let mut edges = Vec::new();
    for from in cycle {
        for to in &graph[from] {
            if cycle.contains(to) {
                edges.push(format!("{from} → {to}"));
            }
        }
    }
    edges.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate laid out from (path, source) pairs in a fresh directory.
    struct Crate(PathBuf);

    impl Crate {
        fn new(files: &[(&str, &str)]) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "zh-modgraph-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            for (path, source) in files {
                let file = dir.join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, source).unwrap();
            }
            Crate(dir)
        }

        fn graph(&self) -> Graph {
            module_graph(&self.0).unwrap()
        }
    }

    impl Drop for Crate {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn edges(graph: &Graph, module: &str) -> Vec<String> {
        graph[module].iter().cloned().collect()
    }

    #[test]
    fn finds_a_cycle_through_use_groups_and_plain_paths() {
        let krate = Crate::new(&[
            ("lib.rs", "mod a; mod b; mod c;"),
            ("a.rs", "use crate::{b::B, c};"),
            ("b.rs", "fn f() -> u8 { crate::c::C }"),
            ("c.rs", "const C: u8 = 0;"),
        ]);
        let graph = krate.graph();
        assert_eq!(edges(&graph, "a"), ["b", "c"]);
        assert!(cycles(&graph).is_empty());

        std::fs::write(krate.0.join("c.rs"), "const C: u8 = crate::a::X;").unwrap();
        let graph = krate.graph();
        assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
        assert_eq!(
            describe(&graph, &cycles(&graph)[0]),
            "a → b, a → c, b → c, c → a"
        );
    }

    #[test]
    fn test_only_code_is_not_counted() {
        let krate = Crate::new(&[
            ("a.rs", "use crate::b::B;"),
            (
                "b.rs",
                "pub struct B;\n#[cfg(test)]\nmod tests { use crate::a; }\n\
                 #[cfg(all(test, feature = \"x\"))]\nfn t() { crate::a::f() }",
            ),
        ]);
        assert!(edges(&krate.graph(), "b").is_empty());
    }

    #[test]
    fn code_outside_tests_under_a_cfg_is_counted() {
        let krate = Crate::new(&[
            ("a.rs", "pub fn f() {}"),
            ("b.rs", "#[cfg(not(test))]\nfn g() { crate::a::f() }"),
        ]);
        assert_eq!(edges(&krate.graph(), "b"), ["a"]);
    }

    #[test]
    fn super_reaches_a_sibling_only_from_the_top() {
        let krate = Crate::new(&[
            ("a.rs", "use super::b::B;"),
            ("b/mod.rs", "mod inner; pub struct B; use super::c::C;"),
            // super:: here is b itself; super::super:: is the crate root.
            ("b/inner.rs", "use super::B; use super::super::d::D;"),
            ("c.rs", "pub struct C; mod nested { use super::super::a; }"),
            ("d.rs", "pub struct D;"),
        ]);
        let graph = krate.graph();
        assert_eq!(edges(&graph, "a"), ["b"]);
        assert_eq!(edges(&graph, "b"), ["c", "d"]);
        assert_eq!(edges(&graph, "c"), ["a"]);
    }

    #[test]
    fn paths_in_macro_calls_count_and_root_items_do_not() {
        let krate = Crate::new(&[
            ("lib.rs", "pub fn root_item() {}"),
            (
                "a.rs",
                "fn f() { println!(\"{}\", crate::b::NAME); crate::root_item(); }",
            ),
            ("b.rs", "pub const NAME: &str = \"b\";"),
        ]);
        assert_eq!(edges(&krate.graph(), "a"), ["b"]);
    }

    /// The rule itself: every crate of the project is layered.
    #[test]
    fn the_workspace_has_no_module_cycles() {
        let cycles = workspace_cycles(&crate::workspace_root()).unwrap();
        assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
    }
}
