//! The TOML configuration a test hands the gateway, built section by section.

use std::fmt::Write as _;

/// A gateway configuration: `[section]` tables of `key = value` lines, rendered in the order the
/// sections were first touched. A later `set` of the same key replaces the earlier value.
#[derive(Debug, Clone, Default)]
pub struct ConfigBuilder {
    sections: Vec<(String, Vec<(String, String)>)>,
}

impl ConfigBuilder {
    /// A configuration listening on `127.0.0.1:0` with the test secret ([`crate::SECRET`]) and
    /// no broker (the in-process source).
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
            .str("server", "listen", "127.0.0.1:0")
            .str("auth", "secret", crate::SECRET)
    }

    /// Sets `key` in `[section]` to a TOML literal written as is (`"1s"` must carry its quotes;
    /// numbers, booleans and arrays do not).
    pub fn raw(mut self, section: &str, key: &str, toml_value: &str) -> ConfigBuilder {
        let idx = match self.sections.iter().position(|(s, _)| s == section) {
            Some(i) => i,
            None => {
                self.sections.push((section.to_string(), Vec::new()));
                self.sections.len() - 1
            }
        };
        let keys = &mut self.sections[idx].1;
        keys.retain(|(k, _)| k != key);
        keys.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Outage warnings every second and broker reconnects within half a second, so outage
    /// scenarios finish quickly.
    pub fn fast_outage(self) -> ConfigBuilder {
        self.str("streams", "warning_interval", "1s")
            .str("broker", "reconnect_min", "100ms")
            .str("broker", "reconnect_max", "500ms")
    }

    /// Sets `key` in `[section]` to a string.
    pub fn str(self, section: &str, key: &str, value: &str) -> ConfigBuilder {
        // A JSON string literal is a valid TOML basic string.
        let quoted = serde_json::to_string(value).expect("a string serializes");
        self.raw(section, key, &quoted)
    }

    /// Sets `key` in `[section]` to an array of strings.
    pub fn strs(self, section: &str, key: &str, values: &[&str]) -> ConfigBuilder {
        let quoted = serde_json::to_string(values).expect("strings serialize");
        self.raw(section, key, &quoted)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.sections {
            let _ = writeln!(out, "[{section}]");
            for (k, v) in keys {
                let _ = writeln!(out, "{k} = {v}");
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_render_in_first_use_order_and_keys_can_be_replaced() {
        let c = ConfigBuilder::new()
            .str("streams", "heartbeat", "30s")
            .raw("streams", "max_per_user", "2")
            .str("streams", "heartbeat", "1s");
        assert_eq!(
            c.render(),
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[auth]\nsecret = \"black-box-test-secret-0123456789\"\n\n\
             [streams]\nmax_per_user = 2\nheartbeat = \"1s\"\n\n"
        );
    }
}
