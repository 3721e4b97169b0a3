//! Reading files: syntax errors (all of them, recovered), `${ENV}`
//! substitution, splitting each table into its common and protocol parts,
//! and turning serde errors into located [`ConfigError`]s.
//!
//! Every `[[tags]]` entry, `[sinks.*]` table and `[[alert_rules]]` entry is
//! deserialized on its own, so one bad tag does not hide the errors of the
//! next one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::ConfigError;

/// Looks up environment variables (the process environment, or a map in tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Where every key and value of one file is, by key path.
#[derive(Debug, Default, Clone)]
pub struct SpanIndex {
    keys: HashMap<String, Range<usize>>,
    values: HashMap<String, Range<usize>>,
}

impl SpanIndex {
    /// The span of `path`'s value, else its key, else the nearest parent's.
    pub fn locate(&self, path: &str) -> Option<Range<usize>> {
        let mut p = path;
        loop {
            if let Some(s) = self.values.get(p).or_else(|| self.keys.get(p)) {
                if s.start < s.end || p.is_empty() {
                    return Some(s.clone());
                }
            }
            if p.is_empty() {
                return None;
            }
            p = parent(p);
        }
    }

    /// The most specific key path whose key or value covers `offset`.
    fn path_at(&self, offset: usize) -> Option<&str> {
        self.keys
            .iter()
            .chain(self.values.iter())
            .filter(|(_, s)| s.start <= offset && offset < s.end.max(s.start + 1))
            .min_by_key(|(p, s)| (s.end - s.start, std::cmp::Reverse(p.len())))
            .map(|(p, _)| p.as_str())
    }
}

fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_string() } else { format!("{key:?}") };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// One file, read and parsed: its text and span index stay for validation.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
    pub spans: SpanIndex,
}

impl Source {
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path, &self.text, self.spans.locate(key), key, message)
    }

    /// An error at byte `offset` of string value `value` (found at `key`):
    /// the line and column are that character's in the file when the TOML
    /// string holds the value verbatim (no escapes, no `${ENV}`); otherwise
    /// they are the value's, and the message shows the expression with a
    /// caret under the character.
    pub fn error_in_string(
        &self,
        key: &str,
        value: &str,
        offset: Option<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        let message = message.into();
        let span = self.spans.locate(key);
        if let (Some(span), Some(off)) = (&span, offset) {
            let raw = self.text.get(span.clone()).unwrap_or("");
            let body = raw
                .strip_prefix("\"\"\"")
                .or_else(|| raw.strip_prefix("'''"))
                .or_else(|| raw.strip_prefix('"'))
                .or_else(|| raw.strip_prefix('\''));
            if let Some(body) = body.filter(|b| b.starts_with(value)) {
                let at = span.start + (raw.len() - body.len()) + off.min(value.len());
                return ConfigError::at(&self.path, &self.text, Some(at..at + 1), key, message);
            }
        }
        match offset {
            Some(off) => {
                let col = value
                    .get(..off.min(value.len()))
                    .map_or(off, |p| p.chars().count());
                let pad = " ".repeat(col);
                self.error(
                    key,
                    format!(
                        "{message}, at character {} of the expression:\n      {value}\n      {pad}^",
                        col + 1
                    ),
                )
            }
            None => self.error(key, message),
        }
    }
}

/// Reads a file; unreadable → an error naming it.
pub fn read(path: &Path, errors: &mut Vec<ConfigError>) -> Option<String> {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                let off = e.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                errors.push(ConfigError::at(
                    path,
                    &text,
                    Some(off..off + 1),
                    "",
                    "file is not valid UTF-8",
                ));
                None
            }
        },
        Err(e) => {
            errors.push(ConfigError::file(path, format!("cannot read file: {e}")));
            None
        }
    }
}

/// Parses `text`, reporting every syntax error; substitutes `${ENV}` in
/// strings and indexes spans into the returned [`Source`]. Returns `None`
/// when the syntax is broken.
pub fn parse<'t>(
    path: &Path,
    text: &'t str,
    env: EnvLookup<'_>,
    errors: &mut Vec<ConfigError>,
) -> Option<(Spanned<DeTable<'t>>, Source)> {
    let (mut root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            errors.push(ConfigError::at(
                path,
                text,
                e.span(),
                "",
                format!("TOML syntax error: {}", e.message().trim()),
            ));
        }
        return None;
    }
    let mut spans = SpanIndex::default();
    spans.values.insert(String::new(), root.span());
    for (k, v) in root.get_mut().iter_mut() {
        let p = join("", k.get_ref());
        spans.keys.insert(p.clone(), k.span());
        walk(v, &p, &mut spans, env, path, text, errors);
    }
    let src = Source {
        path: path.to_path_buf(),
        text: text.to_string(),
        spans,
    };
    Some((root, src))
}

fn walk(
    v: &mut Spanned<DeValue<'_>>,
    path: &str,
    spans: &mut SpanIndex,
    env: EnvLookup<'_>,
    file: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) {
    let span = v.span();
    spans.values.insert(path.to_string(), span.clone());
    match v.get_mut() {
        DeValue::String(s) if s.contains('$') => match substitute(s, env) {
            Ok(new) => *s = Cow::Owned(new),
            Err(msg) => errors.push(ConfigError::at(file, text, Some(span), path, msg)),
        },
        DeValue::Array(a) => {
            for (i, e) in a.iter_mut().enumerate() {
                walk(e, &format!("{path}[{i}]"), spans, env, file, text, errors);
            }
        }
        DeValue::Table(t) => {
            for (k, e) in t.iter_mut() {
                let p = join(path, k.get_ref());
                spans.keys.insert(p.clone(), k.span());
                walk(e, &p, spans, env, file, text, errors);
            }
        }
        _ => {}
    }
}

/// `${NAME}` → the variable's value; `${NAME:-default}` → default when unset;
/// `$${` → a literal `${`. A missing variable without default is an error naming it.
pub fn substitute(s: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}; write `$${{` for a literal"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!(
                    "invalid environment variable name {name:?} in `${{{expr}}}`"
                ));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (referenced as `${{{name}}}`; \
                         use `${{{name}:-default}}` for a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Deserializes one value, turning a serde error into a located error.
pub fn de<T: DeserializeOwned>(
    src: &Source,
    value: Spanned<DeValue<'_>>,
    base: &str,
    extra_expected: Option<&[&str]>,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    match T::deserialize(value.into_deserializer()) {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(serde_error(src, base, &e, extra_expected));
            None
        }
    }
}

fn serde_error(src: &Source, base: &str, e: &toml::de::Error, extra: Option<&[&str]>) -> ConfigError {
    let span = e.span();
    let mut msg = e.message().trim().to_string();
    let mut key = span
        .as_ref()
        .and_then(|s| src.spans.path_at(s.start))
        .filter(|p| p.starts_with(base))
        .unwrap_or(base)
        .to_string();
    if let Some(field) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
        .map(str::to_string)
    {
        // The error's span is the unknown key: keep its full path (`wal.max_byte`)
        // when the table is nested below `base`.
        let seg = join("", &field);
        if !(key == seg || key.ends_with(&format!(".{seg}"))) {
            key = join(base, &field);
        }
        let original = msg.clone();
        let mut expected: Vec<&str> = expected_list(&original);
        // Keys split off into other structs belong to the table at `base` only.
        if key == join(base, &field) {
            if let Some(more) = extra {
                expected.extend(more.iter().copied());
            }
        }
        expected.sort_unstable();
        expected.dedup();
        msg = format!("unknown key `{field}`");
        if let Some(best) = closest(&field, &expected) {
            msg.push_str(&format!(" (did you mean `{best}`?)"));
        }
        msg.push_str(&format!("; expected one of: {}", expected.join(", ")));
    } else if let Some(field) = msg
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        msg = format!("missing required key `{field}`");
        key = base.to_string();
    }
    ConfigError::at(&src.path, &src.text, span, key, msg)
}

fn expected_list(msg: &str) -> Vec<&str> {
    let Some(i) = msg.find("expected") else {
        return Vec::new();
    };
    msg[i..].split('`').skip(1).step_by(2).collect()
}

/// The candidate within edit distance 2 of `word`, if any.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Splits `table` into (keys in `common`, the rest), keeping spans.
pub fn split<'t>(table: DeTable<'t>, common: &[&str]) -> (DeTable<'t>, DeTable<'t>) {
    let mut a = DeTable::new();
    let mut b = DeTable::new();
    for (k, v) in table {
        if common.contains(&k.get_ref().as_ref()) {
            a.insert(k, v);
        } else {
            b.insert(k, v);
        }
    }
    (a, b)
}

/// Wraps a table back into a spanned value for deserialization.
pub fn table_value<'t>(span: Range<usize>, t: DeTable<'t>) -> Spanned<DeValue<'t>> {
    Spanned::new(span, DeValue::Table(t))
}

/// Takes `key` out of `table` as an array of tables; a non-array is an error.
pub fn take_array<'t>(
    src: &Source,
    table: &mut DeTable<'t>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> Vec<Spanned<DeValue<'t>>> {
    match table.remove(key) {
        None => Vec::new(),
        Some(v) => match v.into_inner() {
            DeValue::Array(a) => a.into_iter().collect(),
            _ => {
                errors.push(src.error(key, format!("`{key}` must be an array of tables (`[[{key}]]`)")));
                Vec::new()
            }
        },
    }
}

/// Takes `key` out of `table` as a table of tables.
pub fn take_tables<'t>(
    src: &Source,
    table: &mut DeTable<'t>,
    key: &str,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Spanned<DeValue<'t>>> {
    match table.remove(key) {
        None => BTreeMap::new(),
        Some(v) => match v.into_inner() {
            DeValue::Table(t) => t
                .into_iter()
                .map(|(k, v)| (k.into_inner().into_owned(), v))
                .collect(),
            _ => {
                errors.push(src.error(key, format!("`{key}` must be a table (`[{key}.NAME]`)")));
                BTreeMap::new()
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_substitution() {
        let env = |n: &str| (n == "PW").then(|| "s3cret".to_string());
        assert_eq!(substitute("a${PW}b", &env).unwrap(), "as3cretb");
        assert_eq!(substitute("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(substitute("$${PW} $5", &env).unwrap(), "${PW} $5");
        let e = substitute("${NOPE}", &env).unwrap_err();
        assert!(e.contains("`NOPE` is not set"), "{e}");
        assert!(substitute("${PW", &env).is_err());
        assert!(substitute("${1X}", &env).is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("scalng", &["scaling", "offset"]), Some("scaling"));
        assert_eq!(closest("zzzz", &["scaling"]), None);
    }
}
