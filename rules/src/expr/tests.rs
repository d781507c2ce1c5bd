//! Behaviour of every function and operator, evaluated against real bags.

use super::*;
use crate::bag::{Bag, Condition, Referenced};
use crate::manifest::Manifest;
use crate::value::{MapVal, StringMap, Timestamp, Value, ValueType, parse_duration};

fn manifest() -> Manifest {
    let mut m = Manifest::builtin();
    m.declare("test.dns", ValueType::DnsName);
    m.declare("test.email", ValueType::EmailAddress);
    m.declare("test.uri", ValueType::Uri);
    m.declare("test.double", ValueType::Double);
    m
}

fn bag() -> Bag<'static> {
    let headers =
        StringMap::new(vec![("x-user".into(), "Jason".into()), ("content-type".into(), "application/json".into())]);
    let labels = StringMap::new(vec![("app".into(), "reviews".into()), ("version".into(), "v2".into())]);
    Bag::from_pairs(vec![
        ("request.path", Value::String("/api/v1/books".into())),
        ("request.method", Value::String("GET".into())),
        ("request.headers", Value::StringMap(MapVal::from(headers))),
        ("destination.labels", Value::StringMap(MapVal::from(labels))),
        ("source.ip", Value::Bytes(vec![10, 1, 2, 3].into())),
        ("request.size", Value::Int64(100)),
        ("test.double", Value::Double(2.5)),
        ("response.duration", Value::Duration(parse_duration("15ms").unwrap())),
        ("request.time", Value::Timestamp(Timestamp { seconds: 1_420_211_075, nanos: 0 })),
        ("test.dns", Value::String("Reviews.Default.svc.".into())),
        ("test.email", Value::String("bob@Example.com".into())),
        ("test.uri", Value::String("http://example.com/x".into())),
        ("connection.mtls", Value::Bool(true)),
    ])
}

fn opts(m: &Manifest) -> CompileOptions<'_> {
    CompileOptions::new(m)
}

fn run(text: &str) -> Result<Value<'static>, EvalError> {
    let m = manifest();
    let p = compile(text, None, opts(&m)).unwrap_or_else(|e| panic!("{text}: {e}"));
    let b = bag();
    let mut refs = Referenced::new();
    p.eval(&b, &mut refs).map(Value::into_owned)
}

fn yes(text: &str) {
    assert_eq!(run(text), Ok(Value::Bool(true)), "{text}");
}

fn no(text: &str) {
    assert_eq!(run(text), Ok(Value::Bool(false)), "{text}");
}

fn compile_err(text: &str) -> String {
    let m = manifest();
    compile(text, None, opts(&m)).unwrap_err().to_string()
}

#[test]
fn operators() {
    yes(r#"request.method == "GET" && request.size > 10"#);
    no(r#"request.method != "GET" || request.size >= 101"#);
    yes(r#"!(request.size < 100) && request.size <= 100"#);
    yes("request.size + 1 == 101 && request.size * 2 / 4 == 50 && request.size % 7 == 2");
    yes(r#"request.method + "/x" == "GET/x""#);
    yes("test.double > 2.0 && test.double == 2.5 && request.size == 100");
    yes("-request.size == -100");
    yes(r#"request.size > 50 ? true : false"#);
    assert_eq!(run("request.size / 0").unwrap_err(), EvalError::Invalid("integer overflow or division by zero".into()));
}

#[test]
fn default_operator_takes_first_present_operand() {
    assert_eq!(run(r#"request.host | "fallback""#), Ok(Value::String("fallback".into())));
    assert_eq!(run(r#"request.method | "fallback""#), Ok(Value::String("GET".into())));
    assert_eq!(
        run(r#"request.headers["missing"] | request.headers["x-user"] | "z""#),
        Ok(Value::String("Jason".into()))
    );
    assert_eq!(run(r#"request.host | request.referer | "last""#), Ok(Value::String("last".into())));
    yes(r#"request.headers["missing"] | "" == """#);
    // Without a default, an absent attribute is an error, not false.
    assert_eq!(run(r#"request.host == "x""#), Err(EvalError::Absent("request.host".into())));
    assert_eq!(
        run(r#"request.referer | request.query_params["a"]"#),
        Err(EvalError::Absent("request.query_params".into()))
    );
    // Defaults must have the same type.
    assert!(compile_err(r#"request.size | "x""#).contains("default of type STRING"));
}

#[test]
fn string_functions() {
    yes(r#"match(request.path, "/api*")"#);
    yes(r#"match(request.path, "*books")"#);
    no(r#"match(request.path, "/other*")"#);
    yes(r#""^/api/v[0-9]+/".matches(request.path)"#);
    yes(r#"request.path.matches("books$")"#);
    no(r#"request.path.matches("^/admin")"#);
    yes(r#"request.path.startsWith("/api") && request.path.endsWith("books")"#);
    yes(r#"request.path.contains("v1")"#);
    yes(r#"toLower(request.headers["x-user"]) == "jason""#);
    yes(r#"size(request.path) == 13 && size(request.headers) == 2 && request.path.size() == 13"#);
    yes(r#"conditional(request.size > 10, "big", "small") == "big""#);
    yes(r#"string(request.size) == "100" && int("42") == 42 && double(request.size) == 100.0"#);
    assert!(compile_err(r#""(".matches(request.path)"#).contains("invalid regex"));
}

#[test]
fn typed_literals() {
    yes(r#"source.ip == ip("10.1.2.3")"#);
    no(r#"source.ip == ip("10.1.2.4")"#);
    yes(r#"source.ip == "10.1.2.3""#);
    yes(r#"request.time == timestamp("2015-01-02T15:04:35Z")"#);
    yes(r#"request.time > "2015-01-01T00:00:00Z""#);
    yes(r#"test.dns == dnsName("reviews.default.svc")"#);
    yes(r#"test.email == email("bob@example.com")"#);
    no(r#"test.email == email("Bob@example.com")"#);
    yes(r#"test.uri == uri("http://example.com/x")"#);
    yes(r#"response.duration < "20ms" && response.duration == "15ms""#);
    yes(r#"response.duration > duration("1ms")"#);
    yes(r#"size(emptyStringMap()) == 0"#);
    assert!(compile_err(r#"ip("300.1.1.1")"#).contains("not a valid ip"));
    assert!(compile_err(r#"timestamp("yesterday")"#).contains("not a valid timestamp"));
    assert!(compile_err(r#"dnsName("bad..name")"#).contains("not a valid dnsName"));
    assert!(compile_err(r#"email("nobody")"#).contains("not a valid email"));
    assert!(compile_err(r#"uri("no scheme")"#).contains("not a valid uri"));
    assert!(compile_err(r#"response.duration == 5"#).contains("cannot compare DURATION with INT64"));
}

#[test]
fn cel_syntax() {
    yes(r#""x-user" in request.headers && !("nope" in request.headers)"#);
    yes(r#"has(request.method) && !has(request.host) && has(request.headers["x-user"])"#);
    yes(r#"destination.labels.app == "reviews""#);
    yes(r#"request.method == 'GET'"#);
}

#[test]
fn type_and_name_errors_are_reported_at_compile_time() {
    assert_eq!(
        compile_err("no.such.attr == 1"),
        "at position 0: unknown attribute no.such.attr (declare it in an attributemanifest)"
    );
    assert!(compile_err(r#"request.size == "x""#).contains("cannot compare INT64 with STRING"));
    assert!(compile_err("request.size && true").contains("expected BOOL, found INT64"));
    assert!(compile_err("request.path[\"x\"]").contains("cannot index"));
    assert!(compile_err("frobnicate(1)").contains("unknown function frobnicate()"));
    assert!(compile_err("match(request.path)").contains("takes 2 argument"));
    let m = manifest();
    let e = compile("request.size", Some(ValueType::Bool), opts(&m)).unwrap_err();
    assert_eq!(e.message, "expression has type INT64, expected BOOL");
}

#[test]
fn referenced_attributes_record_exact_absence_and_map_keys() {
    let m = manifest();
    let p = compile(
        r#"request.headers["x-user"] == "Jason" && (request.headers["x-missing"] | "d") == "d" && (request.host | "h") == "h""#,
        Some(ValueType::Bool),
        opts(&m),
    )
    .unwrap();
    let b = bag();
    let mut refs = Referenced::new();
    assert!(p.eval_bool(&b, &mut refs).unwrap());
    let got: Vec<(String, Option<String>, Condition)> = refs
        .entries()
        .into_iter()
        .map(|r| (r.name.to_string(), r.map_key.map(|k| k.to_string()), r.condition))
        .collect();
    assert_eq!(
        got,
        vec![
            ("request.headers".into(), Some("x-missing".into()), Condition::Absence),
            ("request.headers".into(), Some("x-user".into()), Condition::Exact),
            ("request.host".into(), None, Condition::Absence),
        ]
    );

    // Short-circuit: the right side is never read, so it is not referenced.
    let p = compile(r#"request.method == "POST" && request.size > 1"#, None, opts(&m)).unwrap();
    let mut refs = Referenced::new();
    assert!(!p.eval_bool(&b, &mut refs).unwrap());
    let names: Vec<String> = refs.entries().into_iter().map(|r| r.name.to_string()).collect();
    assert_eq!(names, vec!["request.method".to_string()]);

    // A map attribute that is absent altogether is an ABSENCE of the map.
    let empty = Bag::new();
    let p = compile(r#"request.headers["a"] | "" == "x""#, None, opts(&m)).unwrap();
    let mut refs = Referenced::new();
    assert!(!p.eval_bool(&empty, &mut refs).unwrap());
    let e = refs.entries();
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].name.as_ref(), e[0].map_key.is_none(), e[0].condition),
        ("request.headers", true, Condition::Absence)
    );
}

#[test]
fn equality_index_extraction() {
    let m = manifest();
    let p = compile(
        r#"destination.labels["app"] == "reviews" && request.method == "GET" && request.size > 1"#,
        None,
        opts(&m),
    )
    .unwrap();
    let eqs = p.required_equalities();
    assert_eq!(eqs.len(), 2);
    assert_eq!(eqs[0].0.attr.as_ref(), "destination.labels");
    assert_eq!(eqs[0].0.map_key.as_deref(), Some("app"));
    assert_eq!(eqs[1].1, "GET");
    let p = compile(r#"request.method == "GET" || request.size > 1"#, None, opts(&m)).unwrap();
    assert!(p.required_equalities().is_empty(), "a disjunction cannot be indexed");
}

#[test]
fn action_outputs_in_header_values() {
    let m = manifest();
    let actions = vec!["lookup".to_string()];
    let p = compile(
        r#"lookup.output.value | "none""#,
        Some(ValueType::String),
        CompileOptions { actions: &actions, ..CompileOptions::new(&m) },
    )
    .unwrap();
    let b = bag();
    let mut outputs = Outputs::new();
    outputs.insert("lookup".into(), [("value".to_string(), "gold".to_string())].into());
    let mut refs = Referenced::new();
    assert_eq!(p.eval_with_outputs(&b, &outputs, &mut refs), Ok(Value::String("gold".into())));
    assert_eq!(p.eval(&b, &mut refs), Ok(Value::String("none".into())));
}

/// Mixer's semantics where CEL's differ: one test per rule of the dialect.
mod mixer_semantics {
    use super::*;

    #[test]
    fn default_binds_like_go_binary_or() {
        assert_eq!(run(r#"request.host | "x" + "y""#), Ok(Value::String("xy".into())));
        assert_eq!(run(r#"request.method | "x" + "y""#), Ok(Value::String("GETy".into())));
        yes(r#"request.host | "a" == "a""#);
        assert_eq!(run("request.size | 1 * 3"), Ok(Value::Int64(100)));
    }

    #[test]
    fn default_falls_back_only_from_a_lookup_that_is_itself_absent() {
        // `ip(a)` is a call: the absence inside it is an error, not a reason to fall back.
        assert_eq!(run(r#"ip(request.host) | ip("10.0.0.1")"#), Err(EvalError::Absent("request.host".into())));
        // A computed key whose attribute is absent is an error too.
        assert_eq!(run(r#"request.headers[request.host] | "d""#), Err(EvalError::Absent("request.host".into())));
        // An absent map, an absent key and an absent attribute all fall back.
        assert_eq!(run(r#"request.query_params["a"] | "d""#), Ok(Value::String("d".into())));
        assert_eq!(run(r#"request.headers["nope"] | "d""#), Ok(Value::String("d".into())));
        assert_eq!(run(r#"(request.host | request.referer) | "d""#), Ok(Value::String("d".into())));
        assert_eq!(run(r#"toLower(request.headers["X"] | "AB") | "z""#), Ok(Value::String("ab".into())));
    }

    #[test]
    fn a_missing_key_of_a_present_map_reads_as_empty() {
        yes(r#"request.headers["x-admin"] != "admin""#);
        yes(r#"request.headers["x-admin"] == """#);
        yes(r#"destination.labels.missing == """#);
        // An absent map is still an absent attribute.
        assert_eq!(run(r#"request.query_params["a"] == "x""#), Err(EvalError::Absent("request.query_params".into())));
        // `in` and has() still tell a missing key from an empty one.
        no(r#""x-admin" in request.headers"#);
        no(r#"has(request.headers["x-admin"])"#);
    }

    #[test]
    fn string_defaults_take_the_type_they_default() {
        assert_eq!(run(r#"connection.duration | "0ms""#), Ok(Value::Duration(Default::default())));
        assert_eq!(run(r#"response.duration | "0ms""#), Ok(Value::Duration(parse_duration("15ms").unwrap())));
        assert_eq!(run(r#"destination.ip | "10.0.0.9""#), Ok(Value::Bytes(vec![10, 0, 0, 9].into())));
        assert_eq!(
            run(r#"context.time | "2017-01-01T00:00:00Z""#),
            Ok(Value::Timestamp(Timestamp { seconds: 1_483_228_800, nanos: 0 }))
        );
        assert!(compile_err(r#"response.duration | "soon""#).contains(r#"default "soon" is not a valid DURATION"#));
        assert!(compile_err(r#"destination.ip | "nowhere""#).contains("not a valid IP_ADDRESS"));
    }

    #[test]
    fn values_of_different_types_do_not_compare() {
        assert!(compile_err("request.size == 100.0").contains("cannot compare INT64 with DOUBLE"));
        assert!(compile_err("test.double > 2").contains("cannot order DOUBLE and INT64"));
        assert!(compile_err("test.dns == request.host").contains("cannot compare DNS_NAME with STRING"));
        assert!(compile_err("request.path == test.email").contains("cannot compare STRING with EMAIL_ADDRESS"));
        assert!(compile_err("test.uri != request.path").contains("cannot compare URI with STRING"));
        // A literal takes the typed side's type; an invalid one is rejected at load.
        yes(r#"test.dns == "reviews.default.svc""#);
        assert!(compile_err(r#"test.dns == "not a name""#).contains("not a valid DNS_NAME"));
        assert!(compile_err(r#"test.email == "nobody""#).contains("not a valid EMAIL_ADDRESS"));
    }

    #[test]
    fn emails_and_uris_compare_parsed() {
        yes(r#"test.email == "\"bob\"@example.com""#);
        yes(r#"email("\"istio\"@istio.io") == email("istio@istio.io")"#);
        yes(r#"test.uri == "HTTP://Example.COM./x""#);
        no(r#"test.uri == "http://example.com/X""#);
    }

    #[test]
    fn typed_conversions_of_invalid_values_fail_at_run_time() {
        for f in ["dnsName", "email", "uri"] {
            let r = run(&format!(r#"{f}(request.headers["x-user"] + " x") == {f}(request.headers["x-user"] + " x")"#));
            assert!(matches!(r, Err(EvalError::Invalid(_))), "{f}: {r:?}");
        }
        yes(r#"uri(request.headers["x-user"] + ".istio.io") == uri("Jason.istio.io")"#);
        yes(r#"uri("www.istio.io") == uri("www.istio.io")"#);
    }

    #[test]
    fn matches_with_a_computed_pattern() {
        // Mixer's method form: the receiver is the pattern.
        yes(r#"(request.headers["x-user"] | "").matches("Jason")"#);
        yes(r#"request.method.matches(request.method)"#);
        let m = manifest();
        let p = compile(r#"request.headers["re"].matches(request.path)"#, None, opts(&m)).unwrap();
        let mut refs = Referenced::new();
        let with = |re: &str| {
            let headers = StringMap::new(vec![("re".into(), re.to_string().into())]);
            Bag::from_pairs(vec![
                ("request.path", Value::String("/api/v1".into())),
                ("request.headers", Value::StringMap(MapVal::from(headers))),
            ])
        };
        let b = with("^/api/v[0-9]$");
        assert_eq!(p.eval(&b, &mut refs).map(Value::into_owned), Ok(Value::Bool(true)));
        let b = with("^/admin");
        assert_eq!(p.eval(&b, &mut Referenced::new()).map(Value::into_owned), Ok(Value::Bool(false)));
        let b = with("(");
        assert!(
            matches!(p.eval(&b, &mut Referenced::new()), Err(EvalError::Invalid(m)) if m.contains("invalid regex"))
        );
        let b = with(&"a".repeat(5000));
        assert!(matches!(p.eval(&b, &mut Referenced::new()), Err(EvalError::Invalid(m)) if m.contains("longer than")));
        // CEL's function form: the second argument is the pattern.
        yes(r#"matches(request.path, request.headers["nope"] | "books")"#);
        // Literal patterns still compile at load.
        assert!(compile_err(r#""(".matches(request.path)"#).contains("invalid regex"));
    }

    #[test]
    fn deliberate_differences_are_kept() {
        // Invalid typed literals are load errors (Mixer failed per request).
        assert!(compile_err(r#"source.ip == ip("10.0.0.300")"#).contains("not a valid ip"));
        // CEL's arithmetic, `/` included, is accepted.
        yes("request.size / 4 == 25");
    }
}

#[test]
fn long_chains_and_the_deepest_nesting_compile_and_evaluate() {
    let m = manifest();
    let b = bag();
    let chain = (0..100_000).map(|i| format!("request.size == {i}")).collect::<Vec<_>>().join(" || ");
    let p = compile(&chain, Some(ValueType::Bool), opts(&m)).unwrap();
    assert_eq!(p.eval(&b, &mut Referenced::new()).map(Value::into_owned), Ok(Value::Bool(true)));
    let all = vec![r#"request.method == "GET""#; 100_000].join(" && ");
    let p = compile(&all, Some(ValueType::Bool), opts(&m)).unwrap();
    assert_eq!(p.eval(&b, &mut Referenced::new()).map(Value::into_owned), Ok(Value::Bool(true)));

    let depth = parse::MAX_DEPTH - 2;
    let nested = format!("{}request.size == 100{}", "(".repeat(depth), ")".repeat(depth));
    let p = compile(&nested, Some(ValueType::Bool), opts(&m)).unwrap();
    assert_eq!(p.eval(&b, &mut Referenced::new()).map(Value::into_owned), Ok(Value::Bool(true)));
    let nots = format!("{}(request.size == 100)", "!".repeat(depth - 1));
    assert!(compile(&nots, Some(ValueType::Bool), opts(&m)).is_ok());
    let too_deep = format!("{}x{}", "(".repeat(100_000), ")".repeat(100_000));
    assert!(compile_err(&too_deep).contains("nested deeper than"));
}
