//! Transaction mode's statement classifier (SET, RESET, DISCARD, PREPARE, LISTEN, temp tables,
//! comments, quoting, dollar quotes): any text, classified alone and through the per-client
//! cache of the last plain statement, gives the same answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotagate::frontend::transaction::allowlist::Names;
use rotagate::frontend::transaction::classify::{Recent, classify};

fuzz_target!(|data: &[u8]| {
    let names = Names::catalog();
    let alone = classify(data, &names);
    let mut recent = Recent::default();
    let first = recent.classify(data, || names.clone());
    let again = recent.classify(data, || names.clone());
    assert_eq!(alone, first);
    assert_eq!(first, again);
});
