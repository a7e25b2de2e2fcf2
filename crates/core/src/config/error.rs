//! Configuration errors that point at the file, the line, the key and what was expected.

use std::fmt;
use std::ops::Range;

use toml::de::DeValue;

/// What a duration field expects, in the file's words: where serde would
/// say "a string", an operator needs to know which string.
pub(crate) const A_DURATION: &str = "a duration like 500ms";
/// What a size field expects, in the file's words.
pub(crate) const A_SIZE: &str = "a size like 64KiB";

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

/// All the problems found in one file, in file order: values of the wrong
/// type, unknown and missing keys, and problems of meaning, found in one
/// pass so that an operator fixes a file in one round instead of one error
/// per run.
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

/// A value of the wrong type or shape, in the file's words, and the neutral
/// value that can stand in for it while the rest of the file is read.
pub(crate) struct ShapeProblem {
    /// `expected ..., found ...`, in the file's words.
    pub message: String,
    /// TOML for a value of the type expected (`0`, `""`, `[]`...); `None`
    /// when no value fits, and the value is dropped instead.
    pub neutral: Option<&'static str>,
}

/// Words serde's refusal of a value (`invalid type: string "5", expected
/// i64`) as the file is written: `expected a whole number, found the
/// string "5"; write it without quotes`. `found` describes the value when
/// serde's message does not (untagged enums). A message of another form is
/// kept as it is.
pub(crate) fn shape_problem(message: &str, found: impl FnOnce() -> String) -> ShapeProblem {
    let message = message.trim();
    let refused = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|m| m.rsplit_once(", expected "));
    if let Some((what, expected)) = refused {
        let expected = in_file_terms(expected);
        let hint = hint(expected, what);
        return ShapeProblem {
            message: format!(
                "expected {expected}, found {}{hint}",
                found_in_file_terms(what)
            ),
            neutral: neutral(expected),
        };
    }
    if message.starts_with("invalid length ") && message.contains(", expected struct ") {
        return ShapeProblem {
            message: "expected a table, found a list".into(),
            neutral: None,
        };
    }
    if let Some(name) = message.strip_prefix("data did not match any variant of untagged enum ") {
        let expected = match name.trim() {
            "RawRegionDown" => "\"all\", \"any\" or a number of critical services",
            "RawBudget" => "a size like 1MiB or a duration like 1s, or both in a list",
            _ => "a value of another type",
        };
        return ShapeProblem {
            message: format!("expected {expected}, found {}", found()),
            neutral: None,
        };
    }
    ShapeProblem {
        message: humanize_toml_message(message),
        neutral: None,
    }
}

/// serde's name for what it expected, as the file would say it.
fn in_file_terms(expected: &str) -> &str {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128" | "isize"
        | "usize" => "a whole number",
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        "a string" | "a borrowed string" | "a char" | "a character" => "a string",
        "a sequence" => "a list",
        "a map" => "a table",
        s if s.starts_with("struct ") => "a table",
        other => other,
    }
}

/// serde's description of a value it refused (`string "5"`, ``integer `5` ``,
/// `map`), as the file would say it.
fn found_in_file_terms(what: &str) -> String {
    let quoted = |w: &str| {
        w.trim_matches('`')
            .trim_end_matches(" as i128")
            .trim_matches('`')
            .to_string()
    };
    if let Some(s) = what.strip_prefix("string ") {
        format!("the string {s}")
    } else if let Some(n) = what.strip_prefix("integer ") {
        format!("the whole number {}", quoted(n))
    } else if let Some(n) = what.strip_prefix("floating point ") {
        format!("the number {}", quoted(n))
    } else if let Some(b) = what.strip_prefix("boolean ") {
        quoted(b)
    } else {
        match what {
            "map" => "a table".into(),
            "sequence" => "a list".into(),
            other => other.into(),
        }
    }
}

/// How to write what was meant, when the value was close: a number in
/// quotes, or a duration or size without them.
fn hint(expected: &str, what: &str) -> String {
    let number = what.starts_with("integer ") || what.starts_with("floating point ");
    let text = what
        .strip_prefix("string \"")
        .and_then(|s| s.strip_suffix('"'));
    match expected {
        "a whole number" if what.ends_with(" as i128") => "; it is too large".into(),
        "a whole number" if text.is_some_and(|t| t.trim().parse::<i64>().is_ok()) => {
            "; write it without quotes".into()
        }
        "a number" if text.is_some_and(|t| t.trim().parse::<f64>().is_ok()) => {
            "; write it without quotes".into()
        }
        A_DURATION if number => {
            "; write it in quotes with a unit, such as \"500ms\" or \"2s\"".into()
        }
        A_SIZE if number => "; write it in quotes, with a unit such as \"64KiB\"".into(),
        _ => String::new(),
    }
}

/// A value of the type `expected` names, to stand in for a refused one.
fn neutral(expected: &str) -> Option<&'static str> {
    match expected {
        "a whole number" => Some("0"),
        "a number" => Some("0.0"),
        "true or false" => Some("false"),
        "a string" | A_DURATION | A_SIZE => Some("\"\""),
        "a list" => Some("[]"),
        _ => None,
    }
}

/// A value as the file wrote it, for a message that says what was found.
pub(crate) fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("the whole number {}", i.as_str()),
        DeValue::Float(f) => format!("the number {}", f.as_str()),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => format!("the date-time {d}"),
        DeValue::Array(_) => "a list".into(),
        DeValue::Table(_) => "a table".into(),
    }
}
