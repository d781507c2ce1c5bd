//! Lexer and recursive-descent parser.
//!
//! Precedence, lowest first: `? :`, `||`, `&&`, comparisons and `in`, then `+ - |`
//! (Mixer's default operator binds like Go's binary `|`: at the level of `+` and `-`,
//! left-associative, so `a | "" == "x"` is `(a | "") == "x"` and `a | "x" + "y"` is
//! `(a | "x") + "y"`), `* / %`, unary `! -`, then selection, indexing and calls.
//!
//! `$out.FIELD` names an output of an attribute-generating adapter (attribute bindings).
//!
//! Depth is bounded so that no input can exhaust the stack, here or in the compiler and
//! evaluator that walk the tree recursively: `&&` and `||` chains become one n-ary node
//! however long they are, and anything else nested deeper than [`MAX_DEPTH`] (parentheses,
//! calls, other operator chains) is an error.

use super::ExprError;

/// How deep a syntax tree may be, and how deeply the parser may recurse into parentheses,
/// arguments and unary operators.
pub const MAX_DEPTH: usize = 50;

#[derive(Debug, Clone, PartialEq)]
pub enum Ast {
    Ident(String),
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Select(Box<Node>, String),
    Index(Box<Node>, Box<Node>),
    Call {
        target: Option<Box<Node>>,
        name: String,
        args: Vec<Node>,
    },
    Unary(UnaryOp, Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
    /// A chain of `&&` (or of `||`), two terms or more.
    Logical(BinaryOp, Vec<Node>),
    Ternary(Box<Node>, Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub ast: Ast,
    pub pos: usize,
    /// Height of this subtree (a leaf is 1).
    depth: usize,
}

impl Node {
    fn new(ast: Ast, pos: usize) -> Result<Node, ExprError> {
        let child = match &ast {
            Ast::Ident(_) | Ast::Str(_) | Ast::Int(_) | Ast::Double(_) | Ast::Bool(_) => 0,
            Ast::Select(t, _) | Ast::Unary(_, t) => t.depth,
            Ast::Index(a, b) | Ast::Binary(_, a, b) => a.depth.max(b.depth),
            Ast::Call { target, args, .. } => {
                args.iter().map(|a| a.depth).chain(target.iter().map(|t| t.depth)).max().unwrap_or(0)
            }
            Ast::Logical(_, terms) => terms.iter().map(|t| t.depth).max().unwrap_or(0),
            Ast::Ternary(a, b, c) => a.depth.max(b.depth).max(c.depth),
        };
        if child >= MAX_DEPTH {
            return Err(too_deep(pos));
        }
        Ok(Node { ast, pos, depth: child + 1 })
    }
}

fn too_deep(pos: usize) -> ExprError {
    ExprError::new(pos, format!("expression nested deeper than {MAX_DEPTH} levels"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Default,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Double(f64),
    Punct(&'static str),
    End,
}

const PUNCTS: &[&str] = &[
    "==", "!=", "<=", ">=", "&&", "||", "(", ")", "[", "]", ".", ",", "!", "<", ">", "|", "+", "-", "*", "/", "%", "?",
    ":",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c == b'"' || c == b'\'' {
            let (s, next) = lex_string(src, i)?;
            out.push((Tok::Str(s), start));
            i = next;
        } else if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                // Stop at `.` followed by a letter: `1.foo` is a selection, not a number.
                if bytes[i] == b'.' && bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphabetic()) {
                    break;
                }
                i += 1;
            }
            let text = &src[start..i];
            let tok = if let Some(hex) = text.strip_prefix("0x") {
                i64::from_str_radix(hex, 16).ok().map(Tok::Int)
            } else if text.contains(['.', 'e', 'E']) {
                text.parse().ok().map(Tok::Double)
            } else {
                text.parse().ok().map(Tok::Int)
            };
            let tok = tok.ok_or_else(|| ExprError::new(start, format!("bad number {text:?}")))?;
            out.push((tok, start));
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Ident(src[start..i].to_string()), start));
        } else {
            let p = PUNCTS.iter().find(|p| src[i..].starts_with(**p)).ok_or_else(|| {
                let ch = src[i..].chars().next().unwrap_or('?');
                ExprError::new(start, format!("unexpected character {ch:?}"))
            })?;
            i += p.len();
            out.push((Tok::Punct(p), start));
        }
    }
    out.push((Tok::End, src.len()));
    Ok(out)
}

fn lex_string(src: &str, start: usize) -> Result<(String, usize), ExprError> {
    let quote = src.as_bytes()[start] as char;
    let mut out = String::new();
    let mut chars = src[start + 1..].char_indices();
    while let Some((off, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, start + 1 + off + 1)),
            '\\' => {
                let (_, e) = chars.next().ok_or_else(|| ExprError::new(start, "unterminated string"))?;
                match e {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    '0' => out.push('\0'),
                    '\\' | '"' | '\'' => out.push(e),
                    // Regex escapes stay escaped for the regex compiler: Mixer configs
                    // write both "\\." and "\." and both must work.
                    '.' | '/' | '*' | '?' | '-' | '[' | ']' | '(' | ')' | '{' | '}' | '^' | '$' | '+' | '|' | 'd'
                    | 'w' | 's' | 'b' | 'D' | 'W' | 'S' | 'B' => {
                        out.push('\\');
                        out.push(e);
                    }
                    other => {
                        return Err(ExprError::new(start + 1 + off, format!("unknown escape \\{other}")));
                    }
                }
            }
            c => out.push(c),
        }
    }
    Err(ExprError::new(start, "unterminated string"))
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
    /// Current recursion into nested sub-expressions.
    nesting: usize,
}

/// Parses one expression.
pub fn parse(src: &str) -> Result<Node, ExprError> {
    let mut p = Parser { toks: lex(src)?, at: 0, nesting: 0 };
    let node = p.ternary()?;
    match p.peek() {
        Tok::End => Ok(node),
        other => Err(ExprError::new(p.pos(), format!("unexpected {}", describe(other)))),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("identifier {s:?}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Int(i) => format!("number {i}"),
        Tok::Double(d) => format!("number {d}"),
        Tok::Punct(p) => format!("'{p}'"),
        Tok::End => "end of expression".into(),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn pos(&self) -> usize {
        self.toks[self.at].1
    }

    fn bump(&mut self) -> (Tok, usize) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn eat(&mut self, p: &str) -> bool {
        if matches!(self.peek(), Tok::Punct(q) if *q == p) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), ExprError> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(ExprError::new(self.pos(), format!("expected '{p}', found {}", describe(self.peek()))))
        }
    }

    fn enter(&mut self) -> Result<(), ExprError> {
        self.nesting += 1;
        if self.nesting > MAX_DEPTH { Err(too_deep(self.pos())) } else { Ok(()) }
    }

    fn ternary(&mut self) -> Result<Node, ExprError> {
        self.enter()?;
        let cond = self.binary()?;
        let out = if self.eat("?") {
            let a = self.ternary()?;
            self.expect(":")?;
            let b = self.ternary()?;
            let pos = cond.pos;
            Node::new(Ast::Ternary(Box::new(cond), Box::new(a), Box::new(b)), pos)?
        } else {
            cond
        };
        self.nesting -= 1;
        Ok(out)
    }

    fn binary_op(&self) -> Option<BinaryOp> {
        Some(match self.peek() {
            Tok::Punct(p) => match *p {
                "||" => BinaryOp::Or,
                "&&" => BinaryOp::And,
                "==" => BinaryOp::Eq,
                "!=" => BinaryOp::Ne,
                "<" => BinaryOp::Lt,
                "<=" => BinaryOp::Le,
                ">" => BinaryOp::Gt,
                ">=" => BinaryOp::Ge,
                "|" => BinaryOp::Default,
                "+" => BinaryOp::Add,
                "-" => BinaryOp::Sub,
                "*" => BinaryOp::Mul,
                "/" => BinaryOp::Div,
                "%" => BinaryOp::Rem,
                _ => return None,
            },
            Tok::Ident(s) if s == "in" => BinaryOp::In,
            _ => return None,
        })
    }

    /// Binary operators by precedence climbing with explicit stacks: no recursion per
    /// precedence level, so a nested sub-expression costs few stack frames.
    fn binary(&mut self) -> Result<Node, ExprError> {
        let mut operands = vec![self.unary()?];
        let mut ops: Vec<BinaryOp> = Vec::new();
        while let Some(op) = self.binary_op() {
            self.bump();
            while ops.last().is_some_and(|top| precedence(*top) >= precedence(op)) {
                reduce(&mut operands, &mut ops)?;
            }
            ops.push(op);
            operands.push(self.unary()?);
        }
        while !ops.is_empty() {
            reduce(&mut operands, &mut ops)?;
        }
        operands.pop().ok_or_else(|| ExprError::new(self.pos(), "missing operand"))
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        let pos = self.pos();
        if self.eat("!") {
            self.enter()?;
            let inner = self.unary()?;
            self.nesting -= 1;
            return Node::new(Ast::Unary(UnaryOp::Not, Box::new(inner)), pos);
        }
        if self.eat("-") {
            self.enter()?;
            let inner = self.unary()?;
            self.nesting -= 1;
            let ast = match inner.ast {
                Ast::Int(i) => Ast::Int(-i),
                Ast::Double(d) => Ast::Double(-d),
                other => Ast::Unary(UnaryOp::Neg, Box::new(Node::new(other, inner.pos)?)),
            };
            return Node::new(ast, pos);
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Result<Node, ExprError> {
        let mut node = self.primary()?;
        loop {
            let pos = self.pos();
            if self.eat(".") {
                let name = match self.bump() {
                    (Tok::Ident(s), _) => s,
                    (t, p) => {
                        return Err(ExprError::new(p, format!("expected a name after '.', found {}", describe(&t))));
                    }
                };
                if self.eat("(") {
                    let args = self.args()?;
                    node = Node::new(Ast::Call { target: Some(Box::new(node)), name, args }, pos)?;
                } else {
                    let p = node.pos;
                    node = Node::new(Ast::Select(Box::new(node), name), p)?;
                }
            } else if self.eat("[") {
                let key = self.ternary()?;
                self.expect("]")?;
                let p = node.pos;
                node = Node::new(Ast::Index(Box::new(node), Box::new(key)), p)?;
            } else {
                return Ok(node);
            }
        }
    }

    fn args(&mut self) -> Result<Vec<Node>, ExprError> {
        let mut args = Vec::new();
        if self.eat(")") {
            return Ok(args);
        }
        loop {
            args.push(self.ternary()?);
            if self.eat(")") {
                return Ok(args);
            }
            self.expect(",")?;
        }
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let (tok, pos) = self.bump();
        let ast = match tok {
            Tok::Str(s) => Ast::Str(s),
            Tok::Int(i) => Ast::Int(i),
            Tok::Double(d) => Ast::Double(d),
            Tok::Ident(s) if s == "true" => Ast::Bool(true),
            Tok::Ident(s) if s == "false" => Ast::Bool(false),
            Tok::Ident(s) => {
                if self.eat("(") {
                    let args = self.args()?;
                    Ast::Call { target: None, name: s, args }
                } else {
                    Ast::Ident(s)
                }
            }
            Tok::Punct("(") => {
                let inner = self.ternary()?;
                self.expect(")")?;
                return Ok(inner);
            }
            other => {
                return Err(ExprError::new(pos, format!("unexpected {}", describe(&other))));
            }
        };
        Node::new(ast, pos)
    }
}

/// Combines the top two operands with the top operator. `&&` and `||` extend a chain of
/// the same operator rather than nest, so chains of any length stay one node deep.
fn reduce(operands: &mut Vec<Node>, ops: &mut Vec<BinaryOp>) -> Result<(), ExprError> {
    let (Some(op), Some(right), Some(left)) = (ops.pop(), operands.pop(), operands.pop()) else {
        return Err(ExprError::new(0, "missing operand"));
    };
    let pos = left.pos;
    let node = match (op, left) {
        (BinaryOp::And | BinaryOp::Or, Node { ast: Ast::Logical(chain, mut terms), depth, .. }) if chain == op => {
            if right.depth >= MAX_DEPTH {
                return Err(too_deep(right.pos));
            }
            let depth = depth.max(right.depth + 1);
            terms.push(right);
            Node { ast: Ast::Logical(op, terms), pos, depth }
        }
        (BinaryOp::And | BinaryOp::Or, left) => Node::new(Ast::Logical(op, vec![left, right]), pos)?,
        (op, left) => Node::new(Ast::Binary(op, Box::new(left), Box::new(right)), pos)?,
    };
    operands.push(node);
    Ok(())
}

fn precedence(op: BinaryOp) -> usize {
    match op {
        BinaryOp::Or => 0,
        BinaryOp::And => 1,
        BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge | BinaryOp::In => 2,
        BinaryOp::Default | BinaryOp::Add | BinaryOp::Sub => 3,
        BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n: &Node) -> String {
        match &n.ast {
            Ast::Ident(s) => s.clone(),
            Ast::Str(s) => format!("{s:?}"),
            Ast::Int(i) => i.to_string(),
            Ast::Double(d) => d.to_string(),
            Ast::Bool(b) => b.to_string(),
            Ast::Select(t, f) => format!("{}.{f}", shape(t)),
            Ast::Index(t, k) => format!("{}[{}]", shape(t), shape(k)),
            Ast::Call { target, name, args } => {
                let a: Vec<String> = args.iter().map(shape).collect();
                match target {
                    Some(t) => format!("{}.{name}({})", shape(t), a.join(",")),
                    None => format!("{name}({})", a.join(",")),
                }
            }
            Ast::Unary(op, x) => format!("({op:?} {})", shape(x)),
            Ast::Binary(op, a, b) => format!("({op:?} {} {})", shape(a), shape(b)),
            Ast::Logical(op, terms) => {
                let t: Vec<String> = terms.iter().map(shape).collect();
                format!("({op:?} {})", t.join(" "))
            }
            Ast::Ternary(c, a, b) => format!("({} ? {} : {})", shape(c), shape(a), shape(b)),
        }
    }

    #[test]
    fn default_operator_binds_tighter_than_comparison() {
        let n = parse(r#"request.headers["x"] | "" == "y" && a.b"#).unwrap();
        assert_eq!(shape(&n), r#"(And (Eq (Default request.headers["x"] "") "y") a.b)"#);
    }

    #[test]
    fn default_operator_is_additive_and_left_associative() {
        assert_eq!(shape(&parse(r#"a | "x" + "y""#).unwrap()), r#"(Add (Default a "x") "y")"#);
        assert_eq!(shape(&parse(r#""p" + a | "x""#).unwrap()), r#"(Default (Add "p" a) "x")"#);
        assert_eq!(shape(&parse("a | b | c").unwrap()), "(Default (Default a b) c)");
        assert_eq!(shape(&parse("a | b * c").unwrap()), "(Default a (Mul b c))");
        assert_eq!(shape(&parse("$out.x | 1").unwrap()), "(Default $out.x 1)");
    }

    #[test]
    fn calls_methods_literals_and_ternary() {
        let n = parse(r#""^/api.*".matches(request.path) || x.startsWith('a') ? -1 : 2.5"#).unwrap();
        assert_eq!(shape(&n), r#"((Or "^/api.*".matches(request.path) x.startsWith("a")) ? -1 : 2.5)"#);
        assert_eq!(shape(&parse("!(a == 1) && \"k\" in m").unwrap()), r#"(And (Not (Eq a 1)) (In "k" m))"#);
    }

    #[test]
    fn reports_positions_of_errors() {
        assert_eq!(parse("a ==").unwrap_err().pos, 4);
        assert_eq!(parse("a == \"x").unwrap_err().message, "unterminated string");
        assert_eq!(parse("a # b").unwrap_err().pos, 2);
        let e = parse("f(a,").unwrap_err();
        assert_eq!(e.pos, 4);
        assert!(parse("(a").unwrap_err().message.contains("expected ')'"));
        assert!(parse("a b").unwrap_err().message.contains("unexpected identifier"));
    }

    #[test]
    fn logical_chains_are_flat_and_nesting_is_bounded() {
        assert_eq!(shape(&parse("a || b || c && d && e").unwrap()), "(Or a b (And c d e))");
        let chain = vec!["x == 1"; 100_000].join(" || ");
        let Ast::Logical(BinaryOp::Or, terms) = parse(&chain).unwrap().ast else { panic!("not flat") };
        assert_eq!(terms.len(), 100_000);

        let deep = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(parse(&deep).unwrap_err().message.contains("nested deeper than 50 levels"));
        assert!(parse(&format!("{}x", "!".repeat(100_000))).unwrap_err().message.contains("deeper"));
        assert!(parse(&vec!["a"; 100_000].join(" + ")).unwrap_err().message.contains("deeper"));
        assert!(parse(&format!("{}a", "f(".repeat(5000))).unwrap_err().message.contains("deeper"));
        assert!(parse(&format!("a{}", "[b]".repeat(5000))).unwrap_err().message.contains("deeper"));
        let fine = format!("{}x{}", "(".repeat(MAX_DEPTH - 1), ")".repeat(MAX_DEPTH - 1));
        assert!(parse(&fine).is_ok());
    }

    #[test]
    fn regex_escapes_survive() {
        assert_eq!(parse(r#""a\.b""#).unwrap().ast, Ast::Str(r"a\.b".into()));
        assert_eq!(parse(r#""say \"hi\"""#).unwrap().ast, Ast::Str(r#"say "hi""#.into()));
    }
}
