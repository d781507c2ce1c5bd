//! Our Envoy .proto text against Envoy's own files (shipped inside the envoy-types crate,
//! whose generated code the server runs): every message, field, enum value and method we
//! declare must exist there under the same file, name, number and type, or a reflection
//! client would encode requests the server decodes differently.

use std::path::PathBuf;
use std::process::Command;

use protox::prost_reflect::{DescriptorPool, Kind, MessageDescriptor};

/// Envoy's API files, as compiled from the envoy-types package the workspace locks.
fn envoy_pool() -> DescriptorPool {
    let root = envoy_types_dir().join("proto");
    let includes =
        ["data-plane-api", "xds", "protoc-gen-validate", "googleapis", "cel-spec/proto"].map(|d| root.join(d));
    let mut compiler = protox::Compiler::new(includes).expect("include paths");
    compiler
        .open_files(["envoy/service/auth/v3/external_auth.proto", "envoy/service/ratelimit/v3/rls.proto"])
        .expect("Envoy's protos compile");
    compiler.descriptor_pool()
}

/// Where cargo unpacked envoy-types (no network: the build already fetched it).
fn envoy_types_dir() -> PathBuf {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("-vV").output().expect("rustc -vV");
    let host = String::from_utf8_lossy(&version.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("host triple");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version=1", "--offline", "--filter-platform", &host, "--manifest-path"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "envoy-types"))
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types in the workspace's dependencies");
    PathBuf::from(manifest).parent().expect("package dir").to_path_buf()
}

fn ours() -> DescriptorPool {
    DescriptorPool::decode(mixr_proto::ENVOY_FILE_DESCRIPTOR_SET).expect("our Envoy descriptor set decodes")
}

fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => format!("message {}", m.full_name()),
        Kind::Enum(e) => format!("enum {}", e.full_name()),
        other => format!("{other:?}"),
    }
}

fn compare_message(ours: &MessageDescriptor, theirs: &MessageDescriptor) -> Vec<String> {
    let mut errors = Vec::new();
    let name = ours.full_name();
    if ours.parent_file().name() != theirs.parent_file().name() {
        errors.push(format!(
            "{name}: in {}, Envoy has it in {}",
            ours.parent_file().name(),
            theirs.parent_file().name()
        ));
    }
    for field in ours.fields() {
        let Some(real) = theirs.get_field(field.number()) else {
            errors.push(format!("{name}.{}: Envoy has no field {}", field.name(), field.number()));
            continue;
        };
        let ours_shape = (field.name(), kind_name(&field.kind()), field.cardinality(), field.is_map());
        let real_shape = (real.name(), kind_name(&real.kind()), real.cardinality(), real.is_map());
        if ours_shape != real_shape {
            errors.push(format!("{name} field {}: ours {ours_shape:?}, Envoy's {real_shape:?}", field.number()));
        }
        let oneof = |f: &protox::prost_reflect::FieldDescriptor| {
            f.containing_oneof().filter(|o| !o.is_synthetic()).map(|o| o.name().to_string())
        };
        if oneof(&field) != oneof(&real) {
            errors.push(format!("{name}.{}: oneof {:?}, Envoy's {:?}", field.name(), oneof(&field), oneof(&real)));
        }
    }
    errors
}

#[test]
fn our_envoy_protos_are_a_faithful_subset_of_envoys() {
    let (ours, theirs) = (ours(), envoy_pool());
    let mut errors = Vec::new();
    let mut messages = 0;
    for message in ours.all_messages().filter(|m| m.package_name().starts_with("envoy.")) {
        messages += 1;
        match theirs.get_message_by_name(message.full_name()) {
            Some(real) => errors.extend(compare_message(&message, &real)),
            None => errors.push(format!("{}: not an Envoy message", message.full_name())),
        }
    }
    for en in ours.all_enums().filter(|e| e.package_name().starts_with("envoy.")) {
        let Some(real) = theirs.get_enum_by_name(en.full_name()) else {
            errors.push(format!("{}: not an Envoy enum", en.full_name()));
            continue;
        };
        let real_values: Vec<(String, i32)> = real.values().map(|v| (v.name().to_string(), v.number())).collect();
        for v in en.values() {
            if !real_values.contains(&(v.name().to_string(), v.number())) {
                errors.push(format!("{}.{} = {}: not Envoy's", en.full_name(), v.name(), v.number()));
            }
        }
    }
    for service in ours.services() {
        let Some(real) = theirs.get_service_by_name(service.full_name()) else {
            errors.push(format!("{}: not an Envoy service", service.full_name()));
            continue;
        };
        for method in service.methods() {
            let same = real.methods().any(|m| {
                m.name() == method.name()
                    && m.input().full_name() == method.input().full_name()
                    && m.output().full_name() == method.output().full_name()
            });
            if !same {
                errors.push(format!("{}.{}: not Envoy's signature", service.full_name(), method.name()));
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(messages >= 20, "only {messages} Envoy messages checked");
}

#[test]
fn the_served_services_and_their_files_are_envoys() {
    let ours = ours();
    let files: Vec<(String, String)> =
        ours.services().map(|s| (s.full_name().to_string(), s.parent_file().name().to_string())).collect();
    assert_eq!(
        files,
        [
            (
                "envoy.service.auth.v3.Authorization".to_string(),
                "envoy/service/auth/v3/external_auth.proto".to_string()
            ),
            (
                "envoy.service.ratelimit.v3.RateLimitService".to_string(),
                "envoy/service/ratelimit/v3/rls.proto".to_string()
            ),
        ]
    );
    // Every import travels in the set: reflection clients fetch dependencies by file name.
    for file in ours.files() {
        for dep in file.dependencies() {
            assert!(
                ours.get_file_by_name(dep.name()).is_some(),
                "{} imports {} not in the set",
                file.name(),
                dep.name()
            );
        }
    }
}
