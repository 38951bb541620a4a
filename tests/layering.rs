//! The dependency direction of ARCHITECTURE.md, checked on the source: no module imports from
//! a layer above it. (A `use` of a layer not listed for a module fails this test.)

use std::path::Path;

/// Each module and the crate modules it may name.
const ALLOWED: &[(&str, &[&str])] = &[
    ("crypto", &[]),
    ("wire", &[]),
    ("config", &["crypto"]),
    ("secrets", &["config", "crypto"]),
    ("backend", &["config", "crypto", "secrets", "wire"]),
    ("pool", &["backend", "config", "crypto", "secrets"]),
    ("frontend", &["backend", "config", "crypto", "pool", "wire"]),
    (
        "rotation",
        &["backend", "config", "crypto", "pool", "secrets"],
    ),
];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (module, allowed) in ALLOWED {
        let mut files = Vec::new();
        sources(&root.join(module), &mut files);
        assert!(!files.is_empty(), "src/{module} has no sources");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let mut rest = line;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + 7..];
                    let used: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if used != *module && !allowed.contains(&used.as_str()) {
                        wrong.push(format!(
                            "{}:{}: {module} uses crate::{used}",
                            file.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
}

/// The module path of a source file under `src/frontend` (`["transaction", "outgoing"]`), and
/// whether it is a `mod.rs`.
fn module_of(root: &Path, file: &Path) -> (Vec<String>, bool) {
    let rel = file.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    let is_mod = parts.last().is_some_and(|p| p == "mod");
    if is_mod {
        parts.pop();
    }
    (parts, is_mod)
}

/// The frontend modules `text` (a file at `module`) names through `super::` or
/// `crate::frontend::`, each as the longest prefix that is one of `known`.
fn named_modules(
    text: &str,
    module: &[String],
    is_mod: bool,
    known: &[Vec<String>],
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.contains("::"))
        .collect();
    for word in words {
        let segs: Vec<&str> = word.split("::").filter(|s| !s.is_empty()).collect();
        let (mut base, rest): (Vec<String>, &[&str]) =
            if segs.first() == Some(&"crate") && segs.get(1) == Some(&"frontend") {
                (Vec::new(), &segs[2..])
            } else if segs.first() == Some(&"super") {
                // `super` of a plain file is its folder's module; of a mod.rs, the folder above.
                let mut parent = module.to_vec();
                parent.pop();
                if is_mod {
                    parent.pop();
                }
                let ups = segs.iter().skip(1).take_while(|s| **s == "super").count();
                parent.truncate(parent.len().saturating_sub(ups));
                (parent, &segs[1 + ups..])
            } else {
                continue;
            };
        let mut best = base.clone();
        for seg in rest {
            base.push((*seg).to_owned());
            if known.contains(&base) {
                best = base.clone();
            }
        }
        if &best[..] != module {
            out.push(best);
        }
    }
    out
}

#[test]
fn frontend_files_import_in_one_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/frontend");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.retain(|f| !f.to_string_lossy().ends_with("_tests.rs"));
    let modules: Vec<(Vec<String>, bool)> = files.iter().map(|f| module_of(&root, f)).collect();
    let known: Vec<Vec<String>> = modules.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: Vec<(usize, usize)> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests inside a file may use anything.
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let (module, is_mod) = &modules[i];
        for named in named_modules(text, module, *is_mod, &known) {
            let j = known.iter().position(|m| *m == named).unwrap();
            // A folder's mod.rs declares its files; only a file naming its own folder's mod.rs
            // back (or anything else) is an import.
            if !edges.contains(&(i, j)) {
                edges.push((i, j));
            }
        }
    }
    let name = |i: usize| {
        let m = &known[i];
        if m.is_empty() {
            "frontend".to_owned()
        } else {
            m.join("::")
        }
    };
    let mut cycles = Vec::new();
    for &(a, b) in &edges {
        // a -> b and b reaches a: a circle.
        let mut seen = vec![false; files.len()];
        let mut stack = vec![b];
        while let Some(n) = stack.pop() {
            if n == a {
                cycles.push(format!("{} -> {} -> ... -> {}", name(a), name(b), name(a)));
                break;
            }
            if !std::mem::replace(&mut seen[n], true) {
                stack.extend(edges.iter().filter(|e| e.0 == n).map(|e| e.1));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import circles in src/frontend:\n{}",
        cycles.join("\n")
    );
}
