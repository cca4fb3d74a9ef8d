//! User agent parsing: `context.userAgent` becomes
//! `{browser: {family, major, minor, patch}, os: {family, major, minor, patch},
//! device: {family, brand, model}}` in `enrichment.userAgent`.
//!
//! The rules are uap-core's `regexes.yaml`, vendored at
//! `commands/data/uap-core/regexes.yaml` (Apache-2.0, its LICENSE beside it)
//! and compiled into the binary, so parsing needs no file at run time.
//!
//! **Invariants:** the rules are compiled once, when [`UserAgents`] is built
//! (once per `Pipeline`). Parsing is slow (hundreds of regexes), so results
//! are cached per user agent string in a bounded map, cleared when it grows
//! past [`UserAgents::CACHE_LIMIT`] entries; the cache is behind a mutex so
//! the pipeline stays `Send + Sync`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Value, json};
use uaparser::{Parser, UserAgentParser};

/// uap-core's rules, as vendored.
const REGEXES: &[u8] = include_bytes!("../../data/uap-core/regexes.yaml");

/// The user agent parser with its cache.
pub struct UserAgents {
    /// uap-core's rules, compiled.
    parser: UserAgentParser,
    /// Parsed results by user agent string; the same few strings recur.
    cache: Mutex<HashMap<String, Arc<Value>>>,
}

impl UserAgents {
    /// The most cached results before the cache is cleared.
    pub const CACHE_LIMIT: usize = 10_000;
    /// The most bytes of a user agent parsed; real ones are far shorter and
    /// the rules' cost grows with the length.
    pub const MAX_LEN: usize = 1024;

    /// Compiles the vendored uap-core rules.
    pub fn new() -> UserAgents {
        // The rules are vendored and tested: failing to compile them is a
        // build defect, not an input error.
        let parser = UserAgentParser::builder()
            .with_unicode_support(false)
            .build_from_bytes(REGEXES)
            .expect("the vendored uap-core regexes.yaml compiles");
        UserAgents { parser, cache: Mutex::new(HashMap::new()) }
    }

    /// Parses a user agent string (cut to [`UserAgents::MAX_LEN`] bytes),
    /// from the cache when it was seen before.
    pub fn parse(&self, user_agent: &str) -> Arc<Value> {
        let user_agent = cut(user_agent, Self::MAX_LEN);
        if let Some(parsed) = self.lock().get(user_agent) {
            return Arc::clone(parsed);
        }
        // Parse outside the lock: two threads may parse the same string once
        // each, which is cheaper than serializing every parse.
        let parsed = Arc::new(self.parse_uncached(user_agent));
        let mut cache = self.lock();
        if cache.len() >= Self::CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(user_agent.to_owned(), Arc::clone(&parsed));
        parsed
    }

    fn parse_uncached(&self, user_agent: &str) -> Value {
        let client = self.parser.parse(user_agent);
        json!({
            "browser": {
                "family": client.user_agent.family,
                "major": client.user_agent.major,
                "minor": client.user_agent.minor,
                "patch": client.user_agent.patch,
            },
            "os": {
                "family": client.os.family,
                "major": client.os.major,
                "minor": client.os.minor,
                "patch": client.os.patch,
            },
            "device": {
                "family": client.device.family,
                "brand": client.device.brand,
                "model": client.device.model,
            },
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Value>>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (each operation is a single insert, get or clear).
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for UserAgents {
    fn default() -> UserAgents {
        UserAgents::new()
    }
}

impl std::fmt::Debug for UserAgents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserAgents").field("cached", &self.lock().len()).finish_non_exhaustive()
    }
}

/// `text` cut to at most `limit` bytes, on a char boundary.
fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    fn user_agents() -> &'static UserAgents {
        static USER_AGENTS: OnceLock<UserAgents> = OnceLock::new();
        USER_AGENTS.get_or_init(UserAgents::new)
    }

    #[test]
    fn chrome_on_windows_is_recognized() {
        let parsed = user_agents().parse(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/120.0.6099.130 Safari/537.36",
        );
        assert_eq!(parsed["browser"], json!({"family": "Chrome", "major": "120", "minor": "0", "patch": "6099"}));
        assert_eq!(parsed["os"]["family"], "Windows");
        assert_eq!(parsed["os"]["major"], "10");
        assert_eq!(parsed["device"]["family"], "Other");
    }

    #[test]
    fn safari_on_an_iphone_is_recognized() {
        let parsed = user_agents().parse(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 \
             (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1",
        );
        assert_eq!(parsed["browser"]["family"], "Mobile Safari");
        assert_eq!(parsed["browser"]["major"], "17");
        assert_eq!(parsed["os"], json!({"family": "iOS", "major": "17", "minor": "1", "patch": "2"}));
        assert_eq!(parsed["device"], json!({"family": "iPhone", "brand": "Apple", "model": "iPhone"}));
    }

    #[test]
    fn a_second_parse_of_the_same_string_comes_from_the_cache() {
        let first = user_agents().parse("curl/8.5.0");
        let second = user_agents().parse("curl/8.5.0");
        assert!(Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn an_overlong_user_agent_is_cut_on_a_char_boundary() {
        assert_eq!(cut("ééé", 3), "é");
        let parsed = user_agents().parse(&"é".repeat(5_000));
        assert_eq!(parsed["browser"]["family"], "Other");
    }
}
