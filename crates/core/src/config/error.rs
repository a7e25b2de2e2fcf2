//! Configuration errors that point at the file, the line, the key and what was expected.

use std::fmt;
use std::ops::Range;

/// One precise problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line, 0 when the position is unknown (for example an unreadable file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path such as `service.api.backend[1].health.interval`.
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: ", self.file)?;
        } else {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        write!(f, "{}", self.message)
    }
}

/// All the problems found in one file; validation reports every one it finds,
/// so an operator fixes a file in one round instead of one error per run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets in the source to line and column.
pub(crate) struct Source<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    pub fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError {
            file: self.file.to_string(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Turns a TOML syntax or shape error into a `ConfigError`, recovering the
    /// dotted key from the text around the error because the parser does not
    /// expose it.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = humanize_toml_message(err.message());
        match err.span() {
            Some(span) => {
                let key = self.key_at(span.start);
                self.error(span, key, message)
            }
            None => ConfigError {
                file: self.file.to_string(),
                line: 0,
                column: 0,
                key: String::new(),
                message,
            },
        }
    }

    /// The dotted key that the byte at `offset` belongs to: the nearest table
    /// header above it, plus the keys of any inline tables it sits in, plus
    /// the key it is (or whose value it is).
    fn key_at(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line_start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[offset..]
            .find('\n')
            .map_or(self.text.len(), |i| offset + i);
        let mut path: Vec<String> = Vec::new();
        // The current line counts: errors such as `missing field` point at the header itself.
        if let Some(header) = self.text[..line_end]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
        {
            let inner = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("");
            path.extend(
                inner
                    .split('.')
                    .map(|s| s.trim().trim_matches('"').to_string()),
            );
        }
        let prefix = &self.text[line_start..offset];
        if prefix.trim_start().starts_with('[') {
            // The error is on a header line itself.
            return path.join(".");
        }
        let mut stack: Vec<String> = Vec::new();
        let mut pending: Option<String> = None;
        let mut token = String::new();
        let mut in_string: Option<char> = None;
        for c in prefix.chars() {
            if let Some(q) = in_string {
                if c == q {
                    in_string = None;
                }
                continue;
            }
            match c {
                '"' | '\'' => in_string = Some(c),
                '=' => {
                    pending = Some(token.trim().trim_matches('"').to_string());
                    token.clear();
                }
                '{' => {
                    if let Some(k) = pending.take() {
                        stack.push(k);
                    }
                    token.clear();
                }
                '}' => {
                    stack.pop();
                    token.clear();
                }
                ',' => {
                    pending = None;
                    token.clear();
                }
                _ => token.push(c),
            }
        }
        path.extend(stack);
        match pending {
            Some(k) => path.push(k),
            None => {
                let rest = &self.text[offset..];
                let word: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                    .collect();
                if !word.is_empty() {
                    path.push(word);
                }
            }
        }
        path.retain(|p| !p.is_empty());
        path.join(".")
    }
}

fn humanize_toml_message(message: &str) -> String {
    message.trim().replace('\n', " ")
}
