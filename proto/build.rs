//! Compiles our .proto files with protox (no system protoc) and turns Istio's global
//! dictionary into a static word list, so the order is fixed at build time.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = ["protos/istio/mixer/v1/mixer.proto", "protos/istio/policy/v1beta1/http_response.proto"];
    let fds = protox::compile(protos, ["protos"])?;
    fs::write(out.join("mixr_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    println!("cargo:rerun-if-changed=protos");

    let yaml = fs::read_to_string("global_dictionary.yaml")?;
    let words: Vec<String> = yaml_serde::from_str(&yaml)?;
    let mut code = format!("pub static GLOBAL_WORDS: [&str; {}] = [\n", words.len());
    for w in &words {
        code.push_str(&format!("    {w:?},\n"));
    }
    code.push_str("];\n");
    fs::write(out.join("global_words.rs"), code)?;
    println!("cargo:rerun-if-changed=global_dictionary.yaml");
    Ok(())
}
