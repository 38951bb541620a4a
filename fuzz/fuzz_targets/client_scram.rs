//! The server side of a client's SCRAM-SHA-256 exchange: what an unauthenticated client's
//! SASLInitialResponse and final message reach (mechanism, client-first parsing, proof check),
//! for a configured user and for the mock exchange unknown users get.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rotagate::frontend::fuzzing::client_scram(data);
});
