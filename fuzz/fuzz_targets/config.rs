//! The configuration parser (`src/config*`): any text gives a config or a
//! located error, never a panic (line/column arithmetic on hostile text).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = interlocking::config::Config::parse(std::path::Path::new("fuzz.toml"), text);
        let _ = interlocking::config::parse_duration(text);
    }
});
