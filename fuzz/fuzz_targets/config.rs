//! Any text as a config file: loading and validating it, then building every destination,
//! answers an error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = switchyard::config::load(text) {
        for d in &config.destinations {
            let _ = switchyard::destination::build(d);
        }
    }
});
