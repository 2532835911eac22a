//! The tag list, in lexical order, paged with `n` and `last` and a `Link` to the next page.

use axum::response::{IntoResponse, Response};
use http::header;

use super::Registry;
use super::blobs::insert;
use super::errors::{Code, RegistryError, RegistryResult};
use super::names::Repository;
use super::routes::Call;

/// Most tags in one answer, whatever `n` asks.
const MAX_PAGE: usize = 1000;

pub(super) async fn list(registry: &Registry, repo: &Repository, call: Call) -> RegistryResult<Response> {
    let page = match call.param("n").filter(|n| !n.is_empty()) {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| RegistryError::new(Code::Unsupported, format!("n={n} is not a number")))?
            .min(MAX_PAGE),
        None => MAX_PAGE,
    };
    let last = call.param("last").filter(|last| !last.is_empty()).map(str::to_owned);
    let (owned, after) = (repo.clone(), last.clone());
    // One more than the page says whether there is a next one.
    let mut tags = registry
        .records("registry tags", move |records| records.tags(&owned, after.as_deref(), page + 1))
        .await?;
    let more = tags.len() > page;
    tags.truncate(page);
    let next = tags.last().cloned();
    let mut response =
        super::routes::json(serde_json::json!({ "name": repo.as_str(), "tags": tags })).into_response();
    if let (true, Some(next)) = (more, next) {
        let link = format!("</v2/{repo}/tags/list?n={page}&last={next}>; rel=\"next\"");
        insert(response.headers_mut(), header::LINK.as_str(), &link);
    }
    Ok(response)
}
