//! The admin routes: list the installed set, install, enable, disable and
//! remove plugins on a running server, with an admin key.

use super::auth::check_key;
use super::body::{json_body, json_response};
use super::{ApiError, AppState, Body_};
use crate::manager::ManagerError;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::sync::Arc;

/// `POST /v1/admin/plugins` (install), `POST
/// /v1/admin/plugins/{namespace}/enable|disable`, `DELETE
/// /v1/admin/plugins/{namespace}`: changes the installed set with the
/// plugin manager, then reloads the active set. Needs an admin key.
pub(super) async fn admin(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<Response<Body_>, ApiError> {
    if state.admin_digests.is_empty() {
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "the admin API is off: start hearth serve with --admin-key",
        );
        e.code = Some("admin_disabled");
        return Err(e);
    }
    check_key(&state.admin_digests, &req)?;
    let (Some(home), Some(runtime)) = (state.home.clone(), state.assistant.plugins().cloned())
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "this server has no plugin set to manage",
        ));
    };
    if req.uri().path() == "/v1/admin/plugins" && req.method() == Method::GET {
        return list_installed(&home, &runtime);
    }
    if req.uri().path() == "/v1/admin/plugins" {
        let body = json_body(state, req).await?;
        return install(&home, &runtime, body).await;
    }
    let path = req
        .uri()
        .path()
        .trim_start_matches("/v1/admin/plugins/")
        .to_string();
    let parts: Vec<&str> = path.split('/').collect();
    let change = match (req.method(), parts.as_slice()) {
        (&Method::POST, [ns, "enable"]) => {
            crate::manager::install::set_enabled(&home, ns, true).map(|()| Vec::new())
        }
        (&Method::POST, [ns, "disable"]) => {
            crate::manager::install::set_enabled(&home, ns, false).map(|()| Vec::new())
        }
        (&Method::DELETE, [ns]) => crate::manager::install::remove(&home, ns, false),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "admin routes: POST /v1/admin/plugins/{namespace}/enable|disable, DELETE /v1/admin/plugins/{namespace}",
            ));
        }
    };
    let disabled = change.map_err(manager_error)?;
    let mut answer = reload_set(&runtime, &home).await?;
    answer["also_disabled"] = json!(disabled);
    Ok(json_response(StatusCode::OK, &answer))
}

/// `GET /v1/admin/plugins`: every plugin of the installed set, disabled
/// ones included: version, where it came from, whether it is enabled and
/// active, what it may do in the install summary's words, its tools (when
/// active); and why plugins of the set are not active.
fn list_installed(
    home: &crate::home::Home,
    runtime: &crate::plugins::Runtime,
) -> Result<Response<Body_>, ApiError> {
    use crate::manager::Origin;
    let (discovery, disabled) =
        crate::manager::discover_with_disabled(home).map_err(manager_error)?;
    let mut list: Vec<Value> = discovery
        .found
        .iter()
        .map(|found| {
            let m = &found.manifest;
            let namespace = m.namespace.as_str();
            // Active means this very plugin (its version) runs now.
            let active = runtime
                .active(namespace)
                .filter(|p| p.manifest.version == m.version && p.manifest.name == m.name);
            let source = match &found.origin {
                Origin::Bundled(_) => "bundled",
                Origin::Installed { .. } => "registry",
                Origin::Dir(_) => "local",
            };
            let tools: Vec<Value> = active
                .as_ref()
                .map(|p| {
                    p.tools
                        .iter()
                        .map(|t| json!({"name": format!("{namespace}.{}", t.name), "description": t.description}))
                        .collect()
                })
                .unwrap_or_default();
            json!({
                "namespace": namespace,
                "name": m.name.as_str(),
                "version": m.version.to_string(),
                "description": m.description,
                "source": source,
                "origin": found.origin.to_string(),
                "enabled": !disabled.contains(namespace),
                "active": active.is_some(),
                "permissions": crate::manager::install::describe_permissions(m),
                "tools": tools,
            })
        })
        .collect();
    list.sort_by(|a, b| a["namespace"].as_str().cmp(&b["namespace"].as_str()));
    let mut problems: Vec<String> = discovery.invalid.iter().map(|p| p.to_string()).collect();
    problems.extend(runtime.set_problems());
    problems.dedup();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": list, "problems": problems}),
    ))
}

/// The answer to a change the plugin manager refused or could not make:
/// 404 `plugin_not_found` for a namespace it does not know, 409
/// `plugin_change_refused` for a change the set forbids (a dependent, a
/// bundled plugin), 400 for a bad `plugin` spec, 500 when the installed set
/// cannot be read or written.
fn manager_error(e: ManagerError) -> ApiError {
    let message = e.to_string();
    match e {
        ManagerError::UnknownNamespace { .. } | ManagerError::NotInstalled { .. } => {
            let mut a = ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message);
            a.code = Some("plugin_not_found");
            a
        }
        ManagerError::Bundled { .. } | ManagerError::NeededBy { .. } => {
            let mut a = ApiError::new(StatusCode::CONFLICT, "invalid_request_error", message);
            a.code = Some("plugin_change_refused");
            a
        }
        ManagerError::BadRequirement { .. } => ApiError::invalid(message, Some("plugin")),
        ManagerError::Store(_) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
        }
    }
}

/// Reloads the active set after a change; the new set as JSON.
async fn reload_set(
    runtime: &crate::plugins::Runtime,
    home: &crate::home::Home,
) -> Result<Value, ApiError> {
    let set = crate::manager::reload(runtime, home).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("reloading the plugin set: {e}"),
        )
    })?;
    Ok(json!({
        "active": set.resolution.order,
        "problems": set.resolution.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    }))
}

/// The body of `POST /v1/admin/plugins`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct InstallRequest {
    /// `name` or `name@<semver requirement>`.
    plugin: String,
    /// Registry index (path or http(s) URL); the built-in one by default.
    #[serde(default)]
    registry: Option<String>,
    /// The permission summary of an earlier answer, sent back to grant
    /// exactly those permissions.
    #[serde(default)]
    grant: Option<String>,
    #[serde(default)]
    allow_unsigned: bool,
    #[serde(default)]
    allow_downgrade: bool,
    #[serde(default)]
    allow_v1_signatures: bool,
    /// Let the plugin take over a bundled plugin's namespace.
    #[serde(default)]
    replace_bundled: bool,
}

/// Installs from a registry with the plugin manager. Permissions are
/// granted in two requests, as at a terminal: the first answers 409
/// `permissions_required` with the summary; sending that summary back as
/// `grant` installs, provided the plugin still asks for exactly that.
async fn install(
    home: &crate::home::Home,
    runtime: &crate::plugins::Runtime,
    body: Value,
) -> Result<Response<Body_>, ApiError> {
    use crate::manager::install::{self, Step};
    use crate::manager::registry::Index;
    let request: InstallRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(format!("install request: {e}"), None))?;
    let (name, requirement) = install::parse_spec(&request.plugin).map_err(manager_error)?;
    let index = Index::open(request.registry.as_deref())
        .await
        .map_err(|e| ApiError::invalid(e.to_string(), Some("registry")))?;
    let options = install::Options {
        allow_unsigned: request.allow_unsigned,
        allow_downgrade: request.allow_downgrade,
        allow_v1_signatures: request.allow_v1_signatures,
        replace_bundled: request.replace_bundled,
    };
    let mut asked = String::new();
    let result = install::install(
        home,
        runtime,
        &index,
        name,
        &requirement,
        &options,
        &mut |summary| {
            asked = summary.to_string();
            request.grant.as_deref() == Some(summary)
        },
    )
    .await;
    let report = match result {
        Ok(report) => report,
        Err(e) if e.step == Step::Permissions => {
            let mut a = ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                format!(
                    "{} asks for permissions; to grant them, send this request again with `grant` set to the `permissions` text of this answer",
                    e.plugin
                ),
            );
            a.param = Some("grant".into());
            a.code = Some("permissions_required");
            a.extra = Some(Box::new(("permissions", json!(asked))));
            return Err(a);
        }
        Err(e) => {
            let mut a = ApiError::new(StatusCode::CONFLICT, "invalid_request_error", e.to_string());
            a.code = Some("install_failed");
            return Err(a);
        }
    };
    let mut answer = reload_set(runtime, home).await?;
    answer["installed"] = json!(report.installed);
    answer["already_installed"] = json!(report.already);
    Ok(json_response(StatusCode::OK, &answer))
}
