//! The event catalogue: channels, their schema versions, the event types of each version and the
//! payload fields of each event type, loaded from TOML data (decisions D4, D5), and validation of
//! upstream payloads against it.
//!
//! The catalogue is data, not code: [`Catalogue::seed`] is the shipped `core/catalogue.toml`
//! (version 1 of each channel is the seed's tables) and [`Catalogue::from_toml`] loads an
//! operator's file. The file format is documented in the header comment of
//! `core/catalogue.toml` ([`SEED_TOML`]).
//!
//! Validation ([`Catalogue::validate`]) answers whether an upstream message may be relayed: the
//! channel exists, it has the schema version, the version declares the event type, the payload is
//! a JSON object, every required field is present and not null, and every present, non-null
//! field has its declared kind. Fields the schema does not declare are allowed (forward
//! compatible). A rejection carries a stable metric label ([`Invalid::reason`]).
//!
//! Nothing here does IO, reads a clock or panics on any input.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde_json::{json, Value};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The text of the shipped catalogue, `core/catalogue.toml` (the seed's four channels, version 1).
///
/// Its header comment documents the catalogue format; deployments can start from a copy of it.
pub const SEED_TOML: &str = include_str!("../catalogue.toml");

/// The longest channel or event-type name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;

// ------------------------------------------------------------------------------------------------
// Schema types
// ------------------------------------------------------------------------------------------------

/// The event catalogue: every channel the gateway serves, with its schema versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalogue {
    channels: BTreeMap<String, ChannelSchema>,
}

/// One channel: its schema versions and the version served when a client asks for none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelSchema {
    name: String,
    default_version: u32,
    versions: BTreeMap<u32, VersionSchema>,
}

/// One schema version of a channel: the event types it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionSchema {
    events: BTreeMap<String, EventSchema>,
}

/// One event type of a schema version: its payload fields, in the order the catalogue lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSchema {
    name: String,
    fields: Vec<FieldSpec>,
}

/// One declared payload field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    /// The JSON key of the field in the payload object.
    pub name: String,
    /// What the field's value must be.
    pub kind: FieldKind,
    /// Whether the field must be present and not null. An optional field may be absent or null;
    /// when it has another value, that value must still match [`FieldSpec::kind`].
    pub required: bool,
}

/// The kind of value a payload field holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// A string of 8-4-4-4-12 hexadecimal digits (either case).
    Uuid,
    /// Any JSON string.
    String,
    /// A string holding an RFC 3339 date-time with an offset (`2024-05-01T12:30:00Z`,
    /// `2024-05-01T12:30:00.250+03:00`; `t` and `z` are accepted, a space for the `T` is not,
    /// nor a leap second `:60`).
    DateTime,
    /// A string holding a real calendar date, `YYYY-MM-DD`.
    Date,
    /// Any JSON number.
    Number,
    /// A JSON number without a fractional part (JSON Schema's `integer`): `i64` and `u64` in
    /// full, written as a float (`5.0`, `1e3`) up to 2^53 in magnitude.
    Integer,
    /// Any JSON object (its contents are not checked).
    Object,
    /// `true` or `false`.
    Boolean,
    /// A JSON string equal to one of the listed values.
    Enum(Vec<String>),
}

// ------------------------------------------------------------------------------------------------
// Catalogue
// ------------------------------------------------------------------------------------------------

impl Catalogue {
    /// The shipped catalogue ([`SEED_TOML`]): channels `deals`, `tasks`, `notifications` and
    /// `payments`, each with version 1 (the seed's tables) as its only and default version.
    pub fn seed() -> Catalogue {
        Catalogue::from_toml(SEED_TOML)
            .expect("invariant: the bundled core/catalogue.toml is a valid catalogue (unit-tested)")
    }

    /// Parses and checks a catalogue written in the TOML format of `core/catalogue.toml`.
    ///
    /// Rejected, with an error naming the channel, version, event and field concerned and the
    /// line: text that is not TOML; keys the format does not know; no channels; a channel with no
    /// versions; a version with no event types; version 0 or a version key that is not a positive
    /// integer; a `default_version` that is not among the channel's versions; an unknown field
    /// kind; an enum without values; a channel or event-type name that is empty, longer than
    /// [`MAX_NAME_LEN`] or has characters outside `[a-z0-9._-]`.
    pub fn from_toml(text: &str) -> Result<Catalogue, CatalogueError> {
        let root = DeTable::parse(text).map_err(|e| CatalogueError {
            detail: Box::new(ErrorDetail {
                message: format!("not valid TOML: {}", e.to_string().trim_end()),
                ..ErrorDetail::default()
            }),
        })?;
        let loc = Loc {
            text,
            ..Loc::default()
        };
        let root_span = root.span();
        let mut channels_value = None;
        for (key, value) in root.get_ref().iter() {
            let k: &str = key.get_ref();
            if k == "channels" {
                channels_value = Some(value);
            } else {
                return Err(loc.error(
                    key.span(),
                    format!("unknown top-level key `{k}` (the catalogue has only `channels`)"),
                ));
            }
        }
        let Some(channels_value) = channels_value else {
            return Err(loc.error(root_span, "the catalogue declares no channels"));
        };
        let channels_table = expect_table(&loc, channels_value, "`channels`")?;
        let mut channels = BTreeMap::new();
        for (key, value) in sorted_by_position(channels_table) {
            let name: &str = key.get_ref();
            let loc = Loc {
                channel: Some(name.to_owned()),
                ..loc.clone()
            };
            check_name(&loc, key.span(), "channel", name)?;
            let channel = parse_channel(&loc, name, value)?;
            channels.insert(name.to_owned(), channel);
        }
        if channels.is_empty() {
            return Err(loc.error(channels_value.span(), "the catalogue declares no channels"));
        }
        Ok(Catalogue { channels })
    }

    /// The channel called `name`, if the catalogue has it.
    pub fn channel(&self, name: &str) -> Option<&ChannelSchema> {
        self.channels.get(name)
    }

    /// The names of all channels, sorted.
    pub fn channel_names(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    /// The channels, sorted by name.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelSchema> {
        self.channels.values()
    }

    /// Checks an upstream event: `payload` is the message body (the SSE `data`), `event_type`
    /// the AMQP `type` (or routing key), `version` the `schema_version` header (1 when absent).
    ///
    /// The checks run in this order and the first failure is returned: channel, version, event
    /// type, payload is an object, then each declared field in catalogue order.
    pub fn validate(
        &self,
        channel: &str,
        version: u32,
        event_type: &str,
        payload: &Value,
    ) -> Result<(), Invalid> {
        let channel = self.channel(channel).ok_or(Invalid::UnknownChannel)?;
        let version = channel
            .version(version)
            .ok_or(Invalid::UnsupportedVersion)?;
        let event = version.event(event_type).ok_or(Invalid::UnknownEventType)?;
        event.validate(payload)
    }
}

impl ChannelSchema {
    /// The channel's name (as in `GET /api/v1/streams/{name}`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version served when the client does not ask for one (`?version=N` absent).
    pub fn default_version(&self) -> u32 {
        self.default_version
    }

    /// All schema versions of the channel, ascending (for `{"supported":[..]}` answers).
    pub fn versions(&self) -> Vec<u32> {
        self.versions.keys().copied().collect()
    }

    /// Whether the channel has schema version `version`.
    pub fn supports(&self, version: u32) -> bool {
        self.versions.contains_key(&version)
    }

    /// Schema version `v` of the channel, if it has one.
    pub fn version(&self, v: u32) -> Option<&VersionSchema> {
        self.versions.get(&v)
    }
}

impl VersionSchema {
    /// The event type called `name`, if this version declares it.
    pub fn event(&self, name: &str) -> Option<&EventSchema> {
        self.events.get(name)
    }

    /// All event types of this version with their schemas, sorted by name.
    pub fn event_types(&self) -> impl Iterator<Item = (&str, &EventSchema)> {
        self.events
            .iter()
            .map(|(name, event)| (name.as_str(), event))
    }
}

impl EventSchema {
    /// The event type's name (the SSE `event:` field).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared payload fields, in catalogue order.
    pub fn fields(&self) -> &[FieldSpec] {
        &self.fields
    }

    /// The declared field called `name`, if any.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Checks a payload against this event type: it must be a JSON object, every required field
    /// present and not null, every present non-null field of its kind. Undeclared fields are
    /// allowed. The first failure, in field order, is returned.
    pub fn validate(&self, payload: &Value) -> Result<(), Invalid> {
        let Value::Object(object) = payload else {
            return Err(Invalid::NotAnObject);
        };
        for field in &self.fields {
            match object.get(&field.name) {
                None | Some(Value::Null) => {
                    if field.required {
                        return Err(Invalid::MissingField(field.name.clone()));
                    }
                }
                Some(value) => {
                    if !field.kind.accepts(value) {
                        return Err(Invalid::WrongKind {
                            field: field.name.clone(),
                            expected: field.kind.name(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// A JSON Schema (draft 2020-12) describing this event's payload: an object with the
    /// declared `properties`, the required ones listed in `required`, and
    /// `additionalProperties: true`. Optional fields also accept `null`.
    ///
    /// The schema is documentation for publishers and UI developers; [`EventSchema::validate`]
    /// is the authority. Each string kind carries a `pattern` beside its `format` (a validator
    /// checks `format` only when asked to): together they accept what validation accepts, but
    /// for an integer written as a float past 2^53 (`1e17`), which validation refuses.
    pub fn json_schema(&self) -> Value {
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        for field in &self.fields {
            let schema = field.kind.json_schema();
            let schema = if field.required {
                required.push(Value::String(field.name.clone()));
                schema
            } else {
                nullable(schema)
            };
            properties.insert(field.name.clone(), schema);
        }
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.name,
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": true,
        })
    }
}

/// Makes a field schema produced by [`FieldKind::json_schema`] also accept `null`.
fn nullable(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        if let Some(Value::String(t)) = map.get("type") {
            let t = t.clone();
            map.insert("type".to_owned(), json!([t, "null"]));
        }
        if let Some(Value::Array(values)) = map.get_mut("enum") {
            values.push(Value::Null);
        }
    }
    schema
}

/// JSON Schema `pattern`s beside each string kind's `format`, which a validator need not check
/// (draft 2020-12 makes it an annotation by default): what [`is_uuid`], [`is_date`] and
/// [`is_datetime`] take, but for the calendar (`02-30`), which `format` checks. Seconds stop at
/// 59 (no leap second, as [`is_datetime`]).
const UUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
const DATE_PATTERN: &str = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$";
const DATETIME_PATTERN: &str = "^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$";

/// The largest float below which every integer is a float (2^53): JavaScript's safe integers.
const MAX_EXACT_FLOAT_INT: f64 = 9_007_199_254_740_992.0;

impl FieldKind {
    /// The kind's name as written in the catalogue (`uuid`, `string`, `datetime`, `date`,
    /// `number`, `integer`, `object`, `boolean`, `enum`); also [`Invalid::WrongKind`]'s
    /// `expected`.
    pub fn name(&self) -> &'static str {
        match self {
            FieldKind::Uuid => "uuid",
            FieldKind::String => "string",
            FieldKind::DateTime => "datetime",
            FieldKind::Date => "date",
            FieldKind::Number => "number",
            FieldKind::Integer => "integer",
            FieldKind::Object => "object",
            FieldKind::Boolean => "boolean",
            FieldKind::Enum(_) => "enum",
        }
    }

    /// Whether `value` (not null; nullness is the field's `required` business) is of this kind.
    pub fn accepts(&self, value: &Value) -> bool {
        match (self, value) {
            (FieldKind::Uuid, Value::String(s)) => is_uuid(s),
            (FieldKind::String, Value::String(_)) => true,
            (FieldKind::DateTime, Value::String(s)) => is_datetime(s),
            (FieldKind::Date, Value::String(s)) => is_date(s),
            (FieldKind::Number, Value::Number(_)) => true,
            // As JSON Schema's `integer` (what the published contract says): a number without
            // a fractional part, `5.0` and `1e3` too (Python's json writes floats so). Written as
            // a float, only where a float holds every integer exactly (|x| <= 2^53).
            (FieldKind::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() <= MAX_EXACT_FLOAT_INT)
            }
            (FieldKind::Object, Value::Object(_)) => true,
            (FieldKind::Boolean, Value::Bool(_)) => true,
            (FieldKind::Enum(values), Value::String(s)) => values.iter().any(|v| v == s),
            _ => false,
        }
    }

    /// A JSON Schema (draft 2020-12) fragment for a value of this kind, e.g.
    /// `{"type":"string","format":"uuid"}` or `{"type":"string","enum":["a","b"]}`.
    pub fn json_schema(&self) -> Value {
        match self {
            FieldKind::Uuid => json!({"type": "string", "format": "uuid", "pattern": UUID_PATTERN}),
            FieldKind::String => json!({"type": "string"}),
            FieldKind::DateTime => json!({"type": "string", "format": "date-time", "pattern": DATETIME_PATTERN}),
            FieldKind::Date => json!({"type": "string", "format": "date", "pattern": DATE_PATTERN}),
            FieldKind::Number => json!({"type": "number"}),
            FieldKind::Integer => json!({"type": "integer"}),
            FieldKind::Object => json!({"type": "object"}),
            FieldKind::Boolean => json!({"type": "boolean"}),
            FieldKind::Enum(values) => json!({"type": "string", "enum": values}),
        }
    }

    /// The kind called `name` in the catalogue; `None` for unknown names and for `enum`, which
    /// needs its values.
    fn simple(name: &str) -> Option<FieldKind> {
        Some(match name {
            "uuid" => FieldKind::Uuid,
            "string" => FieldKind::String,
            "datetime" => FieldKind::DateTime,
            "date" => FieldKind::Date,
            "number" => FieldKind::Number,
            "integer" => FieldKind::Integer,
            "object" => FieldKind::Object,
            "boolean" => FieldKind::Boolean,
            _ => return None,
        })
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldKind::Enum(values) => {
                f.write_str("enum [")?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v:?}")?;
                }
                f.write_str("]")
            }
            other => f.write_str(other.name()),
        }
    }
}

const KIND_NAMES: &str = "uuid, string, datetime, date, number, integer, object, boolean, enum";

// ------------------------------------------------------------------------------------------------
// Validation errors
// ------------------------------------------------------------------------------------------------

/// Why an upstream event was refused (decision D4: such an event is acked, counted by
/// [`Invalid::reason`], logged once, and sent to nobody).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The catalogue has no such channel.
    UnknownChannel,
    /// The channel has no such schema version.
    UnsupportedVersion,
    /// The channel's schema version does not declare this event type.
    UnknownEventType,
    /// The payload is not a JSON object.
    NotAnObject,
    /// A required field is absent or null.
    MissingField(String),
    /// A field is present but not of its declared kind.
    WrongKind {
        /// The field's name.
        field: String,
        /// The declared kind's name ([`FieldKind::name`]).
        expected: &'static str,
    },
}

impl Invalid {
    /// A stable snake_case label for metrics and logs: `unknown_channel`,
    /// `unsupported_version`, `unknown_type`, `not_an_object`, `missing_field`, `wrong_kind`.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::UnknownChannel => "unknown_channel",
            Invalid::UnsupportedVersion => "unsupported_version",
            Invalid::UnknownEventType => "unknown_type",
            Invalid::NotAnObject => "not_an_object",
            Invalid::MissingField(_) => "missing_field",
            Invalid::WrongKind { .. } => "wrong_kind",
        }
    }
}

/// A human description of what a kind requires, for [`Invalid`]'s `Display`.
fn describe_kind(name: &str) -> &'static str {
    match name {
        "uuid" => "a UUID string (8-4-4-4-12 hexadecimal digits)",
        "string" => "a string",
        "datetime" => "an RFC 3339 date-time string with offset, no leap second (e.g. 2024-05-01T12:30:00Z)",
        "date" => "a calendar date string (YYYY-MM-DD)",
        "number" => "a number",
        "integer" => "an integer (no fractional part; as a float at most 2^53)",
        "object" => "a JSON object",
        "boolean" => "true or false",
        "enum" => "a string among the field's enum values",
        _ => "a value of its declared kind",
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::UnknownChannel => f.write_str("unknown channel"),
            Invalid::UnsupportedVersion => {
                f.write_str("schema version not supported by the channel")
            }
            Invalid::UnknownEventType => {
                f.write_str("event type not declared for the channel's schema version")
            }
            Invalid::NotAnObject => f.write_str("payload is not a JSON object"),
            Invalid::MissingField(field) => {
                write!(f, "required field `{field}` is missing or null")
            }
            Invalid::WrongKind { field, expected } => {
                write!(f, "field `{field}` must be {}", describe_kind(expected))
            }
        }
    }
}

impl std::error::Error for Invalid {}

// ------------------------------------------------------------------------------------------------
// Catalogue loading errors
// ------------------------------------------------------------------------------------------------

/// A catalogue file that cannot be used. Its `Display` names the line, channel, version, event
/// type and field concerned (those that apply) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueError {
    detail: Box<ErrorDetail>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct ErrorDetail {
    line: Option<usize>,
    channel: Option<String>,
    version: Option<String>,
    event: Option<String>,
    field: Option<String>,
    message: String,
}

impl fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.detail;
        f.write_str("invalid event catalogue")?;
        if let Some(line) = d.line {
            write!(f, " at line {line}")?;
        }
        let mut sep = ", ";
        if let Some(channel) = &d.channel {
            write!(f, "{sep}channel `{channel}`")?;
            sep = " ";
        }
        if let Some(version) = &d.version {
            write!(f, "{sep}version {version}")?;
            sep = " ";
        }
        if let Some(event) = &d.event {
            write!(f, "{sep}event `{event}`")?;
            sep = " ";
        }
        if let Some(field) = &d.field {
            write!(f, "{sep}field `{field}`")?;
        }
        write!(f, ": {}", d.message)
    }
}

impl std::error::Error for CatalogueError {}

/// Where in the catalogue the parser is, for error messages.
#[derive(Clone, Default)]
struct Loc<'t> {
    text: &'t str,
    channel: Option<String>,
    version: Option<String>,
    event: Option<String>,
    field: Option<String>,
}

impl Loc<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> CatalogueError {
        let line = self
            .text
            .as_bytes()
            .get(..span.start)
            .map(|before| before.iter().filter(|&&b| b == b'\n').count() + 1);
        CatalogueError {
            detail: Box::new(ErrorDetail {
                line,
                channel: self.channel.clone(),
                version: self.version.clone(),
                event: self.event.clone(),
                field: self.field.clone(),
                message: message.into(),
            }),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Catalogue parsing
// ------------------------------------------------------------------------------------------------

type Entry<'a, 'i> = (
    &'a Spanned<toml::de::DeString<'i>>,
    &'a Spanned<DeValue<'i>>,
);

/// A table's entries in the order they appear in the text.
fn sorted_by_position<'a, 'i>(table: &'a DeTable<'i>) -> Vec<Entry<'a, 'i>> {
    let mut entries: Vec<Entry<'a, 'i>> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

fn expect_table<'a, 'i>(
    loc: &Loc<'_>,
    value: &'a Spanned<DeValue<'i>>,
    what: &str,
) -> Result<&'a DeTable<'i>, CatalogueError> {
    match value.get_ref() {
        DeValue::Table(table) => Ok(table),
        other => Err(loc.error(
            value.span(),
            format!("{what} must be a table (found {})", other.type_str()),
        )),
    }
}

/// The event names the gateway writes itself (`sse::error`, `sse::warning`, `sse::HEARTBEAT`):
/// no catalogue event may take one.
const GATEWAY_EVENTS: [&str; 3] = ["error", "warning", "heartbeat"];

/// The event names `EventSource` uses itself: an `event: open` frame fires the page's `onopen`
/// (read as a reconnect), and `message` is the type of a frame without `event:`.
const EVENTSOURCE_EVENTS: [&str; 2] = ["open", "message"];

/// Channel and event names go into SSE frames, URLs and metric labels: `[a-z0-9._-]{1,128}`.
fn check_name(
    loc: &Loc<'_>,
    span: Range<usize>,
    what: &str,
    name: &str,
) -> Result<(), CatalogueError> {
    if name.is_empty() {
        return Err(loc.error(span, format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(loc.error(
            span,
            format!("{what} name is longer than {MAX_NAME_LEN} bytes"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
    {
        return Err(loc.error(
            span,
            format!(
                "{what} name {name:?} has the character {bad:?}; \
                 only lowercase letters, digits, '.', '_' and '-' are allowed"
            ),
        ));
    }
    // `/api/v1/streams/..` is a step up to clients and proxies (RFC 3986 5.2.4), never this name.
    if name.bytes().all(|b| b == b'.') {
        return Err(loc.error(span, format!("{what} name {name:?} is only dots")));
    }
    Ok(())
}

fn parse_channel(
    loc: &Loc<'_>,
    name: &str,
    value: &Spanned<DeValue<'_>>,
) -> Result<ChannelSchema, CatalogueError> {
    let table = expect_table(loc, value, "a channel")?;
    let mut default_version: Option<(u32, Range<usize>)> = None;
    let mut versions_value = None;
    for (key, v) in sorted_by_position(table) {
        let k: &str = key.get_ref();
        match k {
            "default_version" => {
                let n = match v.get_ref() {
                    DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
                    _ => None,
                };
                match n.map(u32::try_from) {
                    Some(Ok(0)) => {
                        return Err(loc.error(
                            v.span(),
                            "default_version 0 is not allowed: versions start at 1",
                        ))
                    }
                    Some(Ok(n)) => default_version = Some((n, v.span())),
                    _ => {
                        return Err(
                            loc.error(v.span(), "default_version must be a positive integer")
                        )
                    }
                }
            }
            "versions" => versions_value = Some(v),
            other => {
                let message = format!(
                    "unknown key `{other}` in a channel \
                     (expected `default_version`, `versions`)"
                );
                return Err(loc.error(key.span(), message));
            }
        }
    }
    let Some(versions_value) = versions_value else {
        return Err(loc.error(value.span(), "the channel declares no versions"));
    };
    let versions_table = expect_table(loc, versions_value, "`versions`")?;
    let mut versions = BTreeMap::new();
    for (key, v) in sorted_by_position(versions_table) {
        let raw: &str = key.get_ref();
        let loc = Loc {
            version: Some(raw.to_owned()),
            ..loc.clone()
        };
        let number = parse_version_key(raw).ok_or_else(|| {
            loc.error(
                key.span(),
                format!("version key {raw:?} must be a positive integer without leading zeros"),
            )
        })?;
        if number == 0 {
            return Err(loc.error(key.span(), "version 0 is not allowed: versions start at 1"));
        }
        versions.insert(number, parse_version(&loc, v)?);
    }
    if versions.is_empty() {
        return Err(loc.error(versions_value.span(), "the channel declares no versions"));
    }
    let default_version = match default_version {
        Some((n, span)) => {
            if !versions.contains_key(&n) {
                let declared: Vec<String> = versions.keys().map(u32::to_string).collect();
                return Err(loc.error(
                    span,
                    format!(
                        "default_version {n} is not one of the declared versions [{}]",
                        declared.join(", ")
                    ),
                ));
            }
            n
        }
        // Not empty (checked above); the lowest version is the default when none is named.
        None => versions.keys().next().copied().unwrap_or(1),
    };
    Ok(ChannelSchema {
        name: name.to_owned(),
        default_version,
        versions,
    })
}

/// `"1"`, `"2"`, ... (also `"0"`, reported separately); no sign, no leading zeros.
fn parse_version_key(raw: &str) -> Option<u32> {
    let bytes = raw.as_bytes();
    if bytes.is_empty()
        || !bytes.iter().all(u8::is_ascii_digit)
        || (bytes.len() > 1 && bytes.first() == Some(&b'0'))
    {
        return None;
    }
    raw.parse().ok()
}

fn parse_version(
    loc: &Loc<'_>,
    value: &Spanned<DeValue<'_>>,
) -> Result<VersionSchema, CatalogueError> {
    let table = expect_table(loc, value, "a version")?;
    let mut events = BTreeMap::new();
    for (key, v) in sorted_by_position(table) {
        let name: &str = key.get_ref();
        let loc = Loc {
            event: Some(name.to_owned()),
            ..loc.clone()
        };
        check_name(&loc, key.span(), "event type", name)?;
        if GATEWAY_EVENTS.contains(&name) {
            return Err(loc.error(
                key.span(),
                format!(
                    "event type name {name:?} is the gateway's own event; a browser could not \
                     tell the two apart (reserved: {})",
                    GATEWAY_EVENTS.join(", ")
                ),
            ));
        }
        if EVENTSOURCE_EVENTS.contains(&name) {
            return Err(loc.error(
                key.span(),
                format!(
                    "event type name {name:?} is one EventSource gives a meaning of its own (`open` \
                     fires onopen, `message` is a frame without a type); reserved: {}",
                    EVENTSOURCE_EVENTS.join(", ")
                ),
            ));
        }
        let table = expect_table(&loc, v, "an event type")?;
        let mut fields = Vec::new();
        for (fkey, fvalue) in sorted_by_position(table) {
            let fname: &str = fkey.get_ref();
            let loc = Loc {
                field: Some(fname.to_owned()),
                ..loc.clone()
            };
            if fname.is_empty() {
                return Err(loc.error(fkey.span(), "field name is empty"));
            }
            fields.push(parse_field(&loc, fname, fvalue)?);
        }
        events.insert(
            name.to_owned(),
            EventSchema {
                name: name.to_owned(),
                fields,
            },
        );
    }
    if events.is_empty() {
        return Err(loc.error(value.span(), "the version declares no event types"));
    }
    Ok(VersionSchema { events })
}

fn parse_field(
    loc: &Loc<'_>,
    name: &str,
    value: &Spanned<DeValue<'_>>,
) -> Result<FieldSpec, CatalogueError> {
    match value.get_ref() {
        DeValue::String(s) => {
            let s: &str = s;
            let (kind_name, required) = match s.strip_suffix('?') {
                Some(base) => (base, false),
                None => (s, true),
            };
            let kind = match FieldKind::simple(kind_name) {
                Some(kind) => kind,
                None if kind_name == "enum" => return Err(loc.error(
                    value.span(),
                    "an enum needs its values: write { kind = \"enum\", values = [\"a\", \"b\"] }",
                )),
                None => return Err(unknown_kind(loc, value.span(), s)),
            };
            Ok(FieldSpec {
                name: name.to_owned(),
                kind,
                required,
            })
        }
        DeValue::Table(table) => parse_field_table(loc, name, value.span(), table),
        other => Err(loc.error(
            value.span(),
            format!(
                "a field must be a kind string (\"uuid\", \"date?\", ...) or a table \
                 ({{ kind = \"...\", required = false }}), found {}",
                other.type_str()
            ),
        )),
    }
}

fn unknown_kind(loc: &Loc<'_>, span: Range<usize>, written: &str) -> CatalogueError {
    loc.error(
        span,
        format!("unknown field kind {written:?} (known kinds: {KIND_NAMES}; a trailing '?' marks an optional field)"),
    )
}

fn parse_field_table(
    loc: &Loc<'_>,
    name: &str,
    span: Range<usize>,
    table: &DeTable<'_>,
) -> Result<FieldSpec, CatalogueError> {
    let mut kind_name: Option<(&str, Range<usize>)> = None;
    let mut required = true;
    let mut values: Option<(Vec<String>, Range<usize>)> = None;
    for (key, v) in sorted_by_position(table) {
        let k: &str = key.get_ref();
        match (k, v.get_ref()) {
            ("kind", DeValue::String(s)) => kind_name = Some((&**s, v.span())),
            ("required", DeValue::Boolean(b)) => required = *b,
            ("values", DeValue::Array(items)) => {
                let mut list: Vec<String> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for item in items.iter() {
                    let DeValue::String(s) = item.get_ref() else {
                        return Err(loc.error(item.span(), "enum values must be strings"));
                    };
                    let s: &str = s;
                    if !seen.insert(s) {
                        return Err(loc.error(
                            item.span(),
                            format!("enum value {s:?} is listed twice"),
                        ));
                    }
                    list.push(s.to_owned());
                }
                values = Some((list, v.span()));
            }
            ("kind", _) => return Err(loc.error(v.span(), "`kind` must be a string")),
            ("required", _) => return Err(loc.error(v.span(), "`required` must be true or false")),
            ("values", _) => {
                return Err(loc.error(v.span(), "`values` must be an array of strings"))
            }
            (other, _) => {
                return Err(loc.error(
                    key.span(),
                    format!(
                        "unknown key `{other}` in a field table (expected `kind`, `required`, `values`)"
                    ),
                ))
            }
        }
    }
    let Some((kind_name, kind_span)) = kind_name else {
        return Err(loc.error(span, "the field table has no `kind`"));
    };
    let kind = if kind_name == "enum" {
        match values {
            Some((list, _)) if !list.is_empty() => FieldKind::Enum(list),
            Some((_, values_span)) => {
                return Err(loc.error(values_span, "an enum needs at least one value"))
            }
            None => return Err(loc.error(span, "an enum needs `values = [\"a\", \"b\", ...]`")),
        }
    } else {
        let Some(kind) = FieldKind::simple(kind_name) else {
            if kind_name.ends_with('?') {
                return Err(loc.error(
                    kind_span,
                    "in the table form, mark an optional field with `required = false`, not '?'",
                ));
            }
            return Err(unknown_kind(loc, kind_span, kind_name));
        };
        if let Some((_, values_span)) = values {
            return Err(loc.error(
                values_span,
                format!("`values` is only for kind \"enum\", not {kind_name:?}"),
            ));
        }
        kind
    };
    Ok(FieldSpec {
        name: name.to_owned(),
        kind,
        required,
    })
}

// ------------------------------------------------------------------------------------------------
// Value checkers (hand-written; no panics on any input)
// ------------------------------------------------------------------------------------------------

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, hexadecimal digits in either case.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The value of an all-digit byte slice (at most 4 digits here, so no overflow).
fn digits(b: Option<&[u8]>) -> Option<u32> {
    let b = b?;
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// `YYYY-MM-DD` at the start of `b` (exactly 10 bytes are looked at), a real calendar date.
fn date_prefix_ok(b: &[u8]) -> bool {
    let (Some(year), Some(month), Some(day)) = (
        digits(b.get(0..4)),
        digits(b.get(5..7)),
        digits(b.get(8..10)),
    ) else {
        return false;
    };
    b.get(4) == Some(&b'-')
        && b.get(7) == Some(&b'-')
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
}

/// `YYYY-MM-DD`, a real calendar date (leap years by the Gregorian rule).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10 && date_prefix_ok(b)
}

/// RFC 3339 date-time as JSON Schema's `date-time` reads it (the contract the UI is given):
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` (`t` and `z` too; no space for the `T`,
/// which JavaScript's `Date` need not read), with real calendar dates, hour < 24, minute < 60,
/// second < 60, offset hour < 24. Not a leap second (`:60`), which RFC 3339 allows: browsers'
/// `Date` reads it as Invalid Date, and no publisher's clock writes one.
fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    if !date_prefix_ok(b) || !matches!(b.get(10), Some(b'T' | b't')) {
        return false;
    }
    let (Some(hour), Some(minute), Some(second)) = (
        digits(b.get(11..13)),
        digits(b.get(14..16)),
        digits(b.get(17..19)),
    ) else {
        return false;
    };
    if b.get(13) != Some(&b':') || b.get(16) != Some(&b':') {
        return false;
    }
    if hour >= 24 || minute >= 60 || second >= 60 {
        return false;
    }
    let mut rest = b.get(19..).unwrap_or_default();
    if let Some((b'.', after_dot)) = rest.split_first() {
        let n = after_dot.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = after_dot.get(n..).unwrap_or_default();
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            matches!((digits(Some(&[*h1, *h2][..])), digits(Some(&[*m1, *m2][..]))), (Some(h), Some(m)) if h < 24 && m < 60)
        }
        _ => false,
    }
}

// ------------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V2_TOML: &str = include_str!("../tests/fixtures/catalogue_v2.toml");

    const DEAL: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
    const CLIENT: &str = "6fa459ea-ee8a-4ca4-894e-db77e160355e";
    const OTHER: &str = "0E984725-C51C-4BF4-9960-E1C80E27ABA0";

    fn seed() -> Catalogue {
        Catalogue::seed()
    }

    fn v2() -> Catalogue {
        Catalogue::from_toml(V2_TOML).expect("the v2 fixture is a valid catalogue")
    }

    fn err(text: &str) -> String {
        match Catalogue::from_toml(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// One valid example per seed event type: (channel, event type, payload).
    fn seed_examples() -> Vec<(&'static str, &'static str, Value)> {
        vec![
            (
                "deals",
                "deal.created",
                json!({
                "deal_id": DEAL, "client_id": CLIENT, "title": "Fleet insurance",
                "status": "draft", "created_at": "2024-05-01T12:30:00Z"}),
            ),
            (
                "deals",
                "deal.updated",
                json!({
                "deal_id": DEAL, "changes": {"status": "issuing"},
                "updated_at": "2024-05-01T12:31:00.123+03:00", "version": 5}),
            ),
            (
                "deals",
                "deal.journal.appended",
                json!({
                "deal_id": DEAL, "entry_id": CLIENT, "author_id": OTHER,
                "text": "Called the client", "created_at": "2024-05-01T12:32:00Z"}),
            ),
            (
                "deals",
                "policy.status.changed",
                json!({
                "policy_id": OTHER, "deal_id": DEAL, "status": "active",
                "effective_from": "2024-06-01", "effective_to": "2025-05-31"}),
            ),
            (
                "deals",
                "calculation.added",
                json!({
                "calculation_id": CLIENT, "deal_id": DEAL,
                "insurance_company": "Ingosstrakh", "premium_amount": 12345.67}),
            ),
            (
                "tasks",
                "task.created",
                json!({
                "task_id": DEAL, "subject": "Prepare offer", "assignee_id": CLIENT,
                "due_date": "2024-02-29", "status": "open"}),
            ),
            (
                "tasks",
                "task.updated",
                json!({
                "task_id": DEAL, "changes": {"status": "in_progress"},
                "updated_at": "2024-05-01T09:00:00-05:00"}),
            ),
            (
                "tasks",
                "task.reminder",
                json!({
                "task_id": DEAL, "remind_at": "2024-05-02T08:00:00Z", "channel": "sse"}),
            ),
            (
                "notifications",
                "notification.sent",
                json!({
                "notification_id": DEAL, "template": "deal.status.changed",
                "title": "Deal issued", "body": "The deal is issued",
                "created_at": "2024-05-01T12:30:00Z"}),
            ),
            (
                "notifications",
                "notification.read",
                json!({
                "notification_id": DEAL, "read_at": "2024-05-01T12:35:10Z"}),
            ),
            (
                "payments",
                "payment.status.changed",
                json!({
                "payment_id": DEAL, "deal_id": CLIENT, "status": "received",
                "actual_date": "2024-05-03", "amount": 12345.67, "currency": "RUB"}),
            ),
            (
                "payments",
                "payment.overdue",
                json!({
                "payment_id": DEAL, "deal_id": CLIENT, "due_date": "2024-04-30",
                "amount": 12345.67}),
            ),
        ]
    }

    fn one_field(kind: &str) -> Catalogue {
        Catalogue::from_toml(&format!("[channels.c.versions.1.e]\nf = {kind}\n"))
            .expect("single-field catalogue parses")
    }

    fn check(cat: &Catalogue, payload: Value) -> Result<(), Invalid> {
        cat.validate("c", 1, "e", &payload)
    }

    // ---- the seed ------------------------------------------------------------------------

    #[test]
    fn seed_catalogue_parses_and_lists_four_channels() {
        let cat = Catalogue::from_toml(SEED_TOML).expect("seed parses");
        assert_eq!(cat, seed());
        let names: Vec<&str> = cat.channel_names().collect();
        assert_eq!(names, ["deals", "notifications", "payments", "tasks"]);
        for ch in cat.channels() {
            assert_eq!(ch.default_version(), 1, "{}", ch.name());
            assert_eq!(ch.versions(), [1]);
            assert!(ch.supports(1));
            assert!(!ch.supports(2));
            assert!(!ch.supports(0));
        }
    }

    #[test]
    fn seed_catalogue_has_exactly_the_seed_event_types_per_channel() {
        let cat = seed();
        let expected: [(&str, &[&str]); 4] = [
            (
                "deals",
                &[
                    "calculation.added",
                    "deal.created",
                    "deal.journal.appended",
                    "deal.updated",
                    "policy.status.changed",
                ],
            ),
            ("tasks", &["task.created", "task.reminder", "task.updated"]),
            ("notifications", &["notification.read", "notification.sent"]),
            ("payments", &["payment.overdue", "payment.status.changed"]),
        ];
        for (channel, types) in expected {
            let v1 = cat
                .channel(channel)
                .and_then(|c| c.version(1))
                .expect(channel);
            let got: Vec<&str> = v1.event_types().map(|(name, _)| name).collect();
            assert_eq!(got, types, "{channel}");
        }
    }

    #[test]
    fn seed_event_fields_follow_the_seed_tables_in_order_and_all_are_required() {
        let cat = seed();
        let fields = |ch: &str, ev: &str| -> Vec<(String, &'static str)> {
            cat.channel(ch)
                .and_then(|c| c.version(1))
                .and_then(|v| v.event(ev))
                .expect(ev)
                .fields()
                .iter()
                .map(|f| {
                    assert!(f.required, "{ev}.{}", f.name);
                    (f.name.clone(), f.kind.name())
                })
                .collect()
        };
        let s = |pairs: &[(&str, &'static str)]| -> Vec<(String, &'static str)> {
            pairs.iter().map(|(n, k)| ((*n).to_owned(), *k)).collect()
        };
        assert_eq!(
            fields("deals", "deal.created"),
            s(&[
                ("deal_id", "uuid"),
                ("client_id", "uuid"),
                ("title", "string"),
                ("status", "string"),
                ("created_at", "datetime")
            ])
        );
        assert_eq!(
            fields("deals", "deal.updated"),
            s(&[
                ("deal_id", "uuid"),
                ("changes", "object"),
                ("updated_at", "datetime"),
                ("version", "integer")
            ])
        );
        assert_eq!(
            fields("deals", "deal.journal.appended"),
            s(&[
                ("deal_id", "uuid"),
                ("entry_id", "uuid"),
                ("author_id", "uuid"),
                ("text", "string"),
                ("created_at", "datetime")
            ])
        );
        assert_eq!(
            fields("deals", "policy.status.changed"),
            s(&[
                ("policy_id", "uuid"),
                ("deal_id", "uuid"),
                ("status", "string"),
                ("effective_from", "date"),
                ("effective_to", "date")
            ])
        );
        assert_eq!(
            fields("deals", "calculation.added"),
            s(&[
                ("calculation_id", "uuid"),
                ("deal_id", "uuid"),
                ("insurance_company", "string"),
                ("premium_amount", "number")
            ])
        );
        assert_eq!(
            fields("tasks", "task.created"),
            s(&[
                ("task_id", "uuid"),
                ("subject", "string"),
                ("assignee_id", "uuid"),
                ("due_date", "date"),
                ("status", "string")
            ])
        );
        assert_eq!(
            fields("tasks", "task.updated"),
            s(&[
                ("task_id", "uuid"),
                ("changes", "object"),
                ("updated_at", "datetime")
            ])
        );
        assert_eq!(
            fields("tasks", "task.reminder"),
            s(&[
                ("task_id", "uuid"),
                ("remind_at", "datetime"),
                ("channel", "string")
            ])
        );
        assert_eq!(
            fields("notifications", "notification.sent"),
            s(&[
                ("notification_id", "uuid"),
                ("template", "string"),
                ("title", "string"),
                ("body", "string"),
                ("created_at", "datetime")
            ])
        );
        assert_eq!(
            fields("notifications", "notification.read"),
            s(&[("notification_id", "uuid"), ("read_at", "datetime")])
        );
        assert_eq!(
            fields("payments", "payment.status.changed"),
            s(&[
                ("payment_id", "uuid"),
                ("deal_id", "uuid"),
                ("status", "string"),
                ("actual_date", "date"),
                ("amount", "number"),
                ("currency", "string")
            ])
        );
        assert_eq!(
            fields("payments", "payment.overdue"),
            s(&[
                ("payment_id", "uuid"),
                ("deal_id", "uuid"),
                ("due_date", "date"),
                ("amount", "number")
            ])
        );
    }

    #[test]
    fn one_example_payload_per_seed_event_type_validates() {
        let cat = seed();
        let examples = seed_examples();
        let types: std::collections::BTreeSet<(String, String)> = cat
            .channels()
            .flat_map(|c| c.version(1).into_iter().flat_map(|v| v.event_types().map(|(t, _)| (c.name().to_string(), t.to_string()))))
            .collect();
        let covered: std::collections::BTreeSet<(String, String)> =
            examples.iter().map(|(c, e, _)| (c.to_string(), e.to_string())).collect();
        assert_eq!(covered, types, "an example for each seed event type");
        assert_eq!(examples.len(), types.len(), "one example each");
        for (channel, event, payload) in examples {
            assert_eq!(
                cat.validate(channel, 1, event, &payload),
                Ok(()),
                "{channel} {event}"
            );
        }
    }

    #[test]
    fn undeclared_extra_fields_are_allowed() {
        let payload = json!({"notification_id": DEAL, "read_at": "2024-05-01T12:35:10Z",
                             "device": {"kind": "web"}, "extra": [1, 2]});
        assert_eq!(
            seed().validate("notifications", 1, "notification.read", &payload),
            Ok(())
        );
    }

    // ---- each Invalid variant ------------------------------------------------------------

    #[test]
    fn unknown_channel_is_unknown_channel() {
        let r = seed().validate("chat", 1, "deal.created", &json!({}));
        assert_eq!(r, Err(Invalid::UnknownChannel));
        assert_eq!(Invalid::UnknownChannel.reason(), "unknown_channel");
    }

    #[test]
    fn version_two_of_a_seed_channel_is_unsupported_version() {
        let payload = &seed_examples()[0].2;
        let r = seed().validate("deals", 2, "deal.created", payload);
        assert_eq!(r, Err(Invalid::UnsupportedVersion));
        assert_eq!(
            seed().validate("deals", 0, "deal.created", payload),
            Err(Invalid::UnsupportedVersion)
        );
        assert_eq!(Invalid::UnsupportedVersion.reason(), "unsupported_version");
    }

    #[test]
    fn event_type_of_another_channel_is_unknown_event_type() {
        let r = seed().validate("tasks", 1, "deal.created", &json!({}));
        assert_eq!(r, Err(Invalid::UnknownEventType));
        assert_eq!(Invalid::UnknownEventType.reason(), "unknown_type");
    }

    #[test]
    fn array_payload_is_not_an_object() {
        let cat = seed();
        for payload in [json!([1]), json!("x"), json!(null), json!(3), json!(true)] {
            assert_eq!(
                cat.validate("tasks", 1, "task.reminder", &payload),
                Err(Invalid::NotAnObject)
            );
        }
        assert_eq!(Invalid::NotAnObject.reason(), "not_an_object");
    }

    #[test]
    fn deal_created_missing_title_is_missing_field() {
        let mut payload = seed_examples()[0].2.clone();
        payload.as_object_mut().map(|o| o.remove("title"));
        let r = seed().validate("deals", 1, "deal.created", &payload);
        assert_eq!(r, Err(Invalid::MissingField("title".into())));
        assert_eq!(r.unwrap_err().reason(), "missing_field");
    }

    #[test]
    fn null_for_a_required_field_is_missing_field() {
        let mut payload = seed_examples()[0].2.clone();
        payload["client_id"] = Value::Null;
        let r = seed().validate("deals", 1, "deal.created", &payload);
        assert_eq!(r, Err(Invalid::MissingField("client_id".into())));
    }

    #[test]
    fn first_failing_field_in_catalogue_order_is_reported() {
        let r = seed().validate("deals", 1, "deal.created", &json!({"title": 1}));
        assert_eq!(r, Err(Invalid::MissingField("deal_id".into())));
    }

    #[test]
    fn deal_updated_with_fractional_version_is_wrong_kind() {
        let mut payload = seed_examples()[1].2.clone();
        payload["version"] = json!(5.5);
        let r = seed().validate("deals", 1, "deal.updated", &payload);
        assert_eq!(
            r,
            Err(Invalid::WrongKind {
                field: "version".into(),
                expected: "integer"
            })
        );
        assert_eq!(r.unwrap_err().reason(), "wrong_kind");
    }

    #[test]
    fn invalid_messages_are_clear() {
        assert_eq!(
            Invalid::MissingField("title".into()).to_string(),
            "required field `title` is missing or null"
        );
        let wrong = Invalid::WrongKind {
            field: "deal_id".into(),
            expected: "uuid",
        };
        assert_eq!(
            wrong.to_string(),
            "field `deal_id` must be a UUID string (8-4-4-4-12 hexadecimal digits)"
        );
        assert_eq!(
            Invalid::NotAnObject.to_string(),
            "payload is not a JSON object"
        );
    }

    // ---- kinds: accept / reject edges ----------------------------------------------------

    #[test]
    fn uuid_accepts_either_case_and_rejects_malformed() {
        let c = one_field("\"uuid\"");
        assert_eq!(check(&c, json!({"f": DEAL})), Ok(()));
        assert_eq!(check(&c, json!({"f": OTHER})), Ok(()));
        assert_eq!(
            check(&c, json!({"f": "00000000-0000-0000-0000-000000000000"})),
            Ok(())
        );
        for bad in [
            "",
            "3f2504e04f8941d39a0c0305e82c3301",
            "3f2504e0-4f89-41d3-9a0c-0305e82c330",
            "3f2504e0-4f89-41d3-9a0c-0305e82c33011",
            "3f2504e0-4f89-41d3-9a0c_0305e82c3301",
            "3f2504g0-4f89-41d3-9a0c-0305e82c3301",
            "{3f2504e0-4f89-41d3-9a0c-0305e82c3301}",
            "3f2504e0-4f89-41d3-9a0c-0305e82c330é",
            " 3f2504e0-4f89-41d3-9a0c-0305e82c3301",
        ] {
            assert!(!is_uuid(bad), "{bad:?}");
        }
        let wrong = Err(Invalid::WrongKind {
            field: "f".into(),
            expected: "uuid",
        });
        assert_eq!(check(&c, json!({"f": "not-a-uuid"})), wrong);
        assert_eq!(check(&c, json!({"f": 12})), wrong);
    }

    #[test]
    fn date_accepts_feb_29_only_in_leap_years() {
        assert!(is_date("2024-02-29"));
        assert!(is_date("2000-02-29"));
        assert!(!is_date("2023-02-29"));
        assert!(!is_date("1900-02-29"));
        assert!(!is_date("2100-02-29"));
        assert!(is_date("2023-02-28"));
        assert!(is_date("2023-12-31"));
        assert!(is_date("0000-01-01"));
        for bad in [
            "2023-04-31",
            "2023-13-01",
            "2023-00-10",
            "2023-01-00",
            "2023-1-01",
            "2023/01/01",
            "20230101",
            "2023-01-01T00:00:00Z",
            "2023-01-01 ",
            "",
            "２０２３-01-01",
            "+023-01-01",
            "2023-01-0a",
        ] {
            assert!(!is_date(bad), "{bad:?}");
        }
        let c = one_field("\"date\"");
        assert_eq!(check(&c, json!({"f": "2024-02-29"})), Ok(()));
        assert_eq!(
            check(&c, json!({"f": "2023-02-29"})),
            Err(Invalid::WrongKind {
                field: "f".into(),
                expected: "date"
            })
        );
    }

    #[test]
    fn datetime_accepts_rfc3339_and_rejects_out_of_range_parts() {
        for good in [
            "2024-05-01T12:30:00Z",
            "2024-05-01t12:30:00z",
            "2024-05-01T12:30:00.1Z",
            "2024-05-01T12:30:00.123456789+03:00",
            "2024-02-29T00:00:00+23:59",
            "1999-12-31T23:59:59-12:00",
        ] {
            assert!(is_datetime(good), "{good:?}");
        }
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T12:30Z",
            "2024-05-01T12:30:00",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:60:00Z",
            "2024-05-01T12:30:61Z",
            "2023-02-29T12:30:00Z",
            "2024-05-01T12:30:00.Z",
            "2024-05-01T12:30:00+0300",
            "2024-05-01T12:30:00+24:00",
            "2024-05-01T12:30:00+03:60",
            "2024-05-01X12:30:00Z",
            "2024-05-01T12:30:00ZZ",
            "2024-05-01T12:30:00+03:00 ",
            "2024-05-01T1:30:00Z",
            "2024-05-01T12:30:00,5Z",
            "2024-05-01T12:30:00 Z",
            "2024-05-01T12:30:00.5.5Z",
            // A space for the `T` (JSON Schema's date-time does not take it, nor need `Date`).
            "2024-05-01 12:30:00Z",
            // A leap second, even at 23:59 UTC: browsers' `Date` cannot read it.
            "2024-05-01T12:30:60Z",
            "2024-05-01T23:59:60+01:00",
            "2016-12-31T23:59:60Z",
            "2016-12-31T18:59:60-05:00",
            "2017-01-01T02:59:60.5+03:00",
        ] {
            assert!(!is_datetime(bad), "{bad:?}");
        }
    }

    #[test]
    fn integer_is_json_schemas_integer_and_accepts_64_bit_extremes() {
        let c = one_field("\"integer\"");
        assert_eq!(check(&c, json!({"f": 5})), Ok(()));
        assert_eq!(check(&c, json!({"f": -5})), Ok(()));
        assert_eq!(check(&c, json!({"f": i64::MIN})), Ok(()));
        assert_eq!(check(&c, json!({"f": u64::MAX})), Ok(()));
        let parsed = |text: &str| -> Value { serde_json::from_str(&format!(r#"{{"f": {text}}}"#)).expect("json") };
        // What JSON Schema's `integer` (the published contract) accepts: no fractional part.
        for ok in ["1.0", "-3.0", "1e3", "2.5e1", "0.5e1", "9007199254740992.0", "-9007199254740992.0"] {
            assert_eq!(check(&c, parsed(ok)), Ok(()), "{ok}");
        }
        let wrong = Err(Invalid::WrongKind {
            field: "f".into(),
            expected: "integer",
        });
        assert_eq!(check(&c, json!({"f": 1.5})), wrong);
        // Past 2^53 a float no longer holds every integer: the value sent may not be the one meant.
        for bad in ["1e300", "9007199254740994.0", "1.0000000001"] {
            assert_eq!(check(&c, parsed(bad)), wrong, "{bad}");
        }
        assert_eq!(check(&c, json!({"f": "12"})), wrong);
    }

    #[test]
    fn number_rejects_a_numeric_string() {
        let c = one_field("\"number\"");
        assert_eq!(check(&c, json!({"f": 12345.67})), Ok(()));
        assert_eq!(check(&c, json!({"f": 0})), Ok(()));
        assert_eq!(check(&c, json!({"f": -1e300})), Ok(()));
        assert_eq!(
            check(&c, json!({"f": "12"})),
            Err(Invalid::WrongKind {
                field: "f".into(),
                expected: "number"
            })
        );
    }

    #[test]
    fn string_object_and_boolean_accept_only_their_json_type() {
        let s = one_field("\"string\"");
        assert_eq!(check(&s, json!({"f": ""})), Ok(()));
        assert!(check(&s, json!({"f": 1})).is_err());
        let o = one_field("\"object\"");
        assert_eq!(check(&o, json!({"f": {}})), Ok(()));
        assert!(check(&o, json!({"f": []})).is_err());
        assert!(check(&o, json!({"f": "{}"})).is_err());
        let b = one_field("\"boolean\"");
        assert_eq!(check(&b, json!({"f": false})), Ok(()));
        assert!(check(&b, json!({"f": "true"})).is_err());
        assert!(check(&b, json!({"f": 1})).is_err());
    }

    #[test]
    fn enum_accepts_listed_values_only() {
        let c = one_field("{ kind = \"enum\", values = [\"sse\", \"email\"] }");
        assert_eq!(check(&c, json!({"f": "sse"})), Ok(()));
        let wrong = Err(Invalid::WrongKind {
            field: "f".into(),
            expected: "enum",
        });
        assert_eq!(check(&c, json!({"f": "SSE"})), wrong);
        assert_eq!(check(&c, json!({"f": 1})), wrong);
        let spec = &c
            .channel("c")
            .and_then(|c| c.version(1))
            .and_then(|v| v.event("e"))
            .expect("e")
            .fields()[0];
        assert_eq!(
            spec.kind,
            FieldKind::Enum(vec!["sse".into(), "email".into()])
        );
        assert_eq!(spec.kind.to_string(), "enum [\"sse\", \"email\"]");
    }

    #[test]
    fn null_for_an_optional_field_is_accepted_but_a_wrong_kind_is_not() {
        for c in [
            one_field("\"date?\""),
            one_field("{ kind = \"date\", required = false }"),
        ] {
            assert_eq!(check(&c, json!({"f": null})), Ok(()));
            assert_eq!(check(&c, json!({})), Ok(()));
            assert_eq!(check(&c, json!({"f": "2024-01-31"})), Ok(()));
            assert_eq!(
                check(&c, json!({"f": "2024-01-32"})),
                Err(Invalid::WrongKind {
                    field: "f".into(),
                    expected: "date"
                })
            );
        }
        let optional_enum = one_field("{ kind = \"enum\", values = [\"a\"], required = false }");
        assert_eq!(check(&optional_enum, json!({"f": null})), Ok(()));
    }

    #[test]
    fn default_version_falls_back_to_the_lowest_version() {
        let cat = Catalogue::from_toml(
            "[channels.c.versions.3.e]\n[channels.c.versions.2.e]\nf = \"uuid\"\n",
        )
        .expect("parses");
        let ch = cat.channel("c").expect("c");
        assert_eq!(ch.default_version(), 2);
        assert_eq!(ch.versions(), [2, 3]);
        assert_eq!(cat.validate("c", 3, "e", &json!({})), Ok(()));
    }

    // ---- version 2 fixture ---------------------------------------------------------------

    #[test]
    fn v2_fixture_loads_with_two_deals_versions_and_default_one() {
        let cat = v2();
        let deals = cat.channel("deals").expect("deals");
        assert_eq!(deals.versions(), [1, 2]);
        assert_eq!(deals.default_version(), 1);
        assert!(deals.supports(2));
        assert_eq!(
            cat.channel("tasks").map(ChannelSchema::versions),
            Some(vec![1])
        );
        let created = deals
            .version(2)
            .and_then(|v| v.event("deal.created"))
            .expect("v2");
        let names: Vec<&str> = created.fields().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "deal_id",
                "client_id",
                "owner_id",
                "name",
                "status",
                "created_at"
            ]
        );
        let v1_types: Vec<&str> = deals
            .version(1)
            .expect("v1")
            .event_types()
            .map(|e| e.0)
            .collect();
        let v2_types: Vec<&str> = deals
            .version(2)
            .expect("v2")
            .event_types()
            .map(|e| e.0)
            .collect();
        assert_eq!(v1_types, v2_types);
        // Version 1 of every channel is the seed, unchanged.
        for name in seed().channel_names() {
            assert_eq!(
                cat.channel(name).and_then(|c| c.version(1)),
                seed().channel(name).and_then(|c| c.version(1)),
                "{name}"
            );
        }
    }

    #[test]
    fn v2_fixture_validates_v1_and_v2_deal_created_differently() {
        let cat = v2();
        let v1_payload = seed_examples()[0].2.clone();
        let v2_payload = json!({
            "deal_id": DEAL, "client_id": CLIENT, "owner_id": OTHER, "name": "Fleet insurance",
            "status": "draft", "created_at": "2024-05-01T12:30:00Z"});
        assert_eq!(
            cat.validate("deals", 1, "deal.created", &v1_payload),
            Ok(())
        );
        assert_eq!(
            cat.validate("deals", 2, "deal.created", &v2_payload),
            Ok(())
        );
        assert_eq!(
            cat.validate("deals", 2, "deal.created", &v1_payload),
            Err(Invalid::MissingField("owner_id".into()))
        );
        assert_eq!(
            cat.validate("deals", 1, "deal.created", &v2_payload),
            Err(Invalid::MissingField("title".into()))
        );
        let mut v2_without_name = v2_payload.clone();
        v2_without_name.as_object_mut().map(|o| o.remove("name"));
        assert_eq!(
            cat.validate("deals", 2, "deal.created", &v2_without_name),
            Err(Invalid::MissingField("name".into()))
        );
        assert_eq!(
            cat.validate("tasks", 2, "task.created", &json!({})),
            Err(Invalid::UnsupportedVersion)
        );
    }

    // ---- JSON Schema -----------------------------------------------------------------------

    #[test]
    fn field_kinds_map_to_json_schema_fragments() {
        assert_eq!(
            FieldKind::Uuid.json_schema(),
            json!({"type":"string","format":"uuid","pattern":UUID_PATTERN})
        );
        assert_eq!(
            FieldKind::DateTime.json_schema(),
            json!({"type":"string","format":"date-time","pattern":DATETIME_PATTERN})
        );
        assert_eq!(
            FieldKind::Date.json_schema(),
            json!({"type":"string","format":"date","pattern":DATE_PATTERN})
        );
        assert_eq!(FieldKind::String.json_schema(), json!({"type":"string"}));
        assert_eq!(FieldKind::Number.json_schema(), json!({"type":"number"}));
        assert_eq!(FieldKind::Integer.json_schema(), json!({"type":"integer"}));
        assert_eq!(FieldKind::Object.json_schema(), json!({"type":"object"}));
        assert_eq!(FieldKind::Boolean.json_schema(), json!({"type":"boolean"}));
        assert_eq!(
            FieldKind::Enum(vec!["a".into(), "b".into()]).json_schema(),
            json!({"type":"string","enum":["a","b"]})
        );
    }

    #[test]
    fn event_json_schema_lists_required_fields_and_makes_optional_ones_nullable() {
        let cat = Catalogue::from_toml(
            "[channels.c.versions.1.e]\nid = \"uuid\"\nwhen = \"date?\"\n\
             mode = { kind = \"enum\", values = [\"a\"], required = false }\n",
        )
        .expect("parses");
        let ev = cat
            .channel("c")
            .and_then(|c| c.version(1))
            .and_then(|v| v.event("e"))
            .expect("e");
        assert_eq!(
            ev.json_schema(),
            json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "e",
                "type": "object",
                "properties": {
                    "id": {"type": "string", "format": "uuid", "pattern": UUID_PATTERN},
                    "when": {"type": ["string", "null"], "format": "date", "pattern": DATE_PATTERN},
                    "mode": {"type": ["string", "null"], "enum": ["a", null]},
                },
                "required": ["id"],
                "additionalProperties": true,
            })
        );
        let seed_schema = seed()
            .channel("deals")
            .and_then(|c| c.version(1))
            .and_then(|v| v.event("deal.created"))
            .expect("deal.created")
            .json_schema();
        assert_eq!(
            seed_schema["required"],
            json!(["deal_id", "client_id", "title", "status", "created_at"])
        );
    }

    // ---- catalogue errors ------------------------------------------------------------------

    #[test]
    fn default_version_not_among_versions_is_a_catalogue_error() {
        let e = err("[channels.deals]\ndefault_version = 2\n[channels.deals.versions.1.\"deal.created\"]\nid = \"uuid\"\n");
        assert!(e.contains("channel `deals`"), "{e}");
        assert!(
            e.contains("default_version 2 is not one of the declared versions [1]"),
            "{e}"
        );
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn version_zero_is_a_catalogue_error() {
        let e = err("[channels.c.versions.0.e]\nid = \"uuid\"\n");
        assert!(e.contains("version 0 is not allowed"), "{e}");
        let e = err("[channels.c]\ndefault_version = 0\n[channels.c.versions.1.e]\n");
        assert!(e.contains("default_version 0"), "{e}");
        let e = err("[channels.c.versions.01.e]\n");
        assert!(e.contains("positive integer"), "{e}");
        let e = err("[channels.c.versions.v1.e]\n");
        assert!(e.contains("positive integer"), "{e}");
        let e = err("[channels.c]\ndefault_version = \"1\"\n[channels.c.versions.1.e]\n");
        assert!(
            e.contains("default_version must be a positive integer"),
            "{e}"
        );
    }

    #[test]
    fn empty_channel_or_version_or_catalogue_is_a_catalogue_error() {
        let e = err("[channels.c]\ndefault_version = 1\n");
        assert!(
            e.contains("channel `c`: the channel declares no versions"),
            "{e}"
        );
        let e = err("[channels.c.versions]\n");
        assert!(e.contains("no versions"), "{e}");
        let e = err("[channels.c.versions.1]\n");
        assert!(
            e.contains("channel `c` version 1: the version declares no event types"),
            "{e}"
        );
        assert!(err("").contains("no channels"));
        assert!(err("[channels]\n").contains("no channels"));
    }

    #[test]
    fn unknown_kind_is_a_catalogue_error_naming_the_field() {
        let e =
            err("[channels.deals.versions.1.\"deal.created\"]\nid = \"uuid\"\ntitle = \"strng\"\n");
        assert!(
            e.starts_with("invalid event catalogue at line 3, channel `deals` version 1 event `deal.created` field `title`: unknown field kind \"strng\""),
            "{e}"
        );
        assert!(err("[channels.c.versions.1.e]\nf = { kind = \"uid\" }\n")
            .contains("unknown field kind"));
        assert!(err("[channels.c.versions.1.e]\nf = \"UUID\"\n").contains("unknown field kind"));
        assert!(err("[channels.c.versions.1.e]\nf = \"uuid??\"\n").contains("unknown field kind"));
        assert!(err("[channels.c.versions.1.e]\nf = 3\n").contains("found integer"));
        assert!(err("[channels.c.versions.1.e]\nf = { kind = \"uuid?\" }\n")
            .contains("required = false"));
        assert!(err("[channels.c.versions.1.e]\nf = { required = false }\n").contains("no `kind`"));
        assert!(
            err("[channels.c.versions.1.e]\nf = { kind = \"uuid\", requird = false }\n")
                .contains("unknown key `requird`")
        );
        assert!(
            err("[channels.c.versions.1.e]\nf = { kind = \"uuid\", required = \"no\" }\n")
                .contains("true or false")
        );
    }

    #[test]
    fn enum_without_values_is_a_catalogue_error() {
        assert!(err("[channels.c.versions.1.e]\nf = \"enum\"\n").contains("enum needs its values"));
        assert!(err("[channels.c.versions.1.e]\nf = { kind = \"enum\" }\n")
            .contains("enum needs `values"));
        assert!(
            err("[channels.c.versions.1.e]\nf = { kind = \"enum\", values = [] }\n")
                .contains("at least one value")
        );
        assert!(
            err("[channels.c.versions.1.e]\nf = { kind = \"enum\", values = [1] }\n")
                .contains("must be strings")
        );
        assert!(err(
            "[channels.c.versions.1.e]\nf = { kind = \"enum\", values = [\"a\", \"a\"] }\n"
        )
        .contains("listed twice"));
        assert!(
            err("[channels.c.versions.1.e]\nf = { kind = \"uuid\", values = [\"a\"] }\n")
                .contains("only for kind \"enum\"")
        );
    }

    #[test]
    fn names_outside_the_safe_alphabet_are_catalogue_errors() {
        for bad in [
            "Deals", "de als", "deals\\n", "déals", "a/b", "a:b", "a\\u0000",
        ] {
            let e = err(&format!("[channels.\"{bad}\".versions.1.e]\n"));
            assert!(e.contains("channel name"), "{bad}: {e}");
            let e = err(&format!("[channels.c.versions.1.\"{bad}\"]\n"));
            assert!(e.contains("event type name"), "{bad}: {e}");
        }
        assert!(err("[channels.\"\".versions.1.e]\n").contains("channel name is empty"));
        for dots in [".", ".."] {
            assert!(err(&format!("[channels.\"{dots}\".versions.1.e]\n")).contains("is only dots"), "{dots}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(err(&format!("[channels.{long}.versions.1.e]\n")).contains("longer than"));
        assert!(Catalogue::from_toml(&format!(
            "[channels.{}.versions.1.e]\n",
            "a".repeat(MAX_NAME_LEN)
        ))
        .is_ok());
        assert!(Catalogue::from_toml("[channels.\"a-b_c.9\".versions.1.\"x.y-z_0\"]\n").is_ok());
    }

    #[test]
    fn the_gateways_own_event_names_are_not_catalogue_events() {
        for name in ["error", "warning", "heartbeat"] {
            let e = err(&format!("[channels.c.versions.1.{name}]\n"));
            assert!(e.contains("the gateway's own event"), "{name}: {e}");
        }
        for name in ["open", "message"] {
            let e = err(&format!("[channels.c.versions.1.{name}]\n"));
            assert!(e.contains("EventSource gives a meaning of its own"), "{name}: {e}");
        }
        assert!(Catalogue::from_toml("[channels.c.versions.1.\"message.sent\"]\n").is_ok());
        assert!(Catalogue::from_toml("[channels.c.versions.1.\"error.raised\"]\n").is_ok());
    }

    #[test]
    fn unknown_keys_and_non_toml_are_catalogue_errors() {
        assert!(err("[channel.deals.versions.1.e]\n").contains("unknown top-level key `channel`"));
        assert!(
            err("[channels.c]\nversion = 1\n[channels.c.versions.1.e]\n")
                .contains("unknown key `version`")
        );
        assert!(err("[channels.c.versions.1.e\n").contains("not valid TOML"));
        assert!(err("channels = 3\n").contains("`channels` must be a table"));
        assert!(err("[channels]\nc = 1\n").contains("a channel must be a table"));
        assert!(err("[[channels.c.versions]]\n").contains("must be a table"));
        let e = Catalogue::from_toml("[channels.c.versions.0.e]\n").expect_err("error");
        let as_error: &dyn std::error::Error = &e;
        assert!(as_error.to_string().contains("channel `c` version 0"));
    }

    // ---- properties: no panics -------------------------------------------------------------

    fn arb_json() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            prop::sample::select(vec![
                "deal_id",
                "client_id",
                "title",
                "status",
                "created_at",
                "changes",
                "updated_at",
                "version",
                "effective_from",
                "premium_amount",
                "due_date",
                "amount",
                "currency",
                "remind_at",
                "read_at",
                "owner_id",
                "name",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,8}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC*".prop_map(Value::String),
            "[0-9a-fA-F-]{34,38}".prop_map(Value::String),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}".prop_map(Value::String),
            "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,4})?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..10)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn targets() -> Vec<(String, u32, String)> {
        let cat = v2();
        let mut out = vec![("nope".to_owned(), 1, "deal.created".to_owned())];
        for ch in cat.channels() {
            for v in ch.versions().into_iter().chain([0, 3]) {
                for (ev, _) in ch
                    .version(1)
                    .into_iter()
                    .flat_map(VersionSchema::event_types)
                {
                    out.push((ch.name().to_owned(), v, ev.to_owned()));
                }
                out.push((ch.name().to_owned(), v, "unknown.type".to_owned()));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn validate_never_panics_on_arbitrary_json(
            payload in arb_json(),
            target in prop::sample::select(targets()),
        ) {
            let cat = v2();
            let (channel, version, event) = target;
            let result = cat.validate(&channel, version, &event, &payload);
            if let Err(invalid) = result {
                prop_assert!(!invalid.reason().is_empty());
                prop_assert!(!invalid.to_string().is_empty());
            }
        }

        #[test]
        fn checkers_never_panic_on_arbitrary_strings(s in "\\PC*", raw in any::<Vec<u8>>()) {
            let lossy = String::from_utf8_lossy(&raw);
            for text in [s.as_str(), lossy.as_ref()] {
                let _ = is_uuid(text);
                let _ = is_date(text);
                let _ = is_datetime(text);
                let _ = parse_version_key(text);
            }
        }

        #[test]
        fn well_formed_datetimes_are_accepted_exactly_when_the_date_exists(
            y in 0u32..=9999, mo in 1u32..=12, d in 1u32..=31,
            h in 0u32..24, mi in 0u32..60, s in 0u32..=60,
            frac in prop::option::of("[0-9]{1,9}"),
            offset in prop_oneof![Just("Z".to_owned()), (0u32..24, 0u32..60, any::<bool>())
                .prop_map(|(oh, om, plus)| format!("{}{oh:02}:{om:02}", if plus { '+' } else { '-' }))],
        ) {
            let date = format!("{y:04}-{mo:02}-{d:02}");
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            let text = format!("{date}T{h:02}:{mi:02}:{s:02}{frac}{offset}");
            let exists = d <= days_in_month(y, mo);
            // Never a leap second (browsers' `Date` cannot read one).
            let second_ok = s < 60;
            prop_assert_eq!(is_date(&date), exists);
            prop_assert_eq!(is_datetime(&text), exists && second_ok, "{}", text);
        }

        #[test]
        fn from_toml_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
            let _ = Catalogue::from_toml(&text);
        }
    }
}
