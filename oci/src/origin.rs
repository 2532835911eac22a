//! Where registry credentials may go. A password, an identity token and the bearer tokens a
//! token service hands out are sent to the registry's own origin (scheme, host and port) and
//! to the token realm its challenge names, and nowhere else: a blob download redirected to a
//! CDN or a pre-signed object-store URL, an upload session on another origin, or whatever a
//! token service redirects to gets none of them.

use reqwest::{Response, Url, header};

/// Redirects followed for one request; registries use one (to a CDN or an object store).
pub const MAX_REDIRECTS: usize = 10;

pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.origin() == b.origin()
}

/// `http://host:port`, for messages.
pub fn show(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Whether the credentials of the registry at `registry` may go to the token service at
/// `realm`. Over https they may go anywhere: TLS proves who receives them, and token services
/// often live on another host (auth.docker.io for Docker Hub). Over plain HTTP only to the
/// registry's own host, which is already spoken to in clear by the user's choice (a loopback
/// registry, or `--insecure`); anything else would hand them to whoever is on the path.
pub fn check_realm(registry: &Url, realm: &Url) -> Result<(), String> {
    match realm.scheme() {
        "https" => Ok(()),
        "http" if registry.scheme() == "http" && registry.host() == realm.host() => Ok(()),
        "http" => Err(format!(
            "it is plain HTTP on another host than the registry ({}); credentials go to a token \
             service over https, or over plain HTTP only on the registry's own host (a loopback \
             registry, or one reached with --insecure)",
            show(registry)
        )),
        other => Err(format!("its scheme {other:?} is neither https nor http")),
    }
}

/// Where `response` redirects to, when it is a redirect with a usable Location.
pub fn redirect_target(response: &Response) -> Result<Option<Url>, String> {
    if !response.status().is_redirection() {
        return Ok(None);
    }
    let Some(location) = response.headers().get(header::LOCATION) else {
        // 304 Not Modified and 300 Multiple Choices carry no Location: they are answers.
        return Ok(None);
    };
    let location = location.to_str().map_err(|_| "a Location that is not text".to_owned())?;
    let next = response.url().join(location).map_err(|err| format!("a bad Location {location:?}: {err}"))?;
    match next.scheme() {
        "http" | "https" => Ok(Some(next)),
        other => Err(format!("a redirect to a {other}: URL ({location:?})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn credentials_go_to_https_realms_and_plain_http_only_on_the_registrys_host() {
        let hosted = url("https://registry.example/");
        assert!(check_realm(&hosted, &url("https://auth.example/token")).is_ok());
        for realm in ["http://auth.example/token", "http://registry.example/token", "http://127.0.0.1:5001/t"]
        {
            let err = check_realm(&hosted, &url(realm)).unwrap_err();
            assert!(err.contains("plain HTTP") && err.contains("https"), "{realm}: {err}");
        }
        let local = url("http://127.0.0.1:5000/");
        assert!(check_realm(&local, &url("http://127.0.0.1:5000/token")).is_ok());
        assert!(
            check_realm(&local, &url("http://127.0.0.1:5001/token")).is_ok(),
            "a token service beside it"
        );
        assert!(check_realm(&local, &url("https://auth.example/token")).is_ok());
        for realm in ["http://127.0.0.2:5000/token", "http://localhost:5000/token", "http://auth.example/"] {
            assert!(check_realm(&local, &url(realm)).is_err(), "{realm} is another host");
        }
        let insecure = url("http://registry.internal:5000/");
        assert!(check_realm(&insecure, &url("http://registry.internal/token")).is_ok());
        assert!(check_realm(&insecure, &url("ftp://registry.internal/token")).unwrap_err().contains("ftp"));
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        let base = url("https://registry.example/v2/");
        assert!(same_origin(&base, &url("https://registry.example:443/v2/a/blobs/x?y=z")));
        assert!(same_origin(&base, &url("https://REGISTRY.example/other")));
        for other in ["http://registry.example/v2/", "https://registry.example:444/", "https://cdn.example/"]
        {
            assert!(!same_origin(&base, &url(other)), "{other}");
        }
        assert_eq!(show(&url("http://127.0.0.2:8080/token?x=1")), "http://127.0.0.2:8080");
    }
}
