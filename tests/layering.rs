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
