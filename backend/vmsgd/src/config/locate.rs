//! Reading the configuration's structure so that *every* error of the file
//! is found, each at the key it is about: the TOML is parsed with error
//! recovery (all syntax errors), then every table is deserialized on its
//! own (a bad device does not hide the next one), and an error serde reports
//! for a whole table (tagged tables such as `bus = { kind = ... }` and
//! `[[guest.device]]` lose the keys' positions) is traced to the key that
//! causes it by deserializing the table one key at a time. Type and range
//! messages are put in words ("a whole number from 0 to 65535", not
//! "expected u16").

use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{ConfigError, DaemonSection, Locator, RawConfig, RawGuest, fix_for};

/// The file's structure, or every error found in it.
pub(super) fn read(loc: &Locator<'_>) -> Result<RawConfig, Vec<ConfigError>> {
    let (doc, syntax) = DeTable::parse_recoverable(loc.text);
    if !syntax.is_empty() {
        // Past a syntax error the structure is a guess: report those only.
        return Err(syntax
            .iter()
            .map(|e| loc.error(e.span(), words(e.message()), fix_for(e.message())))
            .collect());
    }
    let mut errors = Vec::new();
    let mut daemon = DaemonSection::default();
    let mut daemon_keys = std::collections::BTreeMap::new();
    let mut guests = Vec::new();
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "daemon" => {
                if let Some(d) = typed::<DaemonSection>(loc, value, &mut errors) {
                    daemon = d;
                }
                if let DeValue::Table(t) = value.get_ref() {
                    daemon_keys = t
                        .iter()
                        .map(|(k, _)| (k.get_ref().to_string(), k.span()))
                        .collect();
                }
            }
            "guest" => match value.get_ref() {
                DeValue::Array(tables) => {
                    for g in tables.iter() {
                        if let Some(g) = guest(loc, g, &mut errors) {
                            guests.push(g);
                        }
                    }
                }
                _ => errors.push(loc.error(
                    Some(key.span()),
                    "`guest` must be a list of [[guest]] tables",
                    "write each guest as a [[guest]] table (see docs/configuration.md)",
                )),
            },
            other => errors.push(loc.error(
                Some(key.span()),
                format!("unknown table or key `{other}`, expected `daemon` or `guest`"),
                "remove it or correct its spelling",
            )),
        }
    }
    if errors.is_empty() {
        Ok(RawConfig {
            daemon,
            daemon_keys,
            guest: guests,
        })
    } else {
        Err(errors)
    }
}

/// One `[[guest]]` table: its keys one by one.
fn guest(
    loc: &Locator<'_>,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) -> Option<Spanned<RawGuest>> {
    let DeValue::Table(table) = value.get_ref() else {
        errors.push(loc.error(
            Some(value.span()),
            "a [[guest]] entry must be a table",
            "write each guest as a [[guest]] table",
        ));
        return None;
    };
    let before = errors.len();
    let (mut name, mut bus, mut devices) = (None, None, Vec::new());
    for (key, v) in table.iter() {
        match key.get_ref().as_ref() {
            "name" => {
                name = typed::<String>(loc, v, errors).map(|n| Spanned::new(v.span(), n));
            }
            "bus" => bus = typed(loc, v, errors).map(|b| Spanned::new(v.span(), b)),
            "device" => match v.get_ref() {
                DeValue::Array(list) => {
                    for d in list.iter() {
                        if let Some(dev) = typed(loc, d, errors) {
                            devices.push(Spanned::new(d.span(), dev));
                        }
                    }
                }
                _ => errors.push(loc.error(
                    Some(key.span()),
                    "`device` must be a list of [[guest.device]] tables",
                    "write each device as a [[guest.device]] table",
                )),
            },
            other => errors.push(loc.error(
                Some(key.span()),
                format!(
                    "unknown key `{other}` in [[guest]], expected `name`, `bus` or [[guest.device]]"
                ),
                "remove that key or correct its spelling",
            )),
        }
    }
    for (missing, fix) in [
        (name.is_none(), "add name = \"<guest>\""),
        (
            bus.is_none(),
            "add bus = { kind = \"local\", socket = \"/run/vmsgd/<guest>.sock\" }",
        ),
    ] {
        if missing && errors.len() == before {
            let what = if name.is_none() { "name" } else { "bus" };
            errors.push(loc.error(
                Some(value.span()),
                format!("[[guest]] has no `{what}`"),
                fix,
            ));
        }
    }
    Some(Spanned::new(
        value.span(),
        RawGuest {
            name: name?,
            bus: bus?,
            device: devices,
        },
    ))
}

fn deserialize<T: DeserializeOwned>(value: &Spanned<DeValue<'_>>) -> Result<T, toml::de::Error> {
    T::deserialize(value.clone().into_deserializer())
}

/// Deserialize `value` as a `T`; on failure push its errors, each located
/// at its key if it can be traced to one.
fn typed<T: DeserializeOwned>(
    loc: &Locator<'_>,
    value: &Spanned<DeValue<'_>>,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match deserialize::<T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let located = trace_to_keys::<T>(value, &e);
            if located.is_empty() {
                errors.push(loc.error(
                    e.span().or(Some(value.span())),
                    words(e.message()),
                    fix_for(e.message()),
                ));
            }
            for (span, message) in located {
                errors.push(loc.error(Some(span), words(&message), fix_for(&message)));
            }
            None
        }
    }
}

/// The keys of a table that fail on their own (deserialized with only that
/// key and the table's `kind`), with their errors. Empty when the error is
/// not about the table's keys (a missing key, a table toml already located
/// inside, or not a table at all).
fn trace_to_keys<T: DeserializeOwned>(
    value: &Spanned<DeValue<'_>>,
    e: &toml::de::Error,
) -> Vec<(Range<usize>, String)> {
    let DeValue::Table(table) = value.get_ref() else {
        return Vec::new();
    };
    if e.span().is_some_and(|s| s != value.span()) || e.message().contains("missing field") {
        return Vec::new();
    }
    let kind = table.get_key_value("kind");
    let mut out = Vec::new();
    for (key, v) in table.iter() {
        let mut probe = DeTable::new();
        if let Some((k, kv)) = kind {
            probe.insert(k.clone(), kv.clone());
        }
        probe.insert(key.clone(), v.clone());
        let probe = Spanned::new(value.span(), DeValue::Table(probe));
        if let Err(pe) = deserialize::<T>(&probe) {
            let m = pe.message();
            // Alone, every key lacks the table's other required keys.
            if m.contains("missing field") {
                continue;
            }
            out.push((key.span(), m.to_string()));
        }
    }
    // An unknown `kind` fails every probe with the same message: say it once.
    if let Some((k, _)) = kind {
        if out.iter().any(|(s, _)| *s == k.span()) {
            out.retain(|(s, _)| *s == k.span());
        }
    }
    out
}

/// serde's type names in words: `expected u16` becomes `expected a whole
/// number from 0 to 65535`, and so on.
pub(super) fn words(message: &str) -> String {
    let mut m = message.trim().to_string();
    for (ty, range) in [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number of 0 or more"),
        ("usize", "a whole number of 0 or more"),
        ("i64", "a whole number"),
        ("a boolean", "true or false"),
    ] {
        let needle = format!("expected {ty}");
        if let Some(at) = m.find(&needle) {
            let end = at + needle.len();
            let whole = m[end..].chars().next().is_none_or(|c| !c.is_alphanumeric());
            if whole {
                m.replace_range(at..end, &format!("expected {range}"));
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::words;

    #[test]
    fn types_in_words() {
        assert_eq!(
            words("invalid value: integer `70000`, expected u16"),
            "invalid value: integer `70000`, expected a whole number from 0 to 65535"
        );
        assert_eq!(
            words("invalid type: string \"yes\", expected a boolean"),
            "invalid type: string \"yes\", expected true or false"
        );
        assert_eq!(
            words("expected u32"),
            "expected a whole number from 0 to 4294967295"
        );
        assert_eq!(
            words("expected u64 or so"),
            "expected a whole number of 0 or more or so"
        );
        assert_eq!(words("expected u16x"), "expected u16x");
    }
}
