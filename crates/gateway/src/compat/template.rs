//! JSON body templates: fixed literals, `$name` placeholders, nesting by tables or by dotted
//! keys, rendered in the order they were written.

use std::fmt::Write as _;

use serde_json::Value;

use super::value::ConfigValue;
use super::ConfigError;

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Literal(Value),
    Var(&'static str),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

impl Template {
    /// Compiles `value` found at `key`. A string `$name` is a placeholder and must be one of
    /// `vars`; `$$…` is the literal text `$…`. A table key with dots nests: `"a.b" = 1` is
    /// `a = { b = 1 }`.
    pub fn compile(
        key: &str,
        value: &ConfigValue,
        vars: &[&'static str],
    ) -> Result<Self, ConfigError> {
        Ok(match value {
            ConfigValue::Bool(b) => Self::Literal(Value::Bool(*b)),
            ConfigValue::Integer(i) => Self::Literal(Value::from(*i)),
            ConfigValue::Float(f) => Self::Literal(
                serde_json::Number::from_f64(*f)
                    .map(Value::Number)
                    .ok_or_else(|| ConfigError::new(key, "must be a finite number"))?,
            ),
            ConfigValue::String(s) => match s.strip_prefix('$') {
                Some(rest) if rest.starts_with('$') => Self::Literal(Value::String(rest.into())),
                Some(name) => Self::Var(vars.iter().find(|v| **v == name).ok_or_else(|| {
                    let known = vars.iter().map(|v| format!("${v}")).collect::<Vec<_>>();
                    ConfigError::new(
                        key,
                        format!(
                            "unknown placeholder `{s}`; use one of {} (or `$$` for a literal `$`)",
                            known.join(", ")
                        ),
                    )
                })?),
                None => Self::Literal(Value::String(s.clone())),
            },
            ConfigValue::Array(items) => Self::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Self::compile(&format!("{key}[{i}]"), item, vars))
                    .collect::<Result<_, _>>()?,
            ),
            ConfigValue::Table(entries) => {
                let mut fields = Vec::new();
                for (name, value) in entries {
                    let path: Vec<&str> = name.split('.').collect();
                    if path.iter().any(|part| part.is_empty()) {
                        return Err(ConfigError::new(
                            format!("{key}.\"{name}\""),
                            "a field name must not be empty (nor start or end with a dot)",
                        ));
                    }
                    let child = Self::compile(&format!("{key}.{name}"), value, vars)?;
                    insert(&mut fields, &path, child)
                        .map_err(|msg| ConfigError::new(format!("{key}.{name}"), msg))?;
                }
                Self::Object(fields)
            }
        })
    }

    /// Whether the template uses the placeholder `name` anywhere.
    pub fn uses(&self, name: &str) -> bool {
        match self {
            Self::Literal(_) => false,
            Self::Var(v) => *v == name,
            Self::Array(items) => items.iter().any(|t| t.uses(name)),
            Self::Object(fields) => fields.iter().any(|(_, t)| t.uses(name)),
        }
    }

    /// The JSON text, with each placeholder replaced by `lookup(name)`.
    pub fn render(&self, lookup: &dyn Fn(&str) -> Value) -> String {
        let mut out = String::new();
        self.write(&mut out, lookup);
        out
    }

    fn write(&self, out: &mut String, lookup: &dyn Fn(&str) -> Value) {
        match self {
            Self::Literal(value) => write_json(out, value),
            Self::Var(name) => write_json(out, &lookup(name)),
            Self::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out, lookup);
                }
                out.push(']');
            }
            Self::Object(fields) => {
                out.push('{');
                for (i, (name, field)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json(out, &Value::String(name.clone()));
                    out.push(':');
                    field.write(out, lookup);
                }
                out.push('}');
            }
        }
    }
}

fn write_json(out: &mut String, value: &Value) {
    // Writing a `Value` into a `String` cannot fail.
    let _ = write!(out, "{value}");
}

/// Puts `child` at `path` inside `fields`, creating the objects on the way.
fn insert(
    fields: &mut Vec<(String, Template)>,
    path: &[&str],
    child: Template,
) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("an empty field name")?;
    let existing = fields.iter_mut().position(|(name, _)| name == first);
    if rest.is_empty() {
        return match existing {
            Some(_) => Err(format!("the field `{first}` is given twice")),
            None => {
                fields.push(((*first).to_owned(), child));
                Ok(())
            }
        };
    }
    let index = match existing {
        Some(i) => i,
        None => {
            fields.push(((*first).to_owned(), Template::Object(Vec::new())));
            fields.len() - 1
        }
    };
    match &mut fields[index].1 {
        Template::Object(inner) => insert(inner, rest, child),
        _ => Err(format!("the field `{first}` is both a value and an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, ConfigValue)]) -> ConfigValue {
        ConfigValue::Table(entries.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())
    }

    fn text(s: &str) -> ConfigValue {
        ConfigValue::String(s.into())
    }

    #[test]
    fn renders_in_written_order_with_dotted_nesting() {
        let value = table(&[
            ("status", ConfigValue::Integer(200)),
            ("message", text("ok")),
            ("data.tokens.accessToken", text("$auth_token")),
            ("data.tokens.refreshToken", text("$refresh_token")),
            ("price", text("$$5")),
            ("list", ConfigValue::Array(vec![text("body"), text("$auth_token")])),
        ]);
        let template =
            Template::compile("response", &value, &["auth_token", "refresh_token"]).unwrap();
        assert!(template.uses("refresh_token"));
        let rendered = template.render(&|name| Value::String(format!("<{name}>")));
        assert_eq!(
            rendered,
            r#"{"status":200,"message":"ok","data":{"tokens":{"accessToken":"<auth_token>","refreshToken":"<refresh_token>"}},"price":"$5","list":["body","<auth_token>"]}"#
        );
    }

    #[test]
    fn names_the_key_of_each_mistake() {
        let cases = [
            (table(&[("a", text("$nope"))]), "response.a: unknown placeholder `$nope`"),
            (table(&[("a", text("x")), ("a.b", text("y"))]), "response.a.b: the field `a` is both"),
            (
                table(&[("a.b", text("x")), ("a.b", text("y"))]),
                "response.a.b: the field `b` is given twice",
            ),
            (table(&[("a..b", text("x"))]), "response.\"a..b\": a field name must not be empty"),
        ];
        for (value, want) in cases {
            let err = Template::compile("response", &value, &["auth_token"]).unwrap_err();
            assert!(err.to_string().starts_with(want), "{err} does not start with {want}");
        }
    }
}
