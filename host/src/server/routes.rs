//! The route table: every path the server answers, the methods it
//! allows, and the label its requests are counted under in `/metrics`.

use super::ApiError;
use http::{Method, StatusCode};

/// A request's route, parsed from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    /// `GET /healthz`: the process is up.
    Healthz,
    /// `GET /readyz`: the model is loaded; queue depth.
    Readyz,
    /// `GET /metrics`: Prometheus exposition.
    Metrics,
    /// `GET /v1/models`.
    Models,
    /// `GET /v1/plugins`.
    Plugins,
    /// `POST /v1/plugins/{namespace}/{tool}`.
    PluginCall {
        /// The plugin.
        namespace: String,
        /// Its tool.
        tool: String,
    },
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/admin/plugins` (install) and
    /// `POST|DELETE /v1/admin/plugins/{namespace}[/enable|/disable]`.
    Admin {
        /// The path after `/v1/admin/plugins`, without the leading `/`
        /// (empty for install).
        rest: String,
    },
    /// `POST|GET|DELETE /mcp`: MCP's streamable HTTP transport (requests,
    /// a session's event stream, the end of a session).
    Mcp,
    /// `GET /`: the web page.
    Page,
    /// `GET /assets/{file}`: the page's scripts and styles.
    Asset {
        /// The file name (checked when it is looked up).
        file: String,
    },
    /// `GET /v1/status`: the model, the queue and recent figures, for the
    /// page's status view.
    Status,
}

impl Route {
    /// The route of `path`; a 404 naming it when there is none.
    pub(super) fn parse(path: &str) -> Result<Route, ApiError> {
        let route = match path {
            "/healthz" => Some(Route::Healthz),
            "/readyz" => Some(Route::Readyz),
            "/metrics" => Some(Route::Metrics),
            "/v1/models" => Some(Route::Models),
            "/v1/plugins" => Some(Route::Plugins),
            "/v1/chat/completions" => Some(Route::Chat),
            "/mcp" => Some(Route::Mcp),
            "/" => Some(Route::Page),
            "/v1/status" => Some(Route::Status),
            "/v1/admin/plugins" => Some(Route::Admin {
                rest: String::new(),
            }),
            p => {
                if let Some(file) = p.strip_prefix("/assets/") {
                    Some(Route::Asset { file: file.into() })
                } else if let Some(rest) = p.strip_prefix("/v1/admin/plugins/") {
                    Some(Route::Admin { rest: rest.into() })
                } else if let Some(rest) = p.strip_prefix("/v1/plugins/") {
                    match rest.split_once('/') {
                        Some((ns, tool))
                            if !ns.is_empty() && !tool.is_empty() && !tool.contains('/') =>
                        {
                            Some(Route::PluginCall {
                                namespace: ns.into(),
                                tool: tool.into(),
                            })
                        }
                        _ => None,
                    }
                } else {
                    None
                }
            }
        };
        route.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("no route {path}"),
            )
        })
    }

    /// The methods it answers.
    pub(super) fn methods(&self) -> &'static [Method] {
        match self {
            Route::Healthz
            | Route::Readyz
            | Route::Metrics
            | Route::Models
            | Route::Plugins
            | Route::Status => &[Method::GET],
            Route::Page | Route::Asset { .. } => &[Method::GET, Method::HEAD],
            Route::PluginCall { .. } | Route::Chat => &[Method::POST],
            // GET lists the installed set, POST installs.
            Route::Admin { rest } if rest.is_empty() => &[Method::POST, Method::GET],
            Route::Admin { .. } => &[Method::POST, Method::DELETE],
            Route::Mcp => &[Method::POST, Method::GET, Method::DELETE],
        }
    }

    /// Refuses a method the route does not answer, naming the one to use.
    pub(super) fn check_method(&self, method: &Method, path: &str) -> Result<(), ApiError> {
        let allowed = self.methods();
        if allowed.contains(method) {
            return Ok(());
        }
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{method} is not allowed on {path}; use {}", allowed[0]),
        );
        e.code = Some("method_not_allowed");
        Err(e)
    }

    /// The label its requests are counted under: the route's pattern, so
    /// namespaces, tools and stray paths cannot grow the label set.
    pub(super) fn label(route: Option<&Route>) -> &'static str {
        match route {
            Some(Route::Healthz) => "/healthz",
            Some(Route::Readyz) => "/readyz",
            Some(Route::Metrics) => "/metrics",
            Some(Route::Models) => "/v1/models",
            Some(Route::Plugins) => "/v1/plugins",
            Some(Route::PluginCall { .. }) => "/v1/plugins/{namespace}/{tool}",
            Some(Route::Chat) => "/v1/chat/completions",
            Some(Route::Admin { .. }) => "/v1/admin/plugins",
            Some(Route::Mcp) => "/mcp",
            Some(Route::Page) => "/",
            Some(Route::Asset { .. }) => "/assets/{file}",
            Some(Route::Status) => "/v1/status",
            None => "other",
        }
    }

    /// Whether it is open without an API key (health checks and metrics,
    /// for load balancers and scrapers; the page's files, which hold no
    /// data and ask for the key themselves; the admin routes check their
    /// own key).
    pub(super) fn public(&self) -> bool {
        matches!(
            self,
            Route::Healthz
                | Route::Readyz
                | Route::Metrics
                | Route::Admin { .. }
                | Route::Page
                | Route::Asset { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_maps_to_its_route_and_label() {
        let cases = [
            ("/healthz", Some("/healthz")),
            ("/v1/chat/completions", Some("/v1/chat/completions")),
            ("/v1/plugins", Some("/v1/plugins")),
            (
                "/v1/plugins/calc/eval",
                Some("/v1/plugins/{namespace}/{tool}"),
            ),
            ("/v1/plugins/calc", None),
            ("/v1/plugins/calc/eval/extra", None),
            ("/v1/plugins//eval", None),
            ("/v1/admin/plugins", Some("/v1/admin/plugins")),
            ("/v1/admin/plugins/notes/enable", Some("/v1/admin/plugins")),
            ("/mcp", Some("/mcp")),
            ("/mcp/", None),
            ("/", Some("/")),
            ("/assets/app.js", Some("/assets/{file}")),
            ("/v1/status", Some("/v1/status")),
            ("/nope", None),
        ];
        for (path, label) in cases {
            let route = Route::parse(path).ok();
            assert_eq!(route.is_some(), label.is_some(), "{path}");
            if let Some(label) = label {
                assert_eq!(Route::label(route.as_ref()), label, "{path}");
            }
        }
    }

    #[test]
    fn a_wrong_method_names_the_right_one() {
        let e = Route::Chat
            .check_method(&Method::GET, "/v1/chat/completions")
            .unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(e.message.contains("use POST"), "{}", e.message);
    }
}
