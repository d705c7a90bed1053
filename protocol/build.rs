//! Generates the agent API (`protos/agent.proto`) with ttrpc-codegen's
//! pure-Rust protobuf parser: no `protoc` is needed. Only with the
//! `agent-api` feature; without it there is nothing to generate.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "agent-api")]
    agent_api::generate();
}

#[cfg(feature = "agent-api")]
mod agent_api {
    use std::path::{Path, PathBuf};
    use std::{env, fs};

    use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

    const PROTO: &str = "protos/agent.proto";

    pub fn generate() {
        println!("cargo:rerun-if-changed={PROTO}");
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let out_dir = out_dir.join("agent_api");
        fs::create_dir_all(&out_dir).expect("create OUT_DIR/agent_api");

        Codegen::new()
            .input(PROTO)
            .include("protos")
            .rust_protobuf()
            .rust_protobuf_customize(
                // No reflection tables: the agent is copied into guest memory
                // and every byte of it costs boot time.
                ProtobufCustomize::default()
                    .gen_mod_rs(false)
                    .lite_runtime(true),
            )
            .customize(Customize {
                async_all: true,
                ..Default::default()
            })
            .out_dir(&out_dir)
            .run()
            .expect("generate the agent API from protos/agent.proto");

        for file in ["agent.rs", "agent_ttrpc.rs"] {
            strip_inner_attributes(&out_dir.join(file));
        }
    }

    /// `include!` rejects inner attributes and inner doc comments, which the
    /// generators emit at the top of each file; the including module carries
    /// the attributes instead (see src/agent_api.rs).
    fn strip_inner_attributes(path: &Path) {
        let text = fs::read_to_string(path).expect("read generated file");
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| !line.starts_with("#!") && !line.starts_with("//!"))
            .collect();
        fs::write(path, kept.join("\n") + "\n").expect("rewrite generated file");
    }
}
