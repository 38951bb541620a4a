//! The relay's scanner and framing in both directions and both pool modes, on any bytes cut
//! into any reads: it must stop or fail cleanly, never panic, loop or grow without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rotagate::frontend::fuzzing::relay(data);
});
