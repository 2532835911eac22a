//! The config loader on arbitrary file text: settings, `[[tokens]]` tables, token hashes, scopes
//! and namespace patterns. Every input is either a config or an error that names a key.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // tokens_file names another file to read, and data_dir needs none: keep the run hermetic.
    if text.contains("tokens_file") {
        return;
    }
    let flags = BTreeMap::from([("data_dir".to_owned(), "/nonexistent/cached-fuzz".to_owned())]);
    match cached::config::Config::load_text(&flags, Some((Path::new("fuzz.toml"), text)), &|_| None) {
        Ok(config) => {
            for token in &config.tokens {
                let table: toml::Table = token.to_toml().parse().expect("printed tokens parse");
                let again = cached::auth::tokens::parse_tokens(&table["tokens"], "again").expect("and load");
                assert_eq!(&again[0], token);
            }
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
