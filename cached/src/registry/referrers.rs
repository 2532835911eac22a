//! The referrers API: the manifests of a repository whose `subject` is a digest, as an image
//! index, optionally only those of one `artifactType`.

use axum::response::{IntoResponse, Response};
use http::header;

use super::Registry;
use super::blobs::insert;
use super::errors::RegistryResult;
use super::manifests::OCI_INDEX;
use super::names::{Repository, Sha256Digest};
use super::records::MAX_REFERRERS;
use super::routes::Call;

pub(super) async fn list(
    registry: &Registry,
    repo: &Repository,
    reference: &str,
    call: Call,
) -> RegistryResult<Response> {
    let subject = Sha256Digest::parse(reference)?;
    let owned = repo.clone();
    let stored = registry
        .records("registry referrers", move |records| records.referrers(&owned, &subject, MAX_REFERRERS))
        .await?;
    let filter = call.param("artifactType").filter(|kind| !kind.is_empty());
    let manifests: Vec<serde_json::Value> = stored
        .iter()
        .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
        .filter(|descriptor| filter.is_none_or(|kind| descriptor["artifactType"] == kind))
        .collect();
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut response = index.to_string().into_response();
    insert(response.headers_mut(), header::CONTENT_TYPE.as_str(), OCI_INDEX);
    if filter.is_some() {
        insert(response.headers_mut(), "oci-filters-applied", "artifactType");
    }
    Ok(response)
}
