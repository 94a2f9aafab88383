//! A recursive-descent evaluator over exact rationals.

use hearth_sdk::{Value, json};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Signed, ToPrimitive, Zero};

/// Deepest nesting of parentheses and unary operators accepted; deeper input
/// is refused instead of overflowing the stack.
const MAX_DEPTH: usize = 200;
/// Largest exponent magnitude accepted by `^`.
const MAX_EXPONENT: u32 = 4096;
/// Longest expression accepted, in bytes.
const MAX_LEN: usize = 10_000;

/// Why an expression could not be evaluated; messages name the position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError(pub String);

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Evaluates `input` exactly.
pub fn evaluate(input: &str) -> Result<BigRational, EvalError> {
    if input.len() > MAX_LEN {
        return Err(EvalError(format!(
            "expression is {} bytes long; the limit is {MAX_LEN}",
            input.len()
        )));
    }
    let mut parser = Parser {
        src: input.as_bytes(),
        pos: 0,
        depth: 0,
    };
    parser.skip_ws();
    if parser.pos == parser.src.len() {
        return Err(EvalError("expression is empty".into()));
    }
    let value = parser.expr()?;
    parser.skip_ws();
    if parser.pos < parser.src.len() {
        return Err(parser.unexpected("an operator or the end"));
    }
    Ok(value)
}

/// The tool's JSON result: the expression, the nearest number and the exact fraction.
pub fn to_json(expression: &str, value: &BigRational) -> Value {
    let number = if value.is_integer() {
        match value.to_integer().to_i64() {
            Some(i) => json!(i),
            None => json!(value.to_f64()),
        }
    } else {
        json!(value.to_f64())
    };
    let exact = if value.is_integer() {
        value.to_integer().to_string()
    } else {
        format!("{}/{}", value.numer(), value.denom())
    };
    json!({ "expression": expression, "value": number, "exact": exact })
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.pos < self.src.len() && self.src[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.get(self.pos).copied()
    }

    fn unexpected(&self, expected: &str) -> EvalError {
        match std::str::from_utf8(&self.src[self.pos..])
            .ok()
            .and_then(|s| s.chars().next())
        {
            Some(c) => EvalError(format!(
                "unexpected `{c}` at position {}; expected {expected}",
                self.pos + 1
            )),
            None => EvalError(format!("unexpected end of expression; expected {expected}")),
        }
    }

    fn enter(&mut self) -> Result<(), EvalError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(EvalError(format!(
                "expression nests deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<BigRational, EvalError> {
        let mut acc = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let rhs = self.term()?;
            acc = if op == b'+' { acc + rhs } else { acc - rhs };
        }
        Ok(acc)
    }

    fn term(&mut self) -> Result<BigRational, EvalError> {
        let mut acc = self.unary()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek() {
            let at = self.pos + 1;
            self.pos += 1;
            let rhs = self.unary()?;
            if op != b'*' && rhs.is_zero() {
                return Err(EvalError(format!("division by zero at position {at}")));
            }
            acc = match op {
                b'*' => acc * rhs,
                b'/' => acc / rhs,
                _ => {
                    // Remainder with the sign of the dividend, as in most languages.
                    let q = (&acc / &rhs).trunc();
                    acc - q * rhs
                }
            };
        }
        Ok(acc)
    }

    fn unary(&mut self) -> Result<BigRational, EvalError> {
        match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                self.enter()?;
                let v = self.unary()?;
                self.depth -= 1;
                Ok(-v)
            }
            Some(b'+') => {
                self.pos += 1;
                self.enter()?;
                let v = self.unary()?;
                self.depth -= 1;
                Ok(v)
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Result<BigRational, EvalError> {
        let base = self.atom()?;
        if self.peek() != Some(b'^') {
            return Ok(base);
        }
        let at = self.pos + 1;
        self.pos += 1;
        self.enter()?;
        let exponent = self.unary()?;
        self.depth -= 1;
        if !exponent.is_integer() {
            return Err(EvalError(format!(
                "exponent at position {at} must be a whole number to stay exact"
            )));
        }
        let e = exponent
            .to_integer()
            .abs()
            .to_u32()
            .filter(|e| *e <= MAX_EXPONENT)
            .ok_or_else(|| {
                EvalError(format!(
                    "exponent at position {at} is larger than {MAX_EXPONENT}"
                ))
            })?;
        if base.is_zero() && exponent.is_negative() {
            return Err(EvalError(format!(
                "zero to a negative power at position {at}"
            )));
        }
        let raised = num_traits::pow(base, e as usize);
        Ok(if exponent.is_negative() {
            raised.recip()
        } else {
            raised
        })
    }

    fn atom(&mut self) -> Result<BigRational, EvalError> {
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                self.enter()?;
                let v = self.expr()?;
                self.depth -= 1;
                if self.peek() != Some(b')') {
                    return Err(self.unexpected("`)`"));
                }
                self.pos += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            _ => Err(self.unexpected("a number or `(`")),
        }
    }

    fn number(&mut self) -> Result<BigRational, EvalError> {
        let start = self.pos;
        let mut digits = String::new();
        let mut scale = 0u32;
        let mut seen_dot = false;
        while let Some(&c) = self.src.get(self.pos) {
            if c.is_ascii_digit() {
                digits.push(c as char);
                if seen_dot {
                    scale += 1;
                }
            } else if c == b'.' && !seen_dot {
                seen_dot = true;
            } else if c == b'_' {
                // digit separator: 1_000_000
            } else {
                break;
            }
            self.pos += 1;
        }
        if digits.is_empty() {
            self.pos = start;
            return Err(self.unexpected("a digit"));
        }
        let numer: BigInt = digits
            .parse()
            .map_err(|e| EvalError(format!("bad number at position {}: {e}", start + 1)))?;
        let denom = num_traits::pow(BigInt::from(10), scale as usize);
        let mut value = BigRational::new(numer, denom);
        if matches!(self.src.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            let negative = match self.src.get(self.pos) {
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                _ => false,
            };
            let exp_start = self.pos;
            while self.src.get(self.pos).is_some_and(u8::is_ascii_digit) {
                self.pos += 1;
            }
            let exp: u32 = std::str::from_utf8(&self.src[exp_start..self.pos])
                .ok()
                .and_then(|s| s.parse().ok())
                .filter(|e| *e <= MAX_EXPONENT)
                .ok_or_else(|| {
                    EvalError(format!(
                        "bad exponent in the number at position {}",
                        start + 1
                    ))
                })?;
            let factor = BigRational::from_integer(num_traits::pow(BigInt::from(10), exp as usize));
            value = if negative {
                value / factor
            } else {
                value * factor
            };
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(s: &str) -> String {
        let v = evaluate(s).unwrap();
        to_json(s, &v)["exact"].as_str().unwrap().to_string()
    }

    #[test]
    fn follows_precedence_and_parentheses() {
        assert_eq!(eval("2*(3+4)"), "14");
        assert_eq!(eval("2*3+4"), "10");
        assert_eq!(eval("2+3*4"), "14");
        assert_eq!(eval("(2+3)*4"), "20");
        assert_eq!(eval("10-4-3"), "3");
        assert_eq!(eval("2^3^2"), "512");
        assert_eq!(eval("-2^2"), "-4");
        assert_eq!(eval("(-2)^2"), "4");
        assert_eq!(eval("  7 % 3 "), "1");
        assert_eq!(eval("-7 % 3"), "-1");
    }

    #[test]
    fn is_exact() {
        assert_eq!(eval("0.1 + 0.2"), "3/10");
        assert_eq!(eval("1/3 * 3"), "1");
        assert_eq!(eval("1/3 + 1/6"), "1/2");
        assert_eq!(eval("2^-2"), "1/4");
        assert_eq!(eval("1.5e3"), "1500");
        assert_eq!(eval("2^100"), "1267650600228229401496703205376");
        assert_eq!(eval("1_000 * 3"), "3000");
    }

    #[test]
    fn json_value_is_a_number() {
        let v = to_json("2*(3+4)", &evaluate("2*(3+4)").unwrap());
        assert_eq!(v["value"], json!(14));
        let v = to_json("1/4", &evaluate("1/4").unwrap());
        assert_eq!(v["value"], json!(0.25));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = |s: &str| evaluate(s).unwrap_err().0;
        assert_eq!(err("1/0"), "division by zero at position 2");
        assert_eq!(err("1/(2-2)"), "division by zero at position 2");
        assert!(err("2*(3+4").contains("expected `)`"), "{}", err("2*(3+4"));
        assert!(err("2 +").contains("unexpected end"));
        assert!(err("2 $ 3").contains("unexpected `$` at position 3"));
        assert_eq!(err(""), "expression is empty");
        assert!(err("2^0.5").contains("whole number"));
        assert!(err("2^99999").contains("larger than"));
        assert!(err("0^-1").contains("zero to a negative power"));
        assert!(err(&"(".repeat(10_000)).contains("deeper than"));
        assert!(err(&"-".repeat(5_000)).contains("deeper than"));
        assert!(err(&"1".repeat(20_000)).contains("limit"));
    }
}
