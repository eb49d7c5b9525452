//! The web dashboard on the HTTP port: `/` and its static assets, embedded in
//! the binary so a node needs no files next to it. The page itself polls
//! `/status` and `/cluster/load` (falling back to `/metrics`) from the
//! browser; nothing here renders data.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// A file of the dashboard, served as is.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset =
    Asset { body: include_str!("../assets/dashboard/index.html"), content_type: "text/html; charset=utf-8" };
const APP_JS: Asset =
    Asset { body: include_str!("../assets/dashboard/app.js"), content_type: "text/javascript; charset=utf-8" };
const STYLE_CSS: Asset =
    Asset { body: include_str!("../assets/dashboard/style.css"), content_type: "text/css; charset=utf-8" };

/// Routes of the dashboard; merged into the node's HTTP router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&INDEX, &h) }))
        .route("/dashboard/app.js", get(|h: HeaderMap| async move { serve(&APP_JS, &h) }))
        .route("/dashboard/style.css", get(|h: HeaderMap| async move { serve(&STYLE_CSS, &h) }))
}

/// The asset with an ETag of its content and `no-cache`: browsers revalidate
/// on every load (a 304 costs nothing), so an upgraded node never runs a
/// page cached from the version before.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(asset.body.as_bytes()));
    let headers = [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, HeaderValue::from_str(&etag).expect("hex is a valid header value")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        // Everything the page loads comes from this node; no inline script or style.
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'self'")),
    ];
    let fresh = request.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(',').any(|t| {
            let t = t.trim();
            t == etag || t == "*"
        })
    });
    if fresh {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_carry_their_content_type_and_revalidate() {
        for (asset, ty) in [(&INDEX, "text/html"), (&APP_JS, "text/javascript"), (&STYLE_CSS, "text/css")] {
            let r = serve(asset, &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::OK);
            let h = r.headers();
            assert!(h[header::CONTENT_TYPE].to_str().expect("ascii").starts_with(ty));
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");

            let mut again = HeaderMap::new();
            again.insert(header::IF_NONE_MATCH, h[header::ETAG].clone());
            assert_eq!(serve(asset, &again).status(), StatusCode::NOT_MODIFIED);
            again.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"stale\""));
            assert_eq!(serve(asset, &again).status(), StatusCode::OK);
        }
    }

    #[test]
    fn the_page_loads_only_the_embedded_assets() {
        assert!(INDEX.body.contains("src=\"/dashboard/app.js\""));
        assert!(INDEX.body.contains("href=\"/dashboard/style.css\""));
        assert!(!INDEX.body.contains("http://") && !INDEX.body.contains("https://"), "no external resources");
    }
}
