//! Generates the CSI v1 message types and tonic client/server code.
//!
//! The proto is parsed with `protox` (pure Rust) so building the crate never
//! needs a `protoc` binary on the host or in the container build image.

use std::error::Error;
use std::fmt;
use std::path::PathBuf;

const PROTO: &str = "csi.proto";

/// Messages whose generated `Debug` is replaced by a hand-written one in
/// `src/lib.rs`, because they carry fields the CSI spec marks as secret (or,
/// for `MountVolume.mount_flags`, as possibly sensitive). A derived `Debug`
/// would print those values into any log line that formats the request.
const REDACTED_DEBUG: &[&str] = &[
    ".csi.v1.NodeStageVolumeRequest",
    ".csi.v1.NodePublishVolumeRequest",
    ".csi.v1.NodeExpandVolumeRequest",
    ".csi.v1.VolumeCapability.MountVolume",
];

/// Build-script error naming the step that failed. `main` reports errors with
/// `Debug`, so that impl prints the readable message instead of a struct dump.
struct BuildError {
    step: &'static str,
    source: Box<dyn Error>,
}

impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.source)
    }
}

fn main() -> Result<(), BuildError> {
    let manifest_dir =
        PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| BuildError {
                step: "reading CARGO_MANIFEST_DIR",
                source: "variable not set; run this build script through cargo".into(),
            })?,
        );
    let proto = manifest_dir.join(PROTO);
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-changed=build.rs");

    // protox ships the google/protobuf well-known files, so only our own
    // directory needs to be on the include path.
    let fds = protox::compile([&proto], [&manifest_dir]).map_err(|e| BuildError {
        step: "parsing csi.proto",
        source: Box::new(e),
    })?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .skip_debug(REDACTED_DEBUG.iter().copied())
        .compile_fds(fds)
        .map_err(|e| BuildError {
            step: "generating Rust code for csi.proto",
            source: Box::new(e),
        })?;
    Ok(())
}
