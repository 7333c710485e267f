//! The documents under `docs/` are checked against the code, so they cannot drift:
//! * `docs/asyncapi.json`, `docs/events.schema.json`, `docs/events.d.ts` equal what the contract
//!   generators print for the shipped defaults. Regenerate them with
//!   `SSE_GATEWAY_BLESS=1 cargo test -p sse-gateway-core --test docs` (or
//!   `sse-gateway catalogue --asyncapi > docs/asyncapi.json`, ...).
//! * `docs/config-reference.md` names every key of `Config` (walked through its serde structure),
//!   names no key that does not exist, and every default it states as a TOML literal is the real
//!   default (a channel key's, as `deals` resolves with and without it).
//! * `docs/sse-gateway.example.toml` is a configuration the gateway starts with.
//! * `docs/operations.md` names every metric `/metrics` renders.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::Deserialize;
use sse_gateway_core::config::Config;
use sse_gateway_core::setup::{self, Env, Overrides};
use sse_gateway_core::{contract, Catalogue, Metrics, Settings};

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(docs().join(name)).unwrap_or_else(|e| panic!("docs/{name}: {e}"))
}

fn bless() -> bool {
    std::env::var_os("SSE_GATEWAY_BLESS").is_some()
}

/// Compares a committed generated file with the generator's output (or rewrites it when blessing).
fn check_generated(name: &str, generated: &str, same: impl Fn(&str, &str) -> bool) {
    let path = docs().join(name);
    if bless() {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let committed = read(name);
    assert!(
        same(&committed, generated),
        "docs/{name} differs from the generated contract; regenerate it: \
         SSE_GATEWAY_BLESS=1 cargo test -p sse-gateway-core --test docs"
    );
}

fn same_json(a: &str, b: &str) -> bool {
    let a: serde_json::Value = serde_json::from_str(a).expect("committed file is JSON");
    let b: serde_json::Value = serde_json::from_str(b).expect("generated text is JSON");
    a == b
}

#[test]
fn committed_asyncapi_is_the_generated_one() {
    let text = contract::render(contract::Format::AsyncApi, &Settings::seed());
    check_generated("asyncapi.json", &text, same_json);
}

#[test]
fn committed_json_schemas_are_the_generated_ones() {
    let text = contract::render(contract::Format::JsonSchema, &Settings::seed());
    check_generated("events.schema.json", &text, same_json);
}

#[test]
fn committed_typescript_is_the_generated_one() {
    check_generated("events.d.ts", &contract::render(contract::Format::TypeScript, &Settings::seed()), |a, b| a == b);
}

// ------------------------------------------------------------------------------------------------
// Every key of `Config`, found by deserializing it from a recording deserializer: each struct
// hands over its field names; maps (`channels`) get one entry named `<name>`; options are
// entered. Leaves are recorded as dotted paths.
// ------------------------------------------------------------------------------------------------

type Error = de::value::Error;

struct Walk<'a> {
    path: String,
    leaves: &'a RefCell<BTreeSet<String>>,
}

impl<'a> Walk<'a> {
    fn child(&self, key: &str) -> Walk<'a> {
        let path = if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) };
        Walk { path, leaves: self.leaves }
    }

    fn leaf(&self) {
        self.leaves.borrow_mut().insert(self.path.clone());
    }
}

macro_rules! leaf_as {
    ($($method:ident => $visit:ident($value:expr)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            self.leaf();
            v.$visit($value)
        })*
    };
}

impl<'de> Deserializer<'de> for Walk<'_> {
    type Error = Error;

    leaf_as! {
        deserialize_any => visit_u64(0),
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(0), deserialize_i16 => visit_i64(0),
        deserialize_i32 => visit_i64(0), deserialize_i64 => visit_i64(0),
        deserialize_u8 => visit_u64(0), deserialize_u16 => visit_u64(0),
        deserialize_u32 => visit_u64(0), deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0), deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str("x"), deserialize_string => visit_str("x"),
        deserialize_bytes => visit_bytes(b"x"), deserialize_byte_buf => visit_bytes(b"x"),
        deserialize_identifier => visit_str("x"),
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.leaf();
        v.visit_unit()
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Error> {
        self.deserialize_unit(v)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, Error> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        self.leaf();
        v.visit_seq(Empty)
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, _: usize, v: V) -> Result<V::Value, Error> {
        self.deserialize_seq(v)
    }
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_map(Fields { walk: self, keys: vec!["<name>"], at: 0 })
    }
    fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], v: V) -> Result<V::Value, Error> {
        v.visit_map(Fields { walk: self, keys: fields.to_vec(), at: 0 })
    }
    fn deserialize_enum<V: Visitor<'de>>(self, _: &'static str, variants: &'static [&'static str], v: V) -> Result<V::Value, Error> {
        self.leaf();
        v.visit_enum(Unit(variants[0]))
    }
}

struct Empty;

impl<'de> SeqAccess<'de> for Empty {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, _: T) -> Result<Option<T::Value>, Error> {
        Ok(None)
    }
}

struct Fields<'a> {
    walk: Walk<'a>,
    keys: Vec<&'static str>,
    at: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.keys.get(self.at) {
            None => Ok(None),
            Some(k) => seed.deserialize(IntoDeserializer::<Error>::into_deserializer(*k)).map(Some),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let key = self.keys[self.at];
        self.at += 1;
        seed.deserialize(self.walk.child(key))
    }
}

struct Unit(&'static str);

impl<'de> EnumAccess<'de> for Unit {
    type Error = Error;
    type Variant = Unit;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Unit), Error> {
        let v = seed.deserialize(IntoDeserializer::<Error>::into_deserializer(self.0))?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for Unit {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, Error> {
        Err(de::Error::custom("config enums are unit variants"))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("config enums are unit variants"))
    }
    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("config enums are unit variants"))
    }
}

/// Every key of the configuration file, dotted (`server.listen`, `channels.<name>.source.queue`).
fn config_keys() -> BTreeSet<String> {
    let leaves = RefCell::new(BTreeSet::new());
    Config::deserialize(Walk { path: String::new(), leaves: &leaves }).expect("the walk visits every field");
    leaves.into_inner()
}

/// Rows of the reference's key tables (those headed `| key | default | meaning |`):
/// (key, default cell).
fn reference_rows(text: &str) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for line in text.lines().map(str::trim) {
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.first() == Some(&"key") {
            in_table = true;
            continue;
        }
        if !in_table || cells.len() < 3 || cells[0].starts_with("--") {
            continue;
        }
        let key = cells[0].trim_matches('`');
        rows.push((key.to_string(), cells[1].to_string()));
    }
    rows
}

#[test]
fn the_walk_finds_the_keys_we_know() {
    let keys = config_keys();
    for k in ["server.listen", "auth.secret", "streams.limit_policy", "broker.url", "demo.interval", "catalogue",
              "channels.<name>.roles", "channels.<name>.source.routing_keys"] {
        assert!(keys.contains(k), "{k} in {keys:?}");
    }
    assert!(keys.len() > 40, "{keys:?}");
}

#[test]
fn config_reference_names_every_key_and_no_other() {
    let text = read("config-reference.md");
    let rows = reference_rows(&text);
    let documented: BTreeSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    let keys = config_keys();
    let missing: Vec<_> = keys.difference(&documented).collect();
    assert!(missing.is_empty(), "docs/config-reference.md lacks rows for {missing:?}");
    let unknown: Vec<_> = documented.difference(&keys).collect();
    assert!(unknown.is_empty(), "docs/config-reference.md documents keys Config does not have: {unknown:?}");
}

#[test]
fn config_reference_defaults_are_the_real_defaults() {
    let text = read("config-reference.md");
    let mut checked = 0;
    for (key, default) in reference_rows(&text) {
        // Only defaults written as one TOML literal in backticks are checked: `30s` style cells
        // are written as `"30s"`; prose ("unset", "the seed's") is not a literal.
        let Some(literal) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) else { continue };
        if literal.contains('`') {
            continue;
        }
        if let Some(rest) = key.strip_prefix("channels.<name>.") {
            // `streams.buffer_events` and the like name another key's value: not a literal.
            if toml::from_str::<toml::Table>(&format!("v = {literal}")).is_err() {
                continue;
            }
            assert_channel_default(rest, &literal.replace("<name>", "deals"));
            checked += 1;
            continue;
        }
        let (section, name) = match key.rsplit_once('.') {
            Some((s, n)) => (format!("[{s}]\n"), n.to_string()),
            None => (String::new(), key.clone()),
        };
        let base = Config::from_toml(&section).unwrap();
        let set = Config::from_toml(&format!("{section}{name} = {literal}\n"))
            .unwrap_or_else(|e| panic!("{key}: default `{literal}` is not a valid value: {e}"));
        assert_eq!(set, base, "{key}: the documented default `{literal}` is not the default");
        checked += 1;
    }
    assert!(checked > 30, "only {checked} defaults checked");
}

/// A channel key's documented default (`rest` after `channels.<name>.`) is what the channels
/// resolve to without it: set on `deals` (its source given as an exchange, and as a stream for
/// the stream-only keys), every resolved channel is as without it.
fn assert_channel_default(rest: &str, literal: &str) {
    let (section, name) = match rest.strip_prefix("source.") {
        Some(name) => {
            let stream = if ["max_age", "max_length_bytes", "epoch"].contains(&name) { "stream = true\n" } else { "" };
            (format!("[channels.deals.source]\nexchange = \"crm.domain\"\n{stream}"), name)
        }
        None => ("[channels.deals]\n".to_string(), rest),
    };
    let resolve = |text: &str| {
        let config = Config::from_toml(text).unwrap_or_else(|e| panic!("channels.<name>.{rest}: {e}"));
        Settings::new(config, Catalogue::seed()).unwrap_or_else(|e| panic!("channels.<name>.{rest}: {e}")).channels.clone()
    };
    let base = resolve(&section);
    let set = resolve(&format!("{section}{name} = {literal}\n"));
    assert_eq!(set, base, "channels.<name>.{rest}: the documented default `{literal}` is not the default");
}

#[test]
fn example_configuration_starts() {
    let text = read("sse-gateway.example.toml");
    let config = Config::from_toml(&text).expect("the example parses");
    Settings::new(config.clone(), Catalogue::seed()).expect("the example resolves");
    assert!(config.broker.is_some() && !config.server.cors_origins.is_empty());
    // The whole start-up path, with the key file it names and secrets from the environment.
    let pem = include_str!("fixtures/keys/rsa_public.pem");
    let mut read = |p: &str| {
        if Some(p) == config.auth.public_key_file.as_deref() {
            Ok(pem.to_string())
        } else {
            Err(format!("no file {p}"))
        }
    };
    let env = Env { jwt_secret: None, amqp_url: Some("amqp://sse:secret@rabbit:5672/%2f".into()) };
    let s = setup::load(Some(&text), &env, &Overrides::default(), &mut read, &mut || unreachable!("key material is configured"))
        .expect("the example starts");
    assert!(!s.generated_secret);
    assert_eq!(s.settings.config.broker.as_ref().unwrap().url, "amqp://sse:secret@rabbit:5672/%2f");
}

#[test]
fn operations_guide_names_every_metric() {
    let text = read("operations.md");
    let rendered = Metrics::new(&Settings::seed()).render();
    let names: BTreeSet<&str> = rendered.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(names.len() > 10);
    for n in names {
        assert!(text.contains(&format!("`{n}`")), "docs/operations.md does not describe `{n}`");
    }
}
