//! Which hull config a task uses: the file containerd names in the runtime
//! options, else `$HULL_CONFIG`, else the default path (see
//! [`hull_sandbox::config`]).

use std::path::PathBuf;

pub use hull_sandbox::config::{ConfigError, ShimConfig, DEFAULT_CONFIG_PATH};

/// The `config_path` of containerd's `runtimeoptions.v1.Options` (field 2),
/// read straight from its protobuf encoding: the message is not among the
/// shim crate's generated types.
pub fn config_path_from_options(type_url: &str, value: &[u8]) -> Option<PathBuf> {
    if !type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = containerd_shim::protos::protobuf::CodedInputStream::from_bytes(value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire_type) = (tag >> 3, tag & 7);
        match (field, wire_type) {
            (2, 2) => {
                let path = input.read_string().ok()?;
                return (!path.is_empty()).then(|| PathBuf::from(path));
            }
            (_, 2) => {
                input.read_bytes().ok()?;
            }
            (_, 0) => {
                input.read_uint64().ok()?;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_is_read_from_runtime_options() {
        // type_url (1) = "x", config_path (2) = "/etc/hull/a.toml"
        let mut bytes = vec![0x0a, 1, b'x', 0x12, 16];
        bytes.extend_from_slice(b"/etc/hull/a.toml");
        let path = config_path_from_options("runtimeoptions.v1.Options", &bytes);
        assert_eq!(path, Some(PathBuf::from("/etc/hull/a.toml")));
        assert_eq!(
            config_path_from_options("containerd.runc.v1.Options", &bytes),
            None
        );
    }
}
