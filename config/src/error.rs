//! Configuration errors: every one names the file, the line and column, the
//! key path (`tags[2].scaling`) and what was expected.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in (or the directory, for a missing device file).
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key path from the file's root, e.g. `tags[2].scaling`; empty
    /// for problems of the file as a whole.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
    /// The offending source line, for the caret display.
    pub source_line: Option<String>,
}

impl ConfigError {
    /// A problem of a whole file (unreadable, empty directory, …).
    pub fn file(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            key: String::new(),
            message: message.into(),
            source_line: None,
        }
    }

    /// A problem at byte range `span` of `text` (the file's contents).
    pub fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let mut e = ConfigError::file(file, message);
        e.key = key.into();
        if let Some(span) = span {
            let (line, column, src) = line_col(text, span.start);
            e.line = Some(line);
            e.column = Some(column);
            e.source_line = Some(src.to_string());
        }
        e
    }
}

/// 1-based line and column (in characters) of byte offset `offset`, and that line.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize, &str) {
    let offset = offset.min(text.len());
    let offset = (0..=offset)
        .rev()
        .find(|&o| text.is_char_boundary(o))
        .unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    (line, column, text[line_start..line_end].trim_end_matches('\r'))
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let (Some(src), Some(c)) = (&self.source_line, self.column) {
            let pad: String = src
                .chars()
                .take(c - 1)
                .map(|ch| if ch == '\t' { '\t' } else { ' ' })
                .collect();
            write!(f, "\n    | {src}\n    | {pad}^")?;
        }
        Ok(())
    }
}

/// Every problem found in one load: loading never stops at the first one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        write!(
            f,
            "\n{} configuration error{}",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let t = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(t, 0), (1, 1, "a = 1"));
        // 'é' is two bytes: the '=' after it is the 4th character of line 2.
        let eq = t.rfind('=').unwrap();
        assert_eq!(line_col(t, eq), (2, 4, "bé = \"x\""));
    }
}
