//! `condition_expression`: a small expression over the tag values of one
//! device, e.g. `temp_in - temp_out > 5 and pump_on`.
//!
//! The language is [Rhai](https://rhai.rs)'s expression mode: no
//! statements, assignments or loops (refused by the parser), no user
//! functions, modules, arrays or maps (compiled out), no standard library
//! (the engine is `Engine::new_raw`). Rhai's `if … { } else { }` and
//! `switch` expressions still parse and work; a string literal parses but
//! is refused as a result. Additions and limits:
//!
//! - `and`, `or`, `not` are spellings of `&&`, `||`, `!` (same precedence,
//!   short-circuit);
//! - functions: `abs(x)`, `min(a, b)`, `max(a, b)`;
//! - variables are the device's tag names (only names that are identifiers:
//!   a tag called `TT-101` cannot be referenced); numeric tags are floats, boolean
//!   tags `true`/`false`; integer and float mix freely (`temp > 5`);
//! - the result is a number or a boolean (`true` = 1, `false` = 0), compared
//!   with the rule's `op`/threshold (default `NE 0`, i.e. "is true");
//! - evaluation is bounded (expression depth 32, 10 000 operations).
//!
//! A referenced name that is not a tag of the device, a syntax error, or a
//! type error found by evaluating once with every tag at 0/`false` and once
//! at 1/`true` is reported with its byte offset into the expression, so the
//! configuration error points at the character.

use std::sync::OnceLock;

use rhai::{Dynamic, Engine, EvalAltResult, ParseErrorType, Position, Scope, Token, AST};

/// Maximum nesting of an expression (parentheses, operators).
const MAX_DEPTH: usize = 32;
/// Maximum operations per evaluation.
const MAX_OPERATIONS: u64 = 10_000;

/// A tag an expression may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarKind {
    Number,
    Bool,
}

/// A compiled expression and the tags it reads.
#[derive(Clone)]
pub struct Expression {
    source: String,
    ast: AST,
    /// Referenced tag names, in order of first appearance.
    references: Vec<(String, VarKind)>,
}

impl std::fmt::Debug for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expression")
            .field("source", &self.source)
            .field("references", &self.references)
            .finish()
    }
}

/// Why an expression was refused or could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
    /// Byte offset into the expression, when the error has a place.
    pub offset: Option<usize>,
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        // `new_raw`: built-in operators only (arithmetic, comparison, logic
        // on numbers and booleans), no standard library.
        let mut e = Engine::new_raw();
        e.set_strict_variables(true);
        e.set_max_expr_depths(MAX_DEPTH);
        e.set_max_operations(MAX_OPERATIONS);
        e.set_max_string_size(256);
        // `on_parse_token` is marked deprecated only as "volatile"
        // (`internals`); the version is pinned.
        #[allow(deprecated)]
        e.on_parse_token(|token, _pos, _state| match token {
            Token::Identifier(ref s) if s.as_str() == "and" => Token::And,
            Token::Identifier(ref s) if s.as_str() == "or" => Token::Or,
            Token::Identifier(ref s) if s.as_str() == "not" => Token::Bang,
            other => other,
        });
        e.register_fn("abs", |x: f64| x.abs());
        e.register_fn("abs", |x: i64| x.unsigned_abs() as f64);
        e.register_fn("min", |a: f64, b: f64| a.min(b));
        e.register_fn("max", |a: f64, b: f64| a.max(b));
        e.register_fn("min", |a: i64, b: f64| (a as f64).min(b));
        e.register_fn("min", |a: f64, b: i64| a.min(b as f64));
        e.register_fn("min", |a: i64, b: i64| a.min(b) as f64);
        e.register_fn("max", |a: i64, b: f64| (a as f64).max(b));
        e.register_fn("max", |a: f64, b: i64| a.max(b as f64));
        e.register_fn("max", |a: i64, b: i64| a.max(b) as f64);
        e
    })
}

/// Byte offset of a 1-based Rhai position (line, column in characters).
fn offset_of(source: &str, pos: Position) -> Option<usize> {
    let (line, col) = (pos.line()?, pos.position().unwrap_or(1));
    let start = source
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum::<usize>();
    let rest = source.get(start..)?;
    Some(
        start
            + rest
                .char_indices()
                .nth(col.saturating_sub(1))
                .map_or(rest.len(), |(i, _)| i),
    )
}

fn err(source: &str, message: impl Into<String>, pos: Position) -> ExprError {
    ExprError {
        message: message.into(),
        offset: offset_of(source, pos),
    }
}

impl Expression {
    /// Compiles `source`; `tags` are the names it may reference (the device's
    /// tags with their kind). Checks names, syntax and types (see module docs).
    pub fn compile(source: &str, tags: &dyn Fn(&str) -> Option<VarKind>) -> Result<Expression, ExprError> {
        if source.trim().is_empty() {
            return Err(ExprError {
                message: "the expression is empty".into(),
                offset: Some(0),
            });
        }
        let e = engine();
        let mut references: Vec<(String, VarKind)> = Vec::new();
        // Compile against the names found so far; each undefined one is
        // either a tag (added, compiled again) or the error.
        let ast = loop {
            let mut scope = Scope::new();
            // Variables, not constants: the optimizer would fold a constant's
            // compile-time value into the AST.
            for (name, kind) in &references {
                scope.push_dynamic(name.as_str(), zero(*kind));
            }
            match e.compile_expression_with_scope(&scope, source) {
                Ok(ast) => break ast,
                Err(pe) => {
                    let pos = pe.1;
                    match *pe.0 {
                        ParseErrorType::VariableUndefined(name) => match tags(&name) {
                            Some(kind) if !references.iter().any(|(n, _)| *n == name) => {
                                references.push((name, kind));
                            }
                            _ => {
                                return Err(err(
                                    source,
                                    format!("`{name}` is not a numeric or boolean tag of this device"),
                                    pos,
                                ))
                            }
                        },
                        other => return Err(err(source, describe_parse(&other), pos)),
                    }
                }
            }
        };
        let x = Expression {
            source: source.to_string(),
            ast,
            references,
        };
        // Type check: evaluate with every tag at 0/false and at 1/true.
        for one in [false, true] {
            let values: Vec<Dynamic> = x
                .references
                .iter()
                .map(|(_, k)| if one { unit(*k) } else { zero(*k) })
                .collect();
            x.eval_dynamic(&values).map_err(|e| ExprError {
                message: format!(
                    "{} (found by evaluating with every tag at {})",
                    e.message,
                    if one { "1/true" } else { "0/false" }
                ),
                offset: e.offset,
            })?;
        }
        Ok(x)
    }

    /// The expression's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Tags the expression reads, in order of first appearance.
    pub fn references(&self) -> impl Iterator<Item = &str> {
        self.references.iter().map(|(n, _)| n.as_str())
    }

    /// Number of referenced tags.
    pub fn arity(&self) -> usize {
        self.references.len()
    }

    /// Evaluates with `values[i]` for the i-th referenced tag (numbers; a
    /// boolean tag's value is true when non-zero). Returns the result as a
    /// number (`true` = 1, `false` = 0).
    pub fn eval(&self, values: &[f64]) -> Result<f64, ExprError> {
        let dynamic: Vec<Dynamic> = self
            .references
            .iter()
            .zip(values)
            .map(|((_, k), v)| match k {
                VarKind::Bool => Dynamic::from_bool(*v != 0.0),
                VarKind::Number => Dynamic::from_float(*v),
            })
            .collect();
        self.eval_dynamic(&dynamic)
    }

    fn eval_dynamic(&self, values: &[Dynamic]) -> Result<f64, ExprError> {
        if values.len() != self.references.len() {
            return Err(ExprError {
                message: format!("{} values for {} tags", values.len(), self.references.len()),
                offset: None,
            });
        }
        let mut scope = Scope::new();
        for ((name, _), v) in self.references.iter().zip(values) {
            scope.push_dynamic(name.as_str(), v.clone());
        }
        let out: Dynamic = engine()
            .eval_ast_with_scope(&mut scope, &self.ast)
            .map_err(|e| self.eval_error(*e))?;
        if let Some(b) = out.clone().try_cast::<bool>() {
            return Ok(if b { 1.0 } else { 0.0 });
        }
        if let Some(f) = out.clone().try_cast::<f64>() {
            return Ok(f);
        }
        if let Some(i) = out.clone().try_cast::<i64>() {
            return Ok(i as f64);
        }
        Err(ExprError {
            message: format!(
                "the expression yields a {}, not a number or true/false",
                out.type_name()
            ),
            offset: Some(0),
        })
    }

    fn eval_error(&self, e: EvalAltResult) -> ExprError {
        let pos = e.position();
        let message = match &e {
            EvalAltResult::ErrorFunctionNotFound(sig, _) => {
                format!("no operator or function `{sig}`: check the operand types (numbers vs true/false)")
            }
            EvalAltResult::ErrorArithmetic(m, _) => format!("arithmetic error: {m}"),
            EvalAltResult::ErrorMismatchDataType(expected, found, _) => {
                let name = |t: &str| {
                    match t {
                        "f64" | "i64" => "number",
                        "bool" => "true/false",
                        other => other,
                    }
                    .to_string()
                };
                format!(
                    "a {} where {} is needed (a comparison turns a number into true/false, e.g. `speed > 0`)",
                    name(found),
                    name(expected)
                )
            }
            EvalAltResult::ErrorTooManyOperations(_) => {
                format!("the expression needs more than {MAX_OPERATIONS} operations")
            }
            other => {
                // Rhai appends " (line L, position P)": the offset carries that.
                let s = other.to_string();
                s.split(" (line ").next().unwrap_or(&s).to_string()
            }
        };
        err(&self.source, message, pos)
    }
}

fn zero(k: VarKind) -> Dynamic {
    match k {
        VarKind::Number => Dynamic::from_float(0.0),
        VarKind::Bool => Dynamic::FALSE,
    }
}

fn unit(k: VarKind) -> Dynamic {
    match k {
        VarKind::Number => Dynamic::from_float(1.0),
        VarKind::Bool => Dynamic::TRUE,
    }
}

fn describe_parse(e: &ParseErrorType) -> String {
    match e {
        ParseErrorType::UnexpectedEOF => "the expression ends too early".into(),
        ParseErrorType::BadInput(l) => format!("{l}"),
        ParseErrorType::MissingToken(tok, what) => format!("expected `{tok}` {what}"),
        ParseErrorType::ExprTooDeep => format!("the expression nests deeper than {MAX_DEPTH} levels"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(name: &str) -> Option<VarKind> {
        match name {
            "temp_in" | "temp_out" | "speed" | "level" => Some(VarKind::Number),
            "pump_on" => Some(VarKind::Bool),
            _ => None,
        }
    }

    fn compile(s: &str) -> Result<Expression, ExprError> {
        Expression::compile(s, &tags)
    }

    #[test]
    fn the_issue_example_with_words_for_logic() {
        let x = compile("temp_in - temp_out > 5 and pump_on").unwrap();
        assert_eq!(
            x.references().collect::<Vec<_>>(),
            ["temp_in", "temp_out", "pump_on"]
        );
        assert_eq!(x.eval(&[30.0, 20.0, 1.0]).unwrap(), 1.0);
        assert_eq!(x.eval(&[30.0, 20.0, 0.0]).unwrap(), 0.0);
        assert_eq!(x.eval(&[24.0, 20.0, 1.0]).unwrap(), 0.0);
    }

    #[test]
    fn precedence_of_not_and_or_matches_the_symbols() {
        // not binds tighter than and; and tighter than or.
        let x = compile("not pump_on and speed > 1 or level < 0").unwrap();
        let v = |p: f64, s: f64, l: f64| x.eval(&[p, s, l]).unwrap();
        assert_eq!(v(0.0, 2.0, 5.0), 1.0);
        assert_eq!(v(1.0, 2.0, 5.0), 0.0);
        assert_eq!(v(1.0, 0.0, -1.0), 1.0);
        let y = compile("!pump_on && speed > 1 || level < 0").unwrap();
        for args in [
            [0.0, 2.0, 5.0],
            [1.0, 2.0, 5.0],
            [1.0, 0.0, -1.0],
            [0.0, 0.0, 0.0],
        ] {
            assert_eq!(x.eval(&args).unwrap(), y.eval(&args).unwrap());
        }
    }

    #[test]
    fn arithmetic_abs_min_max_and_numeric_results() {
        let x = compile("abs(temp_in - temp_out) * 2 + max(speed, 1) - min(level, 0.5)").unwrap();
        assert_eq!(x.eval(&[1.0, 4.0, 0.0, 3.0]).unwrap(), 6.0 + 1.0 - 0.5);
        assert_eq!(compile("abs(-3) + 1").unwrap().eval(&[]).unwrap(), 4.0);
    }

    #[test]
    fn errors_point_into_the_expression() {
        let e = compile("temp_inn - temp_out > 5").unwrap_err();
        assert_eq!(e.offset, Some(0), "{e}");
        assert!(e.message.contains("temp_inn"), "{e}");
        let e = compile("temp_in - temp_out > 5 and pumpon").unwrap_err();
        assert_eq!(e.offset, Some(27), "{e}");
        let e = compile("temp_in > (5").unwrap_err();
        assert!(e.offset.is_some(), "{e}");
        // A type error: `and` of a number, found by the trial evaluation.
        let e = compile("speed and pump_on").unwrap_err();
        assert!(e.message.contains("a number where true/false is needed"), "{e}");
        assert!(e.offset.is_some(), "{e}");
        // Statements and strings are not part of the language.
        assert!(compile("let x = 1; x").is_err());
        assert!(compile("").is_err());
        // Integer division by zero is an error, never a panic.
        assert!(compile("1 / 0 > speed").is_err());
        // Depth is bounded.
        let deep = format!("{}speed{}", "(".repeat(100), ")".repeat(100));
        assert!(compile(&deep).is_err());
    }

    #[test]
    fn a_string_result_is_refused() {
        let e = compile("\"x\"").unwrap_err();
        assert!(e.message.contains("not a number"), "{e}");
    }
}
