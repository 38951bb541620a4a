//! A client's first message (SSLRequest, GSSENCRequest, CancelRequest or startup packet) as the
//! listener decodes it, then rotagate's checks of the startup parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rotagate::frontend::fuzzing::startup(data);
});
