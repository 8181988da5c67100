//! The cron converter: any line gives calendar expressions or one clear
//! sentence that says what to write instead, never a panic; no control
//! character (a newline above all) ever reaches the timer drop-in.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesbak_agent::schedule::on_calendar;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    match on_calendar(spec) {
        Ok(expressions) => {
            assert!(!expressions.is_empty() && expressions.len() <= 2);
            for expression in expressions {
                assert!(
                    !expression.chars().any(|c| c.is_control() && c != '\t'),
                    "{expression:?}"
                );
                assert!(!expression.is_empty());
            }
        }
        Err(message) => {
            assert!(!message.contains('\n'), "{message}");
            assert!(message.contains("'30 2 * * *'"), "no advice: {message}");
        }
    }
});
