//! Expressions as config carries them: any text must compile or be refused with an error,
//! never a panic or a stack overflow, and what compiles must evaluate without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mixr_rules::bag::{Bag, Referenced};
use mixr_rules::expr::{CompileOptions, compile};
use mixr_rules::value::{MapVal, StringMap, Value};
use mixr_rules::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let manifest = Manifest::builtin();
    let Ok(program) = compile(text, None, CompileOptions::new(&manifest)) else { return };
    let headers = StringMap::new(vec![("x-user".into(), "jason".into())]);
    let bag = Bag::from_pairs(vec![
        ("request.path", Value::String("/a/b".into())),
        ("request.size", Value::Int64(7)),
        ("request.headers", Value::StringMap(MapVal::from(headers))),
        ("source.ip", Value::Bytes(vec![10, 0, 0, 1].into())),
    ]);
    let _ = program.eval(&bag, &mut Referenced::new());
});
