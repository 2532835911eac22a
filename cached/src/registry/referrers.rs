//! The referrers API: the manifests of a repository whose `subject` is a digest, as an image
//! index, optionally only those of one `artifactType`.

use axum::response::{IntoResponse, Response};
use http::header;
use serde::Deserialize;

use super::Registry;
use super::blobs::insert;
use super::buffers::held_body;
use super::errors::RegistryResult;
use super::manifests::OCI_INDEX;
use super::names::{Repository, Sha256Digest};
use super::records::{MAX_REFERRERS, MAX_REFERRERS_BYTES};
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
        .records("registry referrers", move |records| {
            records.referrers(&owned, &subject, MAX_REFERRERS, MAX_REFERRERS_BYTES)
        })
        .await?;
    let filter = call.param("artifactType").filter(|kind| !kind.is_empty());
    let index = index(&stored, filter);
    drop(stored);
    let reservation = registry.pulls.reserve(&call.grant.budget(), None, index.len() as u64)?;
    let mut response = held_body(index, reservation).into_response();
    insert(response.headers_mut(), header::CONTENT_TYPE.as_str(), OCI_INDEX);
    if filter.is_some() {
        insert(response.headers_mut(), "oci-filters-applied", "artifactType");
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    artifact_type: Option<String>,
}

/// The image index listing `descriptors` (of `artifact_type` only, with one), made of their
/// stored bytes: the reply takes about what they do, never a parsed copy of them all.
fn index(descriptors: &[Vec<u8>], artifact_type: Option<&str>) -> Vec<u8> {
    let wanted = |descriptor: &[u8]| match serde_json::from_slice::<Listed>(descriptor) {
        Ok(listed) => artifact_type.is_none_or(|kind| listed.artifact_type.as_deref() == Some(kind)),
        Err(_) => false,
    };
    let size = descriptors.iter().map(|descriptor| descriptor.len() + 1).sum::<usize>();
    let mut index = Vec::with_capacity(size + 128);
    index.extend_from_slice(
        format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":["#).as_bytes(),
    );
    for descriptor in descriptors.iter().filter(|descriptor| wanted(descriptor)) {
        if index.last() != Some(&b'[') {
            index.push(b',');
        }
        index.extend_from_slice(descriptor);
    }
    index.extend_from_slice(b"]}");
    index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_lists_the_stored_descriptors_of_the_artifact_type_asked() {
        let stored = [
            br#"{"digest":"sha256:01","artifactType":"a"}"#.to_vec(),
            br#"{"digest":"sha256:02","artifactType":"b"}"#.to_vec(),
            br#"{"digest":"sha256:03"}"#.to_vec(),
        ];
        let all: serde_json::Value = serde_json::from_slice(&index(&stored, None)).unwrap();
        assert_eq!(all["manifests"].as_array().unwrap().len(), 3);
        assert_eq!(all["mediaType"], OCI_INDEX);
        let only_b: serde_json::Value = serde_json::from_slice(&index(&stored, Some("b"))).unwrap();
        assert_eq!(only_b["manifests"], serde_json::json!([{"digest": "sha256:02", "artifactType": "b"}]));
        let none: serde_json::Value = serde_json::from_slice(&index(&stored, Some("c"))).unwrap();
        assert_eq!(none["manifests"], serde_json::json!([]));
    }
}
