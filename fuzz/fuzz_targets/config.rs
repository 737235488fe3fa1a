//! Feeds arbitrary text to the config parser and validator: every input is
//! a config or a list of problems, never a panic. Seeded with the shipped
//! example (`deploy/pgdr.toml`) by `scripts/fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = pgdr_config::Config::parse(std::path::Path::new("/fuzz/pgdr.toml"), &text) {
        // The error's text is what a user reads: it must render too.
        let _ = e.to_string();
    }
});
