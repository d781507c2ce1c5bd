//! Compiles our .proto files with protox (no system protoc) and turns Istio's global
//! dictionary into a static word list, so the order is fixed at build time. Envoy's APIs
//! are compiled to a descriptor set only: reflection needs their descriptors, while the
//! server keeps envoy-types' generated code.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "protos/istio/mixer/v1/mixer.proto",
        "protos/istio/policy/v1beta1/http_response.proto",
        "protos/mixr/server/v1/lazy_report.proto",
        "protos/mixr/server/v1/lazy_check.proto",
        "protos/istio/v1/auth/ca.proto",
    ];
    let fds = protox::compile(protos, ["protos"])?;
    fs::write(out.join("mixr_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".mixr.server.v1.LazyReportRequest.attributes")
        .bytes(".mixr.server.v1.LazyCheckRequest.attributes")
        .compile_fds(fds.clone())?;

    // The server's Mixer service: the same service, taking Check as LazyCheckRequest and
    // Report as LazyReportRequest (same wire formats). Every message is the one generated
    // above; clients (the sidecar, the CLI) keep the plain CheckRequest and ReportRequest.
    let mut lazy = fds;
    for method in lazy.file.iter_mut().flat_map(|f| &mut f.service).flat_map(|s| &mut s.method) {
        match method.name() {
            "Check" => method.input_type = Some(".mixr.server.v1.LazyCheckRequest".into()),
            "Report" => method.input_type = Some(".mixr.server.v1.LazyReportRequest".into()),
            _ => {}
        }
    }
    let lazy_out = out.join("lazy");
    fs::create_dir_all(&lazy_out)?;
    tonic_prost_build::configure()
        .out_dir(&lazy_out)
        .build_client(false)
        .build_server(true)
        .extern_path(".istio", "crate::istio")
        .extern_path(".google", "crate::google")
        .extern_path(".mixr", "crate::mixr")
        .compile_fds(lazy)?;
    println!("cargo:rerun-if-changed=protos");

    let envoy = protox::compile(
        ["protos/envoy/service/auth/v3/external_auth.proto", "protos/envoy/service/ratelimit/v3/rls.proto"],
        ["protos"],
    )?;
    fs::write(out.join("envoy_descriptor.bin"), prost::Message::encode_to_vec(&envoy))?;

    let yaml = fs::read_to_string("global_dictionary.yaml")?;
    let words: Vec<String> = yaml_serde::from_str(&yaml)?;
    // A `const` too, so a filter over the words can be computed at compile time.
    let mut code = format!("pub const GLOBAL_WORD_LIST: [&str; {}] = [\n", words.len());
    for w in &words {
        code.push_str(&format!("    {w:?},\n"));
    }
    code.push_str("];\npub static GLOBAL_WORDS: [&str; GLOBAL_WORD_LIST.len()] = GLOBAL_WORD_LIST;\n");
    fs::write(out.join("global_words.rs"), code)?;
    println!("cargo:rerun-if-changed=global_dictionary.yaml");
    Ok(())
}
