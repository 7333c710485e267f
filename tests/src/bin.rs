//! The gateway binaries under test and where the build put them.

use std::path::PathBuf;

/// One gateway binary. Both have the same CLI and must behave the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bin {
    /// `sse-gateway` (package `sse-gateway-tokio`): required.
    Tokio,
    /// `sse-gateway-smol` (package `sse-gateway-smol`): the same suite; a test fails when it is not built.
    Smol,
}

impl Bin {
    /// Every binary the suite knows.
    pub const ALL: [Bin; 2] = [Bin::Tokio, Bin::Smol];

    /// Binaries whose file exists.
    pub fn available() -> Vec<Bin> {
        Bin::ALL.into_iter().filter(|b| b.exists()).collect()
    }

    /// File name of the executable.
    pub fn file_name(self) -> &'static str {
        match self {
            Bin::Tokio => "sse-gateway",
            Bin::Smol => "sse-gateway-smol",
        }
    }

    /// Whether the executable exists.
    pub fn exists(self) -> bool {
        self.path().is_file()
    }

    /// `$SSE_GATEWAY_TARGET_DIR` (else `$CARGO_TARGET_DIR`, else the workspace's `target/`), then
    /// the profile this test was built with (`release` under `--release`), then the file name.
    pub fn path(self) -> PathBuf {
        let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf();
        let target = std::env::var_os("SSE_GATEWAY_TARGET_DIR")
            .or_else(|| std::env::var_os("CARGO_TARGET_DIR"))
            .map(|dir| workspace.join(dir)) // an absolute dir replaces `workspace`
            .unwrap_or_else(|| workspace.join("target"));
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        target.join(profile).join(self.file_name())
    }
}
