//! Target platforms (`linux/amd64`, `linux/arm/v7`), written the way OCI indexes and configs
//! spell them (Go's GOOS and GOARCH names).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::OciError;

/// GOARCH values that have Linux container images.
const ARCHITECTURES: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mipsle", "mips64", "mips64le", "ppc64", "ppc64le",
    "riscv64", "s390x",
];

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImagePlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl ImagePlatform {
    /// True when both name the same machine, as containerd compares them: `arm` is `arm/v7`,
    /// `arm64` is `arm64/v8` and `amd64` is `amd64/v1`.
    pub fn matches(&self, other: &ImagePlatform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && self.normal_variant() == other.normal_variant()
    }

    fn normal_variant(&self) -> Option<&str> {
        match (self.architecture.as_str(), self.variant.as_deref()) {
            ("arm", None) => Some("v7"),
            ("arm64", Some("v8")) | ("amd64", Some("v1")) => None,
            (_, variant) => variant,
        }
    }

    /// `linux-arm-v7`: usable in file names and tags.
    pub fn slug(&self) -> String {
        self.to_string().replace('/', "-")
    }
}

/// The image platform of a Go build target: the one conversion between the two, used by
/// runner agents (which image a target gets) and by `cachectl submit` (checking a matrix before
/// it is submitted). Only linux targets have container images. The architecture level becomes
/// the variant where OCI defines one: GOAMD64 (`v2`, `v3`), GOARM (`7` → `v7`, bare arm →
/// `v7`), GOARM64 (`v8.2,lse` → `v8.2`, `v9.0` → `v9`); other levels (GO386, GOPPC64, ...)
/// have no OCI variant and are left out. cgo does not change the platform.
pub fn from_target(target: &proto::Platform) -> Result<ImagePlatform, OciError> {
    let level = target.level.split(',').next().unwrap_or("");
    let variant = match (target.goarch.as_str(), level) {
        (_, "") => None,
        ("amd64", level) => Some(level.to_owned()),
        ("arm", level) => Some(format!("v{}", level.trim_start_matches('v'))),
        ("arm64", level) => Some(level.strip_suffix(".0").unwrap_or(level).to_owned()),
        _ => None,
    };
    let text = match variant {
        Some(variant) => format!("{}/{}/{variant}", target.goos, target.goarch),
        None => format!("{}/{}", target.goos, target.goarch),
    };
    text.parse().map_err(|err: OciError| OciError::Usage(format!("target {target}: {err}")))
}

impl fmt::Display for ImagePlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl FromStr for ImagePlatform {
    type Err = OciError;

    /// Parses `os/arch[/variant]`. 32-bit arm always gets a variant (`v7` unless given), since
    /// runtimes disagree on what a bare `arm` means.
    fn from_str(text: &str) -> Result<Self, OciError> {
        let usage = |reason: String| OciError::Usage(format!("platform {text:?}: {reason}"));
        let parts: Vec<&str> = text.split('/').collect();
        let (os, architecture, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => {
                return Err(usage(
                    "expected os/arch or os/arch/variant, like linux/amd64 or linux/arm/v7".into(),
                ));
            }
        };
        if os != "linux" {
            return Err(usage(format!(
                "only linux images are supported (the os is {os:?}; windows layers need a different layout)"
            )));
        }
        if !ARCHITECTURES.contains(&architecture) {
            return Err(usage(format!(
                "unknown architecture {architecture:?}; expected a GOARCH with Linux images: {}",
                ARCHITECTURES.join(", ")
            )));
        }
        let variant = match (architecture, variant) {
            ("arm", None) => Some("v7".to_owned()),
            ("arm", Some(v @ ("v5" | "v6" | "v7" | "v8"))) => Some(v.to_owned()),
            ("arm", Some(v)) => return Err(usage(format!("arm variant {v:?} is not one of v5, v6, v7, v8"))),
            (_, Some("")) => return Err(usage("empty variant".into())),
            (_, Some(v)) if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.') => {
                return Err(usage(format!("variant {v:?} must be letters, digits and dots (like v8 or v3)")));
            }
            (_, v) => v.map(str::to_owned),
        };
        Ok(Self { os: os.to_owned(), architecture: architecture.to_owned(), variant })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> ImagePlatform {
        text.parse().unwrap()
    }

    #[test]
    fn platforms_parse_with_arm_variants() {
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/v6").variant.as_deref(), Some("v6"));
        assert_eq!(p("linux/arm64/v8").slug(), "linux-arm64-v8");
        assert!(p("linux/arm64").matches(&p("linux/arm64/v8")));
        assert!(!p("linux/arm/v6").matches(&p("linux/arm/v7")));
        for bad in ["linux", "windows/amd64", "linux/x86", "linux/arm/v9", "linux/amd64/v3/x", "linux/arm64/"]
        {
            assert!(bad.parse::<ImagePlatform>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn go_targets_become_image_platforms() {
        let image = |target: &str| from_target(&target.parse().unwrap()).map(|p| p.to_string());
        assert_eq!(image("linux/amd64").unwrap(), "linux/amd64");
        assert_eq!(image("linux/amd64/v3").unwrap(), "linux/amd64/v3");
        assert_eq!(image("linux/arm64+cgo").unwrap(), "linux/arm64");
        assert_eq!(image("linux/arm64/v8.2,lse").unwrap(), "linux/arm64/v8.2");
        assert_eq!(image("linux/arm64/v9.0").unwrap(), "linux/arm64/v9");
        assert_eq!(image("linux/arm").unwrap(), "linux/arm/v7");
        assert_eq!(image("linux/arm/6").unwrap(), "linux/arm/v6");
        assert_eq!(image("linux/386/softfloat").unwrap(), "linux/386");
        assert_eq!(image("linux/ppc64le/power9").unwrap(), "linux/ppc64le");
        assert!(image("darwin/arm64").unwrap_err().to_string().contains("only linux"));
        assert!(image("windows/amd64").is_err());
    }
}
