//! The API explorer: `GET /docs`, an interactive page for the service's own `/openapi.json`
//! (Swagger UI: every operation with its parameters and schemas, and "Try it out", which sends
//! real requests, with a bearer token from "Authorize" for the writes that need one).
//!
//! Swagger UI's released bundle is vendored in `service-kit/assets/swagger-ui/` (version,
//! licence and what was left out in its README) and compiled into the binary: the page fetches
//! nothing from elsewhere, so it works with no internet. It adds about 1.9 MB to each API's
//! binary. The assets' path carries the version, so a browser may keep them for good.
//!
//! The page's URLs are relative (`docs/...`, `openapi.json`): it works behind a proxy that
//! serves the API under a path prefix.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// The vendored Swagger UI release (a macro, for the paths below).
macro_rules! swagger_ui_version {
    () => {
        "5.35.0"
    };
}
pub const SWAGGER_UI_VERSION: &str = swagger_ui_version!();
/// Where the page is.
pub const PATH: &str = "/docs";
/// Where its script and style sheet are: under a path that names their version.
pub const SCRIPT_PATH: &str = concat!(
    "/docs/swagger-ui-",
    swagger_ui_version!(),
    "/swagger-ui-bundle.js"
);
pub const STYLE_PATH: &str = concat!(
    "/docs/swagger-ui-",
    swagger_ui_version!(),
    "/swagger-ui.css"
);

/// The page, with `{SCRIPT}` and `{STYLE}` for the assets' relative URLs.
const PAGE_TEMPLATE: &str = include_str!("explorer.html");
const SCRIPT: &str = include_str!("../assets/swagger-ui/swagger-ui-bundle.js");
const STYLE: &str = include_str!("../assets/swagger-ui/swagger-ui.css");

pub const HTML: &str = "text/html; charset=utf-8";
pub const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
pub const CSS: &str = "text/css; charset=utf-8";

/// The versioned assets never change under their path.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The page as served.
pub fn page() -> String {
    PAGE_TEMPLATE
        .replace("{SCRIPT}", SCRIPT_PATH.trim_start_matches('/'))
        .replace("{STYLE}", STYLE_PATH.trim_start_matches('/'))
}

/// Adds the page and its assets to `router`.
pub fn serve(router: Router) -> Router {
    let page = Bytes::from(page());
    let asset = |content_type: &'static str, body: &'static str| {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                    (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
                ],
                body,
            )
                .into_response()
        })
    };
    router
        .route(
            PATH,
            get(move || {
                let page = page.clone();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, HeaderValue::from_static(HTML)),
                            // The page names the assets' version: it must not outlive it.
                            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                        ],
                        page,
                    )
                        .into_response()
                }
            }),
        )
        .route(SCRIPT_PATH, asset(JAVASCRIPT, SCRIPT))
        .route(STYLE_PATH, asset(CSS, STYLE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_the_served_assets_by_relative_urls_and_nothing_from_elsewhere() {
        let page = page();
        for path in [SCRIPT_PATH, STYLE_PATH] {
            assert!(path.contains(SWAGGER_UI_VERSION), "{path}");
            let relative = path.trim_start_matches('/');
            assert!(page.contains(&format!("\"{relative}\"")), "{relative}");
        }
        assert!(page.contains("\"openapi.json\""));
        assert!(
            page.contains("validatorUrl: null"),
            "the default validator badge is fetched from the internet"
        );
        assert!(!page.contains("http://") && !page.contains("https://"));
    }
}
