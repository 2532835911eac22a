//! Image layering: built Go binaries in, reproducible multi-platform OCI images out, written
//! to an OCI layout and/or pushed to a registry with nothing uploaded that is already there.
//! No Docker daemon; `cachectl image` calls [`build_image`], runner agents
//! [`build_platform_image`] for their target and [`index_document`] for a job's index, through
//! [`job`], which is also where `cachectl submit` turns a job's image spec into an image.
//!
//! Read in data-flow order:
//! - inputs: `platform`, `reference`;
//! - layers: `layer` (deterministic tar, pinned gzip or zstd), `tree` (a directory as a
//!   layer), `cache` (layers kept in cached,
//!   keyed by binary and options);
//! - documents: `config`, `manifest` (and their canonical bytes), `base` (an optional base);
//! - outputs: `layout` (OCI layout directories), `sources` (where each blob's bytes come
//!   from), `auth`, `origin` (where credentials may go), `registry` and `push` (the
//!   distribution API);
//! - `build`, which runs them all; `job`, the image part of a remote build;
//! - `signature`: cosign-compatible signing and verification of pushed images.

#![forbid(unsafe_code)]

pub mod auth;
pub mod base;
pub mod build;
pub mod cache;
pub mod config;
pub mod digest;
pub mod error;
pub mod job;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod origin;
pub mod platform;
pub mod push;
pub mod reference;
pub mod registry;
pub mod signature;
pub mod sources;
pub mod tree;

pub use build::{
    ImageResult, ImageSpec, LayerDir, PlatformBuild, PlatformImage, PushReport, TreeLayer, build_image,
    build_platform_image, index_document,
};
pub use cache::LayerCache;
pub use digest::Sha256;
pub use error::OciError;
pub use layer::Compression;
pub use platform::ImagePlatform;
pub use reference::Reference;
pub use registry::{PushCounts, RegistryOptions};
