//! The configuration loader: any text gives a configuration or one clear
//! sentence naming the file, never a panic; an accepted configuration
//! passes its own checks again and its schedules convert without panic.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mesbak_agent::config::{Config, Environment};

/// The seed stack's variables, taken from the input's first line when it
/// starts with `#env `: `NAME=value` pairs separated by `;`.
struct Vars(Vec<(String, String)>);

impl Environment for Vars {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("#env "))
        .map(|line| {
            line.split(';')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let path = Path::new("/etc/mesbak/mesbak.toml");
    match Config::from_toml(text, path, &Vars(vars)) {
        Ok(config) => {
            assert!(config.backup_dir.is_absolute());
            // An accepted configuration gives a level its compression takes.
            let codec = config.codec();
            assert!(
                mesbak_agent::pipeline::Codec::levels(codec.compression).contains(&codec.level)
            );
            let _ = mesbak_agent::schedule::on_calendar(&config.schedule.backup);
            let _ = mesbak_agent::schedule::on_calendar(&config.schedule.test_restore);
        }
        Err(err) => {
            let message = err.to_string();
            assert!(!message.contains('\n'), "a multi-line error: {message}");
            assert!(
                message.contains("/etc/mesbak/mesbak.toml")
                    || message.contains("environment variable"),
                "the error names neither the file nor the variable: {message}"
            );
        }
    }
});
