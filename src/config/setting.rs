//! One setting: its flag, the environment variables behind it, its default
//! and its help, defined once in [`super::settings`] and read with
//! [`Errors::read`], the only way a value enters the configuration.

use std::fmt;

use super::parse::ParseError;
use super::Env;

/// A flag and the environment variables that stand in for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The long flag, without `--`.
    pub flag: &'static str,
    /// Variables read in order when the flag is absent; the first set wins.
    pub env: &'static [&'static str],
    /// What an unset setting means.
    pub default: WhenUnset,
    /// One line for `--help` and the configuration reference.
    pub help: &'static str,
}

/// What an unset setting means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenUnset {
    /// Nothing: the feature is off or the value is optional.
    Nothing,
    /// This value, parsed by the setting's own parser, so the documented
    /// default and the one used can never differ.
    Value(&'static str),
    /// A value computed from other settings, described for people.
    Computed(&'static str),
}

impl Setting {
    /// The variable an injector or a manifest sets (the first one read).
    pub const fn var(&self) -> &'static str {
        match self.env.first() {
            Some(v) => v,
            None => "",
        }
    }

    /// `--help` text: the help line, the variables, the default.
    pub fn help_text(&self) -> String {
        let mut text = self.help.to_owned();
        if !self.env.is_empty() {
            text.push_str(&format!(" [env: {}]", self.env.join(", then ")));
        }
        match self.default {
            WhenUnset::Nothing => {}
            WhenUnset::Value(v) | WhenUnset::Computed(v) => {
                text.push_str(&format!(" [default: {v}]"));
            }
        }
        text
    }

    /// Every place the value can come from, for errors about an unset one.
    pub fn origin(&self) -> String {
        std::iter::once(format!("--{}", self.flag))
            .chain(self.env.iter().map(|v| (*v).to_owned()))
            .collect::<Vec<_>>()
            .join(" / ")
    }

    /// The raw value and where it came from: the flag, else the first
    /// variable set. Empty variables count as unset, as in the AWS SDKs.
    pub fn find<'a>(&self, flag: Option<&'a str>, env: &'a Env) -> Option<Raw<'a>> {
        if let Some(value) = flag {
            return Some(Raw {
                value: value.trim(),
                origin: Origin::Flag(self.flag),
            });
        }
        self.env.iter().find_map(|var| {
            env.get(var).map(|value| Raw {
                value: value.trim(),
                origin: Origin::Var(var),
            })
        })
    }
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Var(&'static str),
    /// The setting's documented default.
    Default(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(flag) => write!(f, "--{flag}"),
            Self::Var(var) => f.write_str(var),
            Self::Default(flag) => write!(f, "the default of --{flag}"),
        }
    }
}

/// A value as given, trimmed, with its origin.
#[derive(Debug, Clone, Copy)]
pub struct Raw<'a> {
    pub value: &'a str,
    pub origin: Origin,
}

/// One configuration problem, naming where the bad value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    /// The flag or variable (or several, when they conflict).
    pub origin: String,
    pub message: String,
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// One problem, found outside the settings' parsing (a file read
    /// before serving, a variable the runtime reads).
    pub fn one(origin: impl fmt::Display, message: impl fmt::Display) -> Self {
        Self(vec![ConfigError {
            origin: origin.to_string(),
            message: message.to_string(),
        }])
    }
}

/// Collects problems while parsing, so all of them are reported at once.
#[derive(Debug, Default)]
pub struct Errors(Vec<ConfigError>);

impl Errors {
    /// Starts with the variables of `env` whose value is not UTF-8 text
    /// (see [`super::unknown::not_text`]), so they are reported with every
    /// other problem, in the log format asked for.
    pub fn reading(env: &Env) -> Self {
        let mut errors = Self::default();
        for name in super::unknown::not_text(env) {
            errors.push(name, "the value is not UTF-8 text");
        }
        errors
    }

    pub fn push(&mut self, origin: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(ConfigError {
            origin: origin.to_string(),
            // Messages quote the value refused, which may be a secret
            // given to the wrong setting or a URL with a password.
            message: crate::secret::without_secret_shapes(&message.to_string()),
        });
    }

    /// How many problems were recorded so far.
    pub fn count(&self) -> usize {
        self.0.len()
    }

    /// Parses a setting: its value, else its default; `None` when it is
    /// unset without a default, or invalid (the problem is recorded).
    pub fn read<T>(
        &mut self,
        setting: &Setting,
        flag: Option<&str>,
        env: &Env,
        parse: impl Fn(&str) -> Result<T, ParseError>,
    ) -> Option<T> {
        let raw = match (setting.find(flag, env), setting.default) {
            (Some(raw), _) => raw,
            (None, WhenUnset::Value(value)) => Raw {
                value,
                origin: Origin::Default(setting.flag),
            },
            (None, _) => return None,
        };
        self.parse(raw, parse)
    }

    /// Parses an optional setting: `Some(None)` when unset, `None` when
    /// invalid (the problem is recorded).
    pub fn read_optional<T>(
        &mut self,
        setting: &Setting,
        flag: Option<&str>,
        env: &Env,
        parse: impl Fn(&str) -> Result<T, ParseError>,
    ) -> Option<Option<T>> {
        match setting.find(flag, env) {
            None => Some(None),
            Some(raw) => self.parse(raw, parse).map(Some),
        }
    }

    /// Parses a value already found; records a problem when it is invalid.
    pub fn parse<T>(
        &mut self,
        raw: Raw<'_>,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> Option<T> {
        parse(raw.value).map_err(|e| self.push(raw.origin, e)).ok()
    }

    /// The configuration `build` assembles, or every problem recorded.
    /// `build` sees only values that parsed; when nothing was recorded it
    /// has everything it needs.
    pub fn finish<T>(mut self, build: impl FnOnce() -> Option<T>) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            if let Some(value) = build() {
                return Ok(value);
            }
            self.push(
                "configuration",
                "incomplete (this is a bug: please report it)",
            );
        }
        Err(ConfigErrors(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: Setting = Setting {
        flag: "demo",
        env: &["FIRST", "SECOND"],
        default: WhenUnset::Value("7"),
        help: "A demo",
    };

    fn number(raw: &str) -> Result<u32, ParseError> {
        raw.parse()
            .map_err(|_| ParseError::not_a(raw, "a number", "a whole number"))
    }

    #[test]
    fn flag_then_variables_in_order_then_the_parsed_default() {
        let env = Env::from_pairs([("FIRST", ""), ("SECOND", " 2 ")]);
        let mut e = Errors::default();
        assert_eq!(e.read(&DEMO, Some("1"), &env, number), Some(1));
        assert_eq!(e.read(&DEMO, None, &env, number), Some(2));
        assert_eq!(e.read(&DEMO, None, &Env::default(), number), Some(7));
        assert!(e.0.is_empty());
    }

    #[test]
    fn a_bad_value_names_its_origin() {
        let mut e = Errors::default();
        assert_eq!(
            e.read(&DEMO, None, &Env::from_pairs([("SECOND", "x")]), number),
            None
        );
        assert_eq!(e.read(&DEMO, Some("y"), &Env::default(), number), None);
        let origins: Vec<_> = e.0.iter().map(|e| e.origin.as_str()).collect();
        assert_eq!(origins, ["SECOND", "--demo"]);
        assert!(e.finish(|| Some(())).is_err());
    }

    #[test]
    fn help_text_lists_variables_and_default() {
        assert_eq!(
            DEMO.help_text(),
            "A demo [env: FIRST, then SECOND] [default: 7]"
        );
        assert_eq!(DEMO.origin(), "--demo / FIRST / SECOND");
    }
}
