//! The SQL lexer (PostgreSQL's lexical rules: quoted and U& names, E'' escapes, dollar quotes,
//! nested comments) on any bytes, with and without standard_conforming_strings: it never
//! panics, its tokens lie in order inside the text, and whatever the cheap pass proves plain
//! the lexer proves plain too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rotagate::frontend::transaction::allowlist::Names;
use rotagate::frontend::transaction::{lexed, lexer, quick};

fuzz_target!(|data: &[u8]| {
    for standard in [true, false] {
        let mut end = 0;
        for (_, range) in lexer::spans(data, standard) {
            assert!(end <= range.start && range.start <= range.end && range.end <= data.len());
            end = range.end;
        }
    }
    if quick::plain(data) {
        let names = Names::catalog();
        assert!(lexed::classify(data, true, &names).is_plain());
        assert!(lexed::classify(data, false, &names).is_plain());
    }
});
