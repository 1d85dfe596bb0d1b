//! The layout rules of `docs/architecture.md` ("Layering"), checked on the
//! source tree:
//!
//! - crates depend on each other one way, down the layers (two exceptions,
//!   each spelled out below);
//! - the top-level modules of a crate import each other without a circle
//!   (test modules aside);
//! - fakes in production crates are compiled only for tests or behind a
//!   feature, and no benchmark or demo lives in a production library.
//!
//! The release binary itself is checked by `tools/check-release-vmsgd.sh`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each workspace crate: a normal dependency must point to a
/// strictly lower layer. Crates of one layer do not depend on each other.
const LAYERS: &[(&str, u32)] = &[
    ("vmsg-proto", 0),
    ("vmsg-transport", 1),
    ("vmsg-backend", 2),
    // The no_std device side the partition and the std devices share.
    ("vmsg-device-core", 2),
    // Devices, Xen and (to come) FF-A: beside each other, on the backend.
    ("vmsg-devices", 3),
    ("vmsg-xen", 3),
    ("vmsg-ffa", 3),
    ("vmsgd", 4),
    // Tools: the driver side and the operator CLI.
    ("vmsg-driver", 5),
    ("vmsgctl", 6),
    ("vmsg-tests", 7),
];

/// The sanctioned upward edges: (crate, dependency, why).
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "vmsgd",
        "vmsg-driver",
        "`vmsgd demo` drives the daemon with the driver side; only the binary uses it",
    ),
    (
        "vmsg-xen",
        "vmsg-driver",
        "the domU frontend is a vmsg_driver::DriverBus; optional, feature `frontend`",
    ),
];

/// Crates that end up in the daemon: their libraries hold no unguarded fake,
/// no benchmark and no demo.
const PRODUCTION: &[&str] = &[
    "vmsg-proto",
    "vmsg-transport",
    "vmsg-backend",
    "vmsg-device-core",
    "vmsg-devices",
    "vmsg-xen",
    "vmsg-ffa",
    "vmsgd",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn toml_file(path: &Path) -> toml::Table {
    read(path)
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A workspace member: name, directory, manifest.
struct Member {
    name: String,
    dir: PathBuf,
    manifest: toml::Table,
}

fn members() -> Vec<Member> {
    let ws = toml_file(&root().join("Cargo.toml"));
    ws["workspace"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let dir = root().join(m.as_str().unwrap());
            let manifest = toml_file(&dir.join("Cargo.toml"));
            let name = manifest["package"]["name"].as_str().unwrap().to_string();
            Member {
                name,
                dir,
                manifest,
            }
        })
        .collect()
}

fn layer(name: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| {
            panic!("crate {name} has no layer: add it to LAYERS and to docs/architecture.md")
        })
}

#[test]
fn crates_depend_on_lower_layers_only() {
    let members = members();
    let names: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let mut bad = Vec::new();
    for m in &members {
        let Some(deps) = m.manifest.get("dependencies").and_then(|d| d.as_table()) else {
            continue;
        };
        for (dep, spec) in deps {
            if !names.contains(dep.as_str()) {
                continue;
            }
            if layer(dep) < layer(&m.name) {
                continue;
            }
            let optional = spec
                .get("optional")
                .and_then(|o| o.as_bool())
                .unwrap_or(false);
            match EXCEPTIONS
                .iter()
                .find(|(c, d, _)| *c == m.name && *d == dep)
            {
                Some(("vmsg-xen", _, _)) if !optional => bad.push(format!(
                    "{} -> {dep}: allowed only as an optional dependency (feature `frontend`)",
                    m.name
                )),
                Some(_) => {}
                None => bad.push(format!(
                    "{} (layer {}) -> {dep} (layer {})",
                    m.name,
                    layer(&m.name),
                    layer(dep)
                )),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "dependencies against the layering: {bad:#?}"
    );
}

/// Source without comments (so a doc comment naming a module is no import).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // `//` inside a string literal ("http://") is rare enough here;
            // cutting the line there can only lose edges, never invent them.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` without its inline `#[cfg(test)] mod NAME { ... }` blocks.
fn without_test_modules(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let mut after = rest[at + "#[cfg(test)]".len()..].trim_start();
        // Further attributes between the cfg and the module.
        while after.starts_with("#[") {
            match after.find(']') {
                Some(i) => after = after[i + 1..].trim_start(),
                None => break,
            }
        }
        let inline_mod = after.starts_with("mod ")
            && after
                .find(['{', ';'])
                .is_some_and(|i| after.as_bytes()[i] == b'{');
        out.push_str(&rest[..at]);
        if !inline_mod {
            out.push_str("#[cfg(test)]");
            rest = &rest[at + "#[cfg(test)]".len()..];
            continue;
        }
        let open = at + (rest.len() - at - after.len()) + after.find('{').unwrap_or(0);
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A module declared in a crate root: its name and whether it is test-only.
#[derive(Debug)]
struct TopModule {
    name: String,
    test_only: bool,
    files: Vec<PathBuf>,
}

/// Every `.rs` file under `dir`.
fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `mod NAME;` / `pub mod NAME;` declarations of a file, with the
/// attributes on the lines before them.
fn declared_modules(text: &str) -> Vec<(String, String)> {
    let mut attrs = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("#[") {
            attrs.push_str(l);
            continue;
        }
        let decl = l
            .strip_prefix("pub mod ")
            .or_else(|| l.strip_prefix("pub(crate) mod "))
            .or_else(|| l.strip_prefix("mod "));
        if let Some(name) = decl.and_then(|d| d.strip_suffix(';')) {
            out.push((name.trim().to_string(), attrs.clone()));
        }
        if !l.is_empty() {
            attrs.clear();
        }
    }
    out
}

/// The top-level modules of the crate whose root file is `root_file`.
fn top_modules(root_file: &Path) -> Vec<TopModule> {
    let dir = root_file.parent().unwrap();
    declared_modules(&read(root_file))
        .into_iter()
        .map(|(name, attrs)| {
            let mut files = Vec::new();
            for f in [
                dir.join(format!("{name}.rs")),
                dir.join(&name).join("mod.rs"),
            ] {
                if f.exists() && !files.contains(&f) {
                    files.push(f);
                }
            }
            let sub = dir.join(&name);
            if sub.is_dir() {
                let mut more = Vec::new();
                rs_files(&sub, &mut more);
                for f in more {
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
            assert!(
                !files.is_empty(),
                "{}: no file for mod {name}",
                root_file.display()
            );
            TopModule {
                test_only: attrs.contains("#[cfg(test)]"),
                name,
                files,
            }
        })
        .collect()
}

/// Crate roots of a member: its library and its binaries.
fn crate_roots(m: &Member) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let lib = m.dir.join("src/lib.rs");
    if lib.exists() {
        roots.push(lib);
    }
    if let Some(bins) = m.manifest.get("bin").and_then(|b| b.as_array()) {
        for b in bins {
            if let Some(p) = b.get("path").and_then(|p| p.as_str()) {
                roots.push(m.dir.join(p));
            }
        }
    } else if m.dir.join("src/main.rs").exists() {
        roots.push(m.dir.join("src/main.rs"));
    }
    roots
}

/// Edges between the top-level modules of one crate: `crate::NAME` (and
/// `super::…::NAME` reaching the root) in production code.
fn module_edges(root_file: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = top_modules(root_file);
    let names: BTreeSet<&str> = modules
        .iter()
        .filter(|m| !m.test_only)
        .map(|m| m.name.as_str())
        .collect();
    let dir = root_file.parent().unwrap();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in modules.iter().filter(|m| !m.test_only) {
        for f in &m.files {
            let text = without_test_modules(&code(&read(f)));
            // How many `super::` reach the crate root from this file.
            let rel = f.strip_prefix(dir).unwrap();
            let depth = rel.components().count()
                - usize::from(rel.file_name().is_some_and(|n| n == "mod.rs"));
            let prefixes = ["crate::".to_string(), "super::".repeat(depth)];
            for prefix in &prefixes {
                for (i, _) in text.match_indices(prefix.as_str()) {
                    // `super::super::x` must not count as `super::x` seen at
                    // the second `super::`.
                    if prefix.starts_with("super") && text[..i].ends_with("super::") {
                        continue;
                    }
                    let target: String = text[i + prefix.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if target != m.name && names.contains(target.as_str()) {
                        edges.entry(m.name.clone()).or_default().insert(target);
                    }
                }
            }
        }
    }
    edges
}

/// A circle through `edges`, if there is one.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut circle = path[at..].to_vec();
            circle.push(n.to_string());
            return Some(circle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        if let Some(c) = visit(n, edges, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_edge_finder_sees_a_circle() {
    // The check below is only worth something if it finds circles: the one
    // daemon.rs and reload.rs used to form.
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges
        .entry("daemon".into())
        .or_default()
        .insert("reload".into());
    edges
        .entry("reload".into())
        .or_default()
        .insert("daemon".into());
    edges.entry("config".into()).or_default();
    assert_eq!(
        find_circle(&edges),
        Some(vec!["daemon".into(), "reload".into(), "daemon".into()])
    );
    let stripped = without_test_modules(
        "use crate::a;\n#[cfg(test)]\nmod tests {\n    use crate::b;\n    fn f() { if x { y } }\n}\nfn g() {}\n",
    );
    assert!(stripped.contains("crate::a") && !stripped.contains("crate::b"));
    assert!(stripped.contains("fn g()"));
}

#[test]
fn modules_of_a_crate_import_each_other_without_a_circle() {
    let mut circles = Vec::new();
    let mut crates = 0;
    for m in members() {
        for root_file in crate_roots(&m) {
            crates += 1;
            let edges = module_edges(&root_file);
            if let Some(c) = find_circle(&edges) {
                circles.push(format!("{}: {}", root_file.display(), c.join(" -> ")));
            }
        }
    }
    assert!(crates >= 10, "found only {crates} crate roots");
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn production_libraries_hold_no_unguarded_fake_no_bench_no_demo() {
    let mut bad = Vec::new();
    for m in members()
        .iter()
        .filter(|m| PRODUCTION.contains(&m.name.as_str()))
    {
        let lib = m.dir.join("src/lib.rs");
        if !lib.exists() {
            continue;
        }
        let mut files = Vec::new();
        rs_files(&m.dir.join("src"), &mut files);
        for f in files {
            // The binaries of the package (src/bin/, src/main.rs) are not
            // the library.
            let rel = f.strip_prefix(&m.dir).unwrap();
            if rel.starts_with("src/bin") || rel == Path::new("src/main.rs") {
                continue;
            }
            for (name, attrs) in declared_modules(&read(&f)) {
                let guarded = attrs.contains("cfg(test)")
                    || (attrs.contains("test") && attrs.contains("feature = \"fake"));
                if name.contains("bench") || name == "demo" {
                    bad.push(format!("{}: mod {name}", f.display()));
                } else if name.contains("fake") && !guarded {
                    bad.push(format!(
                        "{}: mod {name} without #[cfg(test)] or #[cfg(any(test, feature = \"fake…\"))]",
                        f.display()
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn the_vmsgd_library_does_not_use_the_driver_side() {
    // The sanctioned vmsgd -> vmsg-driver edge is for the binary's demo.
    let src = root().join("backend/vmsgd/src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let offenders: Vec<_> = files
        .iter()
        .filter(|f| !f.starts_with(src.join("bin")))
        .filter(|f| code(&read(f)).contains("vmsg_driver"))
        .collect();
    assert!(files.len() > 5);
    assert!(offenders.is_empty(), "{offenders:?}");
}
